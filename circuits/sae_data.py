"""Text for SAEs: corpus files -> token windows -> a stream of activation batches.

Plain text is tokenised per document and cut into windows of ``ctx`` tokens; a chat is one window
rendered with the model's chat template (cut at ``ctx``). Every window's position 0 is dropped
from training, statistics and evaluation: on SmolLM2 its residual norm is ~100x that of other
tokens (an attention sink), and so are a few chat-template tokens, which :func:`keep_mask` drops
by norm (more than ``SINK_FACTOR`` times the median norm of the batch's other tokens).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from circuits.errors import InputError
from circuits.hooked_model import HookedModel
from circuits.inputs import Item, pad_id, render

SINK_FACTOR = 8.0
_DOC_CHARS = 200_000  # long files are tokenised in pieces (bounded memory, same windows up to a seam)


def load_corpus(paths: Sequence[str | os.PathLike]) -> list[Item]:
    """Read SAE training text: ``.txt`` (plain text), ``.jsonl``/``.json`` rows with ``text``,
    ``messages`` (a chat), ``prompt`` [+ ``response``/``output``] or ``instruction`` + ``output``
    (AlpacaEval's format). Chats are returned as message lists.

    Raises InputError naming the file and row of anything else, before any model work.
    """
    items: list[Item] = []
    if not paths:
        raise InputError("no corpus files given")
    for p in map(Path, paths):
        if not p.is_file():
            raise InputError(f"{p}: no such corpus file")
        if p.suffix in (".txt", ".raw", ".tokens", ""):
            text = p.read_text(encoding="utf-8", errors="replace")
            items += [text[i : i + _DOC_CHARS] for i in range(0, len(text), _DOC_CHARS) if text[i : i + _DOC_CHARS].strip()]
            continue
        if p.suffix == ".jsonl":
            rows = []
            for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    try:
                        rows.append((n, json.loads(line)))
                    except json.JSONDecodeError as e:
                        raise InputError(f"{p}: row {n}: not valid JSON ({e.msg})") from e
        elif p.suffix == ".json":
            try:
                data = json.loads(p.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise InputError(f"{p}: not valid JSON ({e.msg})") from e
            if not isinstance(data, list):
                raise InputError(f"{p}: expected a JSON list of rows")
            rows = list(enumerate(data, 1))
        else:
            raise InputError(f"{p}: unknown corpus format {p.suffix!r}; use .txt, .jsonl or .json")
        items += [_row_item(r, f"{p}: row {n}") for n, r in rows]
    if not items:
        raise InputError(f"no text in {', '.join(map(str, paths))}")
    return items


def _row_item(r: Any, where: str) -> Item:
    if isinstance(r, str):
        return r
    if not isinstance(r, dict):
        raise InputError(f"{where}: expected an object or a string")
    if isinstance(r.get("text"), str):
        return r["text"]
    if isinstance(r.get("messages"), list):
        return r["messages"]
    prompt = r.get("prompt", r.get("instruction"))
    answer = r.get("response", r.get("output"))
    if isinstance(prompt, str):
        chat = [{"role": "user", "content": prompt}]
        return chat + [{"role": "assistant", "content": answer}] if isinstance(answer, str) else chat
    raise InputError(f"{where}: needs 'text', 'messages', 'prompt' or 'instruction' (found {', '.join(map(str, r)) or 'nothing'})")


def token_windows(tokenizer: Any, items: Sequence[Item], ctx: int) -> list[tuple[int, ...]]:
    """Cut items into windows of at most ``ctx`` tokens (shorter than 2 tokens are dropped)."""
    if ctx < 2:
        raise InputError(f"ctx must be at least 2 tokens, got {ctx}")
    out: list[tuple[int, ...]] = []
    for i, item in enumerate(items):
        prefix, response, is_chat = render(tokenizer, item, where=f"item {i}")
        if is_chat:
            ids = tokenizer(prefix + response, add_special_tokens=False)["input_ids"][:ctx]
            chunks = [ids]
        else:
            ids = tokenizer(prefix, add_special_tokens=True)["input_ids"]
            chunks = [ids[s : s + ctx] for s in range(0, len(ids), ctx)]
        out += [tuple(c) for c in chunks if len(c) >= 2]
    if not out:
        raise InputError("no window of at least 2 tokens in the corpus")
    return out


def windows_hash(windows: Sequence[Sequence[int]]) -> str:
    h = hashlib.sha256()
    for w in windows:
        h.update(repr(tuple(w)).encode())
    return h.hexdigest()[:16]


def split_windows(windows: list[tuple[int, ...]], holdout: float, seed: int) -> tuple[list, list]:
    """Shuffle (seeded) and split into (train, held-out)."""
    order = list(range(len(windows)))
    random.Random(seed).shuffle(order)
    n_held = int(round(holdout * len(windows)))
    if holdout > 0 and (n_held == 0 or n_held == len(windows)):
        raise InputError(f"cannot hold out {holdout:.0%} of {len(windows)} windows; give more text")
    return [windows[i] for i in order[n_held:]], [windows[i] for i in order[:n_held]]


def keep_mask(act: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Tokens an SAE sees: real (``mask``), position >= 1, and not an attention sink by norm."""
    keep = mask.bool().clone()
    keep[:, 0] = False
    norms = act.detach().float().norm(dim=-1)
    if keep.any():
        med = norms[keep].median()
        keep &= norms <= SINK_FACTOR * med
    return keep


def pad_batch(windows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(w) for w in windows)
    ids = torch.full((len(windows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(windows), width), dtype=torch.long)
    for r, w in enumerate(windows):
        ids[r, : len(w)] = torch.tensor(w, dtype=torch.long)
        mask[r, : len(w)] = 1
    return ids, mask


@torch.inference_mode()
def activation_batches(
    model: HookedModel, hooks: Sequence[str], windows: Sequence[Sequence[int]], batch_windows: int = 32,
    with_tokens: bool = False, autocast: bool = False,
) -> Iterator[dict[str, Any]]:
    """One early-stopped forward per group of windows; yields ``{hook: [n, d] float32}`` of kept tokens.

    The keep mask is that of the first hook (one set of tokens for every hook). With
    ``with_tokens`` also ``"_ids"`` (the padded ids), ``"_keep"`` (the mask) for context lookups.
    ``autocast`` runs the model under CPU bf16 autocast (training data only: ~5x faster on AMX,
    residual cosine 0.99998 to fp32 at SmolLM2 block 16; evaluation always runs the model as is).
    """
    stop = max(model.layer_of(h) for h in hooks)
    pad = pad_id(model.tokenizer)
    for s in range(0, len(windows), batch_windows):
        ids, mask = pad_batch(windows[s : s + batch_windows], pad)
        got: dict[str, torch.Tensor] = {}

        def make(name: str):
            def fn(act: torch.Tensor, _h: object) -> None:
                got[name] = act.detach()

            return fn

        with model.hooks([(h, make(h)) for h in hooks]), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            model.forward(ids.to(model.device), mask.to(model.device), stop_at_layer=stop)
        keep = keep_mask(got[hooks[0]], mask.to(got[hooks[0]].device))
        out: dict[str, Any] = {h: got[h][keep].float().cpu() for h in hooks}
        if with_tokens:
            out["_ids"], out["_keep"] = ids, keep.cpu()
        yield out


class ActivationStream:
    """An endless iterator of ``[batch_size, d]`` activation batches for SAE Lens's trainer.

    The first pass streams straight from the model (training starts at once); captured rows are
    kept (bf16, up to ``max_buffer`` rows) and later epochs replay them in a fresh random order,
    so a corpus smaller than ``steps * batch_size`` tokens is reused rather than re-run through
    the model. ``multi`` yields ``{hook: batch}`` dicts (for SAE Lens's ``MultiSAETrainer``).
    """

    def __init__(
        self, model: HookedModel, hooks: Sequence[str], windows: Sequence[Sequence[int]], batch_size: int,
        seed: int = 0, max_buffer: int = 4_000_000, multi: bool = False, progress: Any = None, autocast: bool = False,
    ) -> None:
        self.autocast = autocast
        self.model, self.hooks, self.windows = model, list(hooks), windows
        self.batch_size, self.max_buffer, self.multi = batch_size, max_buffer, multi
        self.gen = torch.Generator().manual_seed(seed)
        self.n_captured = 0
        self.epochs = 0
        self.progress = progress
        self._it = self._run()

    def __iter__(self) -> "ActivationStream":
        return self

    def __next__(self) -> Any:
        return next(self._it)

    def _emit(self, rows: dict[str, torch.Tensor]) -> Any:
        return rows if self.multi else rows[self.hooks[0]]

    def _run(self) -> Iterator[Any]:
        buffer: dict[str, list[torch.Tensor]] = {h: [] for h in self.hooks}
        pending: dict[str, list[torch.Tensor]] = {h: [] for h in self.hooks}
        n_pending = 0
        for got in activation_batches(self.model, self.hooks, self.windows, autocast=self.autocast):
            n = got[self.hooks[0]].shape[0]
            if self.progress is not None:
                self.progress(n)
            for h in self.hooks:
                pending[h].append(got[h])
                if self.n_captured + n <= self.max_buffer:
                    buffer[h].append(got[h].to(torch.bfloat16))
            self.n_captured += n
            n_pending += n
            while n_pending >= self.batch_size:
                cat = {h: torch.cat(pending[h]) for h in self.hooks}
                yield self._emit({h: c[: self.batch_size] for h, c in cat.items()})
                pending = {h: [c[self.batch_size :]] for h, c in cat.items()}
                n_pending -= self.batch_size
        stored = {h: torch.cat(b) for h, b in buffer.items() if b}
        if not stored or stored[self.hooks[0]].shape[0] < self.batch_size:
            raise InputError(
                f"the corpus gave {self.n_captured} usable tokens, fewer than one batch of {self.batch_size}; "
                "give more text or a smaller batch size"
            )
        yield from self._replay(stored)

    @classmethod
    def from_tensors(cls, rows: dict[str, torch.Tensor], batch_size: int, seed: int = 0, multi: bool = False) -> "ActivationStream":
        """A stream replaying activations already captured (``{hook: [n, d]}``), e.g. from a cache."""
        self = cls.__new__(cls)
        self.model, self.hooks, self.windows, self.autocast, self.progress = None, list(rows), [], False, None
        self.batch_size, self.max_buffer, self.multi = batch_size, 0, multi
        self.gen = torch.Generator().manual_seed(seed)
        self.n_captured, self.epochs = rows[self.hooks[0]].shape[0], 0
        self._it = self._replay({h: r.to(torch.bfloat16) for h, r in rows.items()})
        return self

    def _replay(self, stored: dict[str, torch.Tensor]) -> Iterator[Any]:
        n_rows = stored[self.hooks[0]].shape[0]
        while True:
            self.epochs += 1
            perm = torch.randperm(n_rows, generator=self.gen)
            for s in range(0, n_rows - self.batch_size + 1, self.batch_size):
                idx = perm[s : s + self.batch_size]
                yield self._emit({h: stored[h][idx].float() for h in self.hooks})
