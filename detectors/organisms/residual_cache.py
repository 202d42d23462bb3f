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
    """One left-padded batch: the prompts' indices, their ids, mask, positions and cached residual ``[b, w, d]``."""

    idx: list[int]
    ids: torch.Tensor
    mask: torch.Tensor
    pos: torch.Tensor
    resid: torch.Tensor


class ResidualCache:
    """The output of block ``start - 1`` (the embedding for ``start == 0``) for each prompt, and its clean logits.

    Args:
        model: a HF-backed :class:`HookedModel`.
        encoded: the prompts.
        start: the first block an intervention changes.
        batch_size: prompts per forward.
    """

    def __init__(self, model: HookedModel, encoded: Sequence[Encoded], start: int, batch_size: int = 8) -> None:
        self.model, self.encoded, self.start, self.batch_size = model, list(encoded), start, batch_size
        self._pad = pad_id(model.tokenizer)
        hook = "hook_embed" if start == 0 else f"blocks.{start - 1}.hook_resid_post"
        self.resid: list[torch.Tensor] = [torch.empty(0)] * len(self.encoded)
        logits: list[torch.Tensor] = [torch.empty(0)] * len(self.encoded)
        self.split: bool | None = None  # decided on the first batch
        seen: dict[str, torch.Tensor] = {}

        def grab(act: torch.Tensor, _h: Any) -> None:
            seen["x"] = act.detach().float()

        for b in self.batches():
            with torch.no_grad(), model.hooks([(hook, grab)]):
                full = last_logits(model.hf_model, b.ids, b.mask, b.pos)
            if self.split is None:
                self.split = split_matches(model.hf_model, start, seen["x"], b.ids, b.mask, b.pos, full)
            width = b.ids.shape[1]
            for r, i in enumerate(b.idx):
                self.resid[i] = seen["x"][r, width - len(self.encoded[i].ids):].clone()
                logits[i] = full[r]
        self.logits = torch.stack(logits)  # [n, vocab]

    def batch(self, idx: Sequence[int]) -> Replay:
        """The prompts ``idx`` as one left-padded batch (zeros stand for the padding's residual: it is masked)."""
        chunk = [self.encoded[i] for i in idx]
        ids, mask, pos = left_padded(chunk, self._pad)
        resid = torch.zeros(len(idx), ids.shape[1], self.model.d_model)
        if self.resid[idx[0]].numel():
            for r, i in enumerate(idx):
                resid[r, ids.shape[1] - len(chunk[r].ids):] = self.resid[i]
        return Replay(list(idx), ids, mask, pos, resid)

    def batches(self) -> Iterator[Replay]:
        """Every prompt once, in batches of similar length."""
        order = sorted(range(len(self.encoded)), key=lambda i: len(self.encoded[i].ids))
        for s in range(0, len(order), self.batch_size):
            yield self.batch(order[s : s + self.batch_size])

    def logits_at(self, b: Replay, resid: torch.Tensor, hf: Any = None, forward: Any = None) -> torch.Tensor:
        """Last-token logits ``[len(b.idx), vocab]`` when block ``start - 1`` outputs ``resid`` (of ``hf``, a
        fine-tuned copy of the model run through ``forward``, if given)."""
        hf = self.model.hf_model if hf is None else hf
        return upper_logits(hf, self.start, resid, b.ids, b.mask, b.pos, bool(self.split), forward)
