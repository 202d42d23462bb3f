"""Scoring inside the forward pass: the detectors' stacked read-outs as hooks, and the per-token
buffers they write (internals of :mod:`detectors.guard`).

**How scoring works.** One plain PyTorch forward hook per distinct hook name read by the
detectors (not one per detector) computes ``acts[:, -1, :] @ W`` for every detector reading that
hook at once (weights stacked once, at construction) and adds it into a preallocated
``[step, batch, detector]`` buffer. Nothing else runs inside the forward and there is no second
pass: the scores of step ``t`` are ready when the logits of step ``t`` are. Detectors that are
not linear read-outs are handled in the same pass: a prompt-conditioned detector
(:class:`~detectors.conditional.ConditionalDetector`, anything with ``readout(prompt_acts)``) has
its per-row read-out bound once from the last prompt token at prefill and is then a dot product
per token; any other detector (a :class:`~detectors.detector.Detector` subclass overriding
``score_tensor``, or any object with ``name``, ``hooks``, ``threshold`` and ``score_tensor``) gets
the last-token activations of its hooks from the same forward and is scored right after it.

Detectors read the activation *before* any Guard corrector at the same hook edits it (the scoring
hooks are attached first), so re-scoring after a correction measures its effect on later tokens,
not the trivial shift of the edited activation itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from circuits.hooked_model import HookedModel
from detectors.detector import Detector

__all__ = ["ScoreBuffers", "Scorer"]


class ScoreBuffers:
    """What the scoring hooks write for one batch.

    Attributes:
        token_scores: ``[steps, batch, detectors]`` raw score of each detector at each step.
        step: the step the hooks write (``token_scores[step]``); ``scoring``: whether they write at
            all (False during re-runs of a step, which keep the scores the policy acted on).
        last_acts: last-token activations by hook name (for detectors scored after the forward).
        bound_readouts: a prompt-conditioned detector's ``(w [batch, d], b [batch])``, bound at prefill.
        failures: ``(columns, error)`` of read-outs that raised, for the policy's error handling.
    """

    def __init__(self, bias: Tensor, steps: int, batch: int, device: torch.device | str) -> None:
        self.bias = bias.to(device)
        self.token_scores = self.bias.expand(steps, batch, -1).clone()
        self.step = 0
        self.scoring = False
        self.last_acts: dict[str, Tensor] = {}
        self.bound_readouts: dict[int, tuple[Tensor, Tensor]] = {}
        self.failures: list[tuple[list[int], BaseException | str]] = []

    def failed(self, cols: list[int], err: BaseException | str) -> None:
        self.token_scores[self.step, :, cols] = float("nan")
        self.failures.append((cols, err))

    def take_failures(self) -> list[tuple[list[int], BaseException | str]]:
        out, self.failures = self.failures, []
        return out

    def reset_step(self, t: int) -> Tensor:
        """Clear step ``t`` for re-scoring; returns its old scores."""
        old = self.token_scores[t].clone()
        self.token_scores[t] = self.bias
        return old

    def clear(self) -> None:
        self.last_acts.clear()
        self.bound_readouts.clear()


def _is_bound(det: Any) -> bool:
    """A prompt-conditioned detector (e.g. :class:`~detectors.conditional.ConditionalDetector`):
    ``readout(prompt_acts [n, d]) -> (w [n, d], b [n])`` binds a per-row linear read-out at prefill."""
    return callable(getattr(det, "readout", None)) and len(det.hooks) == 1


def _is_linear(det: Any) -> bool:
    return isinstance(det, Detector) and type(det).score_tensor is Detector.score_tensor and not _is_bound(det)


class Scorer:
    """Stacked read-out weights: one matrix per hook name over all detectors reading it."""

    def __init__(self, detectors: list[Any], d_model: int) -> None:
        n = len(detectors)
        self.detectors = detectors
        self.linear = [j for j, d in enumerate(detectors) if _is_linear(d)]
        self.bound = [j for j, d in enumerate(detectors) if _is_bound(d)]
        self.custom = [j for j, d in enumerate(detectors) if not _is_linear(d) and not _is_bound(d)]
        self.bound_cols: dict[str, list[int]] = {}
        for j in self.bound:
            self.bound_cols.setdefault(detectors[j].hooks[0], []).append(j)
        self.weights: dict[str, Tensor] = {}
        self.cols: dict[str, list[int]] = {}
        for j in self.linear:
            det = detectors[j]
            for k, h in enumerate(det.hooks):
                if h not in self.weights:
                    self.weights[h] = torch.zeros(d_model, n)
                    self.cols[h] = []
                self.weights[h][:, j] += det.weight[k].float()
                if j not in self.cols[h]:
                    self.cols[h].append(j)
        self.custom_hooks: list[str] = []
        for j in self.custom:
            for h in detectors[j].hooks:
                if h not in self.custom_hooks:
                    self.custom_hooks.append(h)
        self.bias = torch.tensor([float(d.bias) if _is_linear(d) else 0.0 for d in detectors], dtype=torch.float32)
        self.hooks = list(dict.fromkeys([*self.weights, *self.bound_cols, *self.custom_hooks]))
        self._cast: dict[tuple[str, torch.device, torch.dtype], Tensor] = {}

    def hook_fns(self, model: HookedModel, buffers: ScoreBuffers, dtype: torch.dtype,
                 keep: Sequence[str] = ()) -> list[tuple[str, Callable[[Tensor, Any], None]]]:
        """``(hook name, fn)`` pairs writing into ``buffers`` (built once per run, attached per step);
        ``keep``: hooks whose last-token activations are kept too (SAE routes and feature reports read them)."""
        fns = []
        for h in self.hooks:
            W = self._weights_on(h, model.device, dtype) if h in self.weights else None
            fns.append((h, self._make(h, W, h in self.custom_hooks or h in keep, buffers)))
        return fns

    def _weights_on(self, h: str, device: torch.device, dtype: torch.dtype) -> Tensor:
        """The read-out weights of hook ``h`` on ``device``, cast once and cached (a split model's hooks live
        on different devices; the read-out follows the activation, the scores gather on the buffers' device)."""
        key = (h, device, dtype)
        if key not in self._cast:
            self._cast[key] = self.weights[h].to(device=device, dtype=dtype)
        return self._cast[key]

    def _make(self, h: str, W: Tensor | None, keep: bool, buffers: ScoreBuffers) -> Callable[[Tensor, Any], None]:
        cols = self.cols.get(h, [])
        bound = [(j, self.detectors[j]) for j in self.bound_cols.get(h, [])]

        def score_hook(act: Tensor, _hp: Any) -> None:
            if not buffers.scoring:
                return
            a = act[:, -1]
            t = buffers.step
            if W is not None:
                try:
                    Wd = W if a.device == W.device else self._weights_on(h, a.device, W.dtype)
                    buffers.token_scores[t].add_((a @ Wd).to(buffers.token_scores.device))
                except Exception as e:  # a failing read-out must not break the forward
                    buffers.failed(cols, e)
            for j, det in bound:
                try:
                    if t == 0:  # prefill: a is the last prompt token, the context the read-out depends on
                        w, b = det.readout(a)
                        buffers.bound_readouts[j] = (w.to(a.dtype), b.to(torch.float32))
                    w, b = buffers.bound_readouts[j]
                    buffers.token_scores[t, :, j] = ((a * w.to(a.device)).sum(-1) + b.to(a.device)).to(buffers.token_scores.device)
                except Exception as e:
                    buffers.failed([j], e)
            if keep:
                buffers.last_acts[h] = a
            return

        return score_hook

    def score_custom(self, buffers: ScoreBuffers, t: int, live: Tensor) -> None:
        """Score the detectors that are not linear read-outs on the activations the hooks kept."""
        s = buffers.token_scores[t]
        for j in self.custom:
            if not bool(live[j]):
                continue
            det = self.detectors[j]
            try:
                v = det.score_tensor({h: buffers.last_acts[h] for h in det.hooks})
                s[:, j] = torch.as_tensor(v).reshape(-1).to(device=s.device, dtype=s.dtype)
            except Exception as e:
                s[:, j] = float("nan")
                buffers.failures.append(([j], e))
