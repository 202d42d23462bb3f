"""Prompts' residual streams below an intervention, computed once and replayed for every setting.

Noise injection re-runs the benchmark under ten noise settings and learning speed re-runs it (and trains)
under four LoRA fine-tunes; neither changes the blocks below its layer. A :class:`ResidualCache` runs each
prompt through the whole model once, keeps that layer's residual and the clean last-token logits, and
:meth:`ResidualCache.logits_at` runs only the blocks above for each setting (see :mod:`circuits.upper_blocks`).
Prompts are batched by length, so padding costs little.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from circuits import HookedModel
from circuits.inputs import Encoded, pad_id
from circuits.upper_blocks import split_matches, upper_logits
from detectors.organisms.decisions import last_logits, left_padded


@dataclass
class Replay:
    """One left-padded batch: the prompts' indices, their ids, mask, positions, and the cached residual ``[b, w, d]``
    entering block ``start``."""

    idx: list[int]
    ids: torch.Tensor
    mask: torch.Tensor
    pos: torch.Tensor
    resid: torch.Tensor
    start: int


class ResidualCache:
    """For each prompt, the residual entering each block in ``starts`` (the embedding for 0), and its clean logits.

    Args:
        model: a HF-backed :class:`HookedModel`.
        encoded: the prompts.
        starts: the first block an intervention changes (several: one pass serves interventions at each).
        batch_size: prompts per forward.
    """

    def __init__(self, model: HookedModel, encoded: Sequence[Encoded], starts: int | Sequence[int], batch_size: int = 8) -> None:
        self.model, self.encoded, self.batch_size = model, list(encoded), batch_size
        self.starts = [starts] if isinstance(starts, int) else sorted(set(starts))
        self._pad = pad_id(model.tokenizer)
        self._resid: dict[int, list[torch.Tensor]] = {s: [torch.empty(0)] * len(self.encoded) for s in self.starts}
        logits: list[torch.Tensor] = [torch.empty(0)] * len(self.encoded)
        self.split: dict[int, bool] = {}  # per start, decided on the first batch
        seen: dict[int, torch.Tensor] = {}

        def grab(start: int):
            def fn(act: torch.Tensor, _h: Any) -> None:
                seen[start] = act.detach().float()

            return fn

        hooks = [("hook_embed" if s == 0 else f"blocks.{s - 1}.hook_resid_post", grab(s)) for s in self.starts]
        for idx in self._by_length():
            ids, mask, pos = left_padded([self.encoded[i] for i in idx], self._pad)
            with torch.no_grad(), model.hooks(hooks):
                full = last_logits(model.hf_model, ids, mask, pos)
            for s in self.starts:
                if s not in self.split:
                    self.split[s] = split_matches(model.hf_model, s, seen[s], ids, mask, pos, full)
                for r, i in enumerate(idx):
                    self._resid[s][i] = seen[s][r, ids.shape[1] - len(self.encoded[i].ids):].clone()
            for r, i in enumerate(idx):
                logits[i] = full[r]
        self.logits = torch.stack(logits)  # [n, vocab]

    def _by_length(self) -> Iterator[list[int]]:
        order = sorted(range(len(self.encoded)), key=lambda i: len(self.encoded[i].ids))
        for s in range(0, len(order), self.batch_size):
            yield order[s : s + self.batch_size]

    def batch(self, idx: Sequence[int], start: int | None = None) -> Replay:
        """The prompts ``idx`` as one left-padded batch entering block ``start`` (the first of ``starts`` by default);
        zeros stand for the padding's residual, which attention masks."""
        start = self.starts[0] if start is None else start
        chunk = [self.encoded[i] for i in idx]
        ids, mask, pos = left_padded(chunk, self._pad)
        resid = torch.zeros(len(idx), ids.shape[1], self.model.d_model)
        for r, i in enumerate(idx):
            resid[r, ids.shape[1] - len(chunk[r].ids):] = self._resid[start][i]
        return Replay(list(idx), ids, mask, pos, resid, start)

    def batches(self, start: int | None = None) -> Iterator[Replay]:
        """Every prompt once, in batches of similar length."""
        for idx in self._by_length():
            yield self.batch(idx, start)

    def logits_at(self, b: Replay, resid: torch.Tensor, hf: Any = None, forward: Any = None) -> torch.Tensor:
        """Last-token logits ``[len(b.idx), vocab]`` when ``resid`` enters block ``b.start`` (of ``hf``, a fine-tuned
        copy of the model run through ``forward``, if given)."""
        hf = self.model.hf_model if hf is None else hf
        return upper_logits(hf, b.start, resid, b.ids, b.mask, b.pos, self.split[b.start], forward)
