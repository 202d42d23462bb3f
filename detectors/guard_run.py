"""The Guard's per-batch state and its in-pass scorer (internals of :mod:`detectors.guard`)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from circuits.errors import InputError
from circuits.hooked_model import HookedModel, HookHandle
from circuits.inputs import Item
from circuits.steering import Corrector, CorrectorHandle, GenerationState
from detectors.detector import Detector
from detectors.guard_types import Action, GenerationSettings, GuardOutput, HumanDecision, Prompt
from detectors.router import Route



def _is_bound(det: Any) -> bool:
    """A prompt-conditioned detector (e.g. :class:`~detectors.conditional.ConditionalDetector`):
    ``readout(prompt_acts [n, d]) -> (w [n, d], b [n])`` binds a per-row linear read-out at prefill."""
    return callable(getattr(det, "readout", None)) and len(det.hooks) == 1


def _is_linear(det: Any) -> bool:
    return isinstance(det, Detector) and type(det).score_tensor is Detector.score_tensor and not _is_bound(det)


class BatchRun:
    """State of one batch in flight."""

    def __init__(self, prompts: list[Prompt], gen: GenerationSettings, generator: torch.Generator | None, *,
                 res: list[Any], thr_act: Tensor, policy_meta: dict[str, Any], error_mode: str, score_bias: Tensor,
                 device: torch.device) -> None:
        self.prompts = prompts
        self.gen = gen
        self.generator = generator
        self.started = time.time()
        self.B = len(prompts)
        self.res = list(res)  # the policy in force for this run (a change applies to the next one)
        self.thr_act = thr_act
        self.policy_meta = policy_meta
        self.error_mode = error_mode
        self.steps = gen.max_new_tokens
        self.buf = score_bias.to(device).expand(self.steps, self.B, -1).clone()
        self.stat = torch.full_like(self.buf, float("nan"))  # what the policy compared, per step
        n_det = len(self.res)
        self.cum = torch.zeros(self.B, n_det, device=device)
        self.cnt = torch.zeros(self.B, n_det, device=device)
        self.t = 0
        self.n_steps = 0
        self.in_fwd = False
        self.last: dict[str, Tensor] = {}
        self.bound: dict[int, tuple[Tensor, Tensor]] = {}
        self.pending: list[tuple[list[int], BaseException | str]] = []
        self.active = torch.ones(self.B, dtype=torch.bool, device=device)
        self.active_py = [True] * self.B
        self.blocked_at: list[int | None] = [None] * self.B
        self.blocked_by: list[str | None] = [None] * self.B
        self.stopped_at: list[int | None] = [None] * self.B  # stopped to be generated again (``regenerate``)
        self.actions: list[list[Action]] = [[] for _ in prompts]
        self.decisions: list[list[HumanDecision]] = [[] for _ in prompts]
        self.row_correctors: list[list[dict[str, Any]]] = [[] for _ in prompts]
        self.errors: list[dict[str, Any]] = []
        self.det_live = torch.ones(n_det, dtype=torch.bool, device=device)
        self.failed_open: set[int] = set()
        self.correctors: dict[tuple, tuple[Corrector, CorrectorHandle, Route]] = {}
        self.corrected: dict[tuple[int, int], Route] = {}
        self.run_start: dict[tuple[int, int], int] = {}
        self.last_hit: dict[tuple[int, int], int] = {}
        self.allowed: set[tuple[int, int]] = set()
        self.human_correct: set[tuple[int, int]] = set()
        self.noted: set[tuple[int, int]] = set()
        self.tokens: list[Tensor] = []
        self.redo = False  # a correction with ``immediate`` started this step: re-run it corrected
        self.redos = 0
        self.rewinds: list[tuple[int, tuple, Action]] = []  # (row, corrector key, action): take back this step's token
        self.rewound = 0
        self.processor: Callable[[Tensor, Tensor], Tensor] | None = None
        self.prompt_ids: Tensor | None = None
        self.state = GenerationState()
        self.error: BaseException | None = None
        self.outputs: list[GuardOutput] = []
        self.attempt = 1  # 2: a regeneration (``timing = "regenerate"``)
        self.force: dict[int, list[int]] = {}  # row -> detectors whose corrector is on from the first token
        self.regen: list[tuple[int, int]] = []  # (row, detector) finished flagged: generate again corrected
        self.hooks: list[HookHandle] = []  # the scoring hooks, while a step runs

    def hook_failed(self, cols: list[int], err: BaseException) -> None:
        self.buf[self.t, :, cols] = float("nan")
        self.pending.append((cols, err))


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

    def attach(self, model: HookedModel, run: BatchRun, dtype: torch.dtype) -> HookHandle:
        return model.add_hooks(self.hook_fns(model, run, dtype))

    def hook_fns(self, model: HookedModel, run: BatchRun, dtype: torch.dtype) -> list[tuple[str, Callable[[Tensor, Any], None]]]:
        """``(hook name, fn)`` pairs writing into ``run``'s buffers (built once per run, attached per step)."""
        device = model.device
        fns = []
        for h in self.hooks:
            W = None
            if h in self.weights:
                key = (h, device, dtype)
                if key not in self._cast:
                    self._cast[key] = self.weights[h].to(device=device, dtype=dtype)
                W = self._cast[key]
            fns.append((h, self._make(h, W, h in self.custom_hooks, run)))
        return fns

    def _make(self, h: str, W: Tensor | None, keep: bool, run: BatchRun) -> Callable[[Tensor, Any], None]:
        cols = self.cols.get(h, [])
        bound = [(j, self.detectors[j]) for j in self.bound_cols.get(h, [])]

        def score_hook(act: Tensor, _hp: Any) -> None:
            if not run.in_fwd:
                return None
            a = act[:, -1]
            if W is not None:
                try:
                    run.buf[run.t].add_(a @ W)
                except Exception as e:  # a failing read-out must not break the forward
                    run.hook_failed(cols, e)
            for j, det in bound:
                try:
                    if run.t == 0:  # prefill: a is the last prompt token, the context the read-out depends on
                        w, b = det.readout(a)
                        run.bound[j] = (w.to(a.dtype), b.to(torch.float32))
                    w, b = run.bound[j]
                    run.buf[run.t, :, j] = (a * w).sum(-1) + b
                except Exception as e:
                    run.hook_failed([j], e)
            if keep:
                run.last[h] = a
            return None

        return score_hook


def as_items(items: Item | Sequence[Item]) -> list[Item]:
    if isinstance(items, str):
        return [items]
    if isinstance(items, list) and items and isinstance(items[0], dict):
        return [items]  # one chat
    if isinstance(items, tuple) and len(items) == 2 and all(isinstance(x, str) for x in items):
        return [items]  # one (prompt, response)
    out = list(items)
    if not out:
        raise InputError("Guard.generate: no prompts given")
    return out
