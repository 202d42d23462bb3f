"""Activation capture at one or more hook names in a single, early-stopped forward pass.

Token selection is explicit (``select``):

=================  ===================================================================
``last``           the final token of each item
``prompt_last``    the last prompt token (before the response; for plain text, the last)
``response_mean``  mean over the judged span (the response; all tokens for plain text)
``response_max``   element-wise max over the judged span
``response_each``  every token of the judged span, one row each (see ``Activations.index``)
``all_mean``       mean over every token
``all_each``       every token, one row each
=================  ===================================================================

Rows are padded on the right so real tokens never see padding (causal attention), and the
forward pass raises out of the deepest block that a requested hook lives in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from jaxtyping import Float, Int

from circuits.activation_cache import ActivationCache
from circuits.errors import InputError
from circuits.hooked_model import HookedModel
from circuits.inputs import Encoded, Item, batches, encode, encoded_hash, pad_id

SELECTIONS = ("last", "prompt_last", "response_mean", "response_max", "response_each", "all_mean", "all_each")


@dataclass
class Activations:
    """Captured activations.

    Attributes:
        acts: ``{hook_name: float32 array [rows, d]}``.
        index: item index of each row (``arange(n)`` unless a ``*_each`` selection was used).
        select: the token selection used.
    """

    acts: dict[str, Float[np.ndarray, "rows d"]]
    index: Int[np.ndarray, " rows"]
    select: str

    def __getitem__(self, hook: str) -> np.ndarray:
        return self.acts[hook]


def _span_mask(encoded: Sequence[Encoded], idx: list[int], width: int, select: str) -> torch.Tensor:
    mask = torch.zeros(len(idx), width, dtype=torch.bool)
    for r, i in enumerate(idx):
        e = encoded[i]
        start = 0 if select.startswith("all") else e.span_start
        mask[r, start : len(e.ids)] = True
    return mask


def _positions(encoded: Sequence[Encoded], idx: list[int], select: str) -> torch.Tensor:
    if select == "last":
        return torch.tensor([len(encoded[i].ids) - 1 for i in idx])
    return torch.tensor([encoded[i].prompt_end - 1 for i in idx])


def select_tokens(act: torch.Tensor, select: str, positions: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
    """Reduce ``act [batch, pos, d]`` to rows by the selection (``*_each`` keeps masked tokens)."""
    if select in ("last", "prompt_last"):
        return act[torch.arange(act.shape[0]), positions]
    assert mask is not None
    if select.endswith("_mean"):
        m = mask.unsqueeze(-1).to(act.dtype)
        return (act * m).sum(1) / m.sum(1).clamp(min=1)
    if select.endswith("_max"):
        return act.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)
    return act[mask]


def _stop_layer(model: HookedModel, hooks: Sequence[str]) -> int:
    return max(model.layer_of(h) for h in hooks)


@torch.inference_mode()
def capture(
    model: HookedModel,
    items: Sequence[Item],
    hooks: str | Sequence[str],
    select: str = "last",
    batch_size: int = 16,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> Activations:
    """Capture activations of ``items`` at ``hooks`` in one forward pass per batch.

    Args:
        model: a hooked model (:func:`circuits.load_model`).
        items: texts, chats or (prompt, response) pairs (see :mod:`circuits.inputs`).
        hooks: one hook name or several, e.g. ``"blocks.12.hook_resid_post"``.
        select: token selection (see module docstring).
        batch_size: items per forward pass.
        cache_dir: if given, activations are stored there (safetensors) keyed by model
            fingerprint, hook, selection and token ids, and re-used on the next call.
        progress: show a progress bar.

    Returns:
        :class:`Activations` with one float32 array per hook.

    Example:
        >>> acts = capture(model, ["Paris is in France."], "blocks.12.hook_resid_post")
        >>> acts["blocks.12.hook_resid_post"].shape
        (1, 576)
    """
    hooks = [hooks] if isinstance(hooks, str) else list(hooks)
    if not hooks:
        raise InputError("capture: no hook names given")
    if select not in SELECTIONS:
        raise InputError(f"capture: unknown token selection {select!r}; expected one of {', '.join(SELECTIONS)}")
    if len(items) == 0:
        raise InputError("capture: no items given")
    for h in hooks:
        model.check_hook(h)
    encoded = encode(model.tokenizer, items, model.n_ctx)
    cache = ActivationCache(cache_dir) if cache_dir is not None else None
    keys = {h: f"{model.fingerprint}|{h}|{select}|{encoded_hash(encoded)}" for h in hooks}
    found = {h: cache.get(keys[h]) for h in hooks} if cache else {}
    todo = [h for h in hooks if found.get(h) is None]
    result = {h: found[h] for h in hooks if found.get(h) is not None}
    if todo:
        computed = _run_capture(model, encoded, todo, select, batch_size, progress)
        for h, value in computed.items():
            result[h] = value
            if cache:
                cache.put(keys[h], *value)
    index = next(iter(result.values()))[1]
    return Activations({h: result[h][0] for h in hooks}, index, select)


def _run_capture(
    model: HookedModel, encoded: list[Encoded], hooks: list[str], select: str, batch_size: int, progress: bool
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    stop = _stop_layer(model, hooks)
    per_hook: dict[str, list[tuple[list[int], torch.Tensor]]] = {h: [] for h in hooks}
    state: dict[str, object] = {}

    def make_hook(name: str):
        def fn(act: torch.Tensor, _hook: object) -> None:
            rows = select_tokens(act, select, state.get("positions"), state.get("mask"))  # type: ignore[arg-type]
            per_hook[name].append((state["idx"], rows.detach().float().cpu()))  # type: ignore[arg-type]

        return fn

    it = batches(encoded, batch_size, pad_id(model.tokenizer), side="right")
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, total=(len(encoded) + batch_size - 1) // batch_size, desc="capture", leave=False)
    device = model.device
    with model.hooks([(h, make_hook(h)) for h in hooks]):
        for idx, ids, mask in it:
            state["idx"] = idx
            if select in ("last", "prompt_last"):
                state["positions"] = _positions(encoded, idx, select).to(device)
            else:
                state["mask"] = _span_mask(encoded, idx, ids.shape[1], select).to(device)
            model.forward(ids.to(device), mask.to(device), stop_at_layer=stop)
    return {h: _assemble(chunks, encoded, select) for h, chunks in per_hook.items()}


def _assemble(chunks: list[tuple[list[int], torch.Tensor]], encoded: list[Encoded], select: str) -> tuple[np.ndarray, np.ndarray]:
    """Put rows back in item order (batches were sorted by length)."""
    if not select.endswith("_each"):
        d = chunks[0][1].shape[-1]
        out = np.empty((len(encoded), d), dtype=np.float32)
        for idx, rows in chunks:
            out[idx] = rows.numpy()
        return out, np.arange(len(encoded))
    by_item: dict[int, np.ndarray] = {}
    for idx, rows in chunks:
        counts = [
            len(encoded[i].ids) - (0 if select.startswith("all") else encoded[i].span_start) for i in idx
        ]
        for i, part in zip(idx, torch.split(rows, counts)):
            by_item[i] = part.numpy()
    order = sorted(by_item)
    acts = np.concatenate([by_item[i] for i in order]).astype(np.float32)
    index = np.concatenate([np.full(len(by_item[i]), i) for i in order])
    return acts, index
