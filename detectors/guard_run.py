"""One batch in flight: its prompts and settings, and the parts the Guard composes for it (the
policy engine, the score buffers, the decoder, the correctors switched on). Internals of
:mod:`detectors.guard`."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from circuits.errors import InputError
from circuits.hooked_model import HookHandle
from circuits.inputs import Item
from circuits.steering import Corrector, CorrectorHandle, GenerationState
from detectors.guard_decoder import Decoder
from detectors.guard_scoring import ScoreBuffers
from detectors.guard_types import (
    Action,
    GenerationSettings,
    GuardOutput,
    HumanDecision,
    Prompt,
)
from detectors.policy_engine import PolicyEngine
from detectors.router import Route

__all__ = ["BatchRun", "as_items"]


class BatchRun:
    """State of one batch in flight.

    Attributes:
        engine: the :class:`~detectors.policy_engine.PolicyEngine` (what the policy decided).
        scores: the :class:`~detectors.guard_scoring.ScoreBuffers` the scoring hooks write.
        decoder: the :class:`~detectors.guard_decoder.Decoder` (set when the batch starts).
        correctors: route key -> (corrector, handle, route), made when a correction first starts.
        row_correctors: per row, the correctors used (route, dose, from which token).
        force: row -> detectors whose corrector is on from the first token (a regeneration).
    """

    def __init__(self, prompts: list[Prompt], gen: GenerationSettings, generator: torch.Generator | None, *,
                 engine: PolicyEngine, scores: ScoreBuffers, policy_meta: dict[str, Any], attempt: int = 1) -> None:
        self.prompts = prompts
        self.gen = gen
        self.generator = generator
        self.started = time.time()
        self.B = len(prompts)
        self.engine = engine
        self.scores = scores
        self.policy_meta = policy_meta
        self.attempt = attempt  # 2: a regeneration (``timing = "regenerate"``)
        self.decoder: Decoder | None = None
        self.state = GenerationState()
        self.processor: Callable[[Tensor, Tensor], Tensor] | None = None
        self.correctors: dict[tuple, tuple[Corrector, CorrectorHandle, Route]] = {}
        self.row_correctors: list[list[dict[str, Any]]] = [[] for _ in prompts]
        self.feature_reports: dict[tuple[int, int, str], dict[str, Any]] = {}  # (row, token, detector) -> SAE features
        self.hooks: list[HookHandle] = []  # the scoring hooks, while a step runs
        self.redo = False  # a correction with timing "immediate" started this step: re-run it corrected
        self.redos = 0
        self.rewinds: list[tuple[int, tuple, Action]] = []  # (row, corrector key, action): take back the last token
        self.rewound = 0
        self.force: dict[int, list[int]] = {}
        self.error: BaseException | None = None
        self.outputs: list[GuardOutput] = []

    # -- read-only views for output assembly -------------------------------------------------------
    @property
    def res(self) -> list[Any]:
        return self.engine.res

    @property
    def tokens(self) -> list[Tensor]:
        return self.decoder.tokens if self.decoder is not None else []

    @property
    def n_steps(self) -> int:
        return self.decoder.n_steps if self.decoder is not None else 0

    @property
    def actions(self) -> list[list[Action]]:
        return self.engine.actions

    @property
    def decisions(self) -> list[list[HumanDecision]]:
        return self.engine.decisions

    @property
    def errors(self) -> list[dict[str, Any]]:
        return self.engine.errors

    @property
    def blocked_at(self) -> list[int | None]:
        return self.engine.blocked_at

    @property
    def blocked_by(self) -> list[str | None]:
        return self.engine.blocked_by

    @property
    def stopped_at(self) -> list[int | None]:
        return self.engine.stopped_at

    @property
    def regen(self) -> list[tuple[int, int]]:
        return self.engine.regen

    @property
    def corrected(self) -> set[tuple[int, int]]:
        return self.engine.state.corrected


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
