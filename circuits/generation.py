"""Plain batched completion (no guard): used to build control sets of the model's own answers."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import torch

from circuits.hooked_model import HookedModel
from circuits.inputs import Item, as_chat, batches, encode, pad_id


@torch.inference_mode()
def complete(
    model: HookedModel,
    items: Sequence[Item],
    max_new_tokens: int = 48,
    batch_size: int = 16,
    cache_dir: str | Path | None = None,
    chat: bool | str = "auto",
    progress: bool | str = False,
) -> list[str]:
    """Greedy completions of ``items`` (left-padded batches, KV cache), optionally cached on disk.

    ``chat="auto"`` (as in the Guard) sends a plain-string prompt as a user message when the
    tokenizer has a chat template; ``chat=False`` keeps strings as raw text.

    The cache key is the model's weight fingerprint, the token ids and ``max_new_tokens``, so the
    control answers of a model are generated once per machine. ``progress`` (True or a label) shows a
    progress bar over the batches (minutes for a few hundred answers on a CPU).
    """
    model.check_decode()
    items = [as_chat(model.tokenizer, it, chat) for it in items]
    encoded = encode(model.tokenizer, items, model.n_ctx - max_new_tokens)
    path = None
    if cache_dir is not None:
        h = hashlib.sha256(repr((model.fingerprint, max_new_tokens, [e.ids for e in encoded])).encode()).hexdigest()[:20]
        path = Path(cache_dir) / f"completions-{h}.json"
        if path.exists():
            try:
                cached = json.loads(path.read_text())
                if isinstance(cached, list) and len(cached) == len(items):
                    return [str(c) for c in cached]
            except json.JSONDecodeError:
                pass
    out: list[str] = [""] * len(encoded)
    pid = pad_id(model.tokenizer)
    eos = model.tokenizer.eos_token_id
    todo = batches(encoded, batch_size, pid, side="left")
    if progress:
        from tqdm.auto import tqdm

        label = progress if isinstance(progress, str) else "generating"
        todo = tqdm(list(todo), desc=f"{label} ({len(encoded)} answers)", unit="batch")
    for idx, ids, mask in todo:
        gen = model.hf_model.generate(
            input_ids=ids.to(model.device), attention_mask=mask.to(model.device), max_new_tokens=max_new_tokens,
            do_sample=False, pad_token_id=pid, eos_token_id=eos,
        )
        for r, i in enumerate(idx):
            out[i] = model.tokenizer.decode(gen[r, ids.shape[1] :], skip_special_tokens=True).strip()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(out))
        tmp.replace(path)
    return out
