"""What the Guard returns and reports: outputs, actions, human decisions, escalation contexts,
stream events."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from circuits.errors import CoalignError, InputError
from circuits.inputs import Encoded, Item


class DetectorFailure(CoalignError):
    """A detector raised (or returned a non-finite score) and the policy says ``on_detector_error = "raise"``."""


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------
CORRECT_MODES = {None: "policy", True: "always", False: "never"}


@dataclass(frozen=True)
class GenerationSettings:
    """How :meth:`Guard.generate <detectors.guard.Guard.generate>` and
    :meth:`Guard.stream <detectors.guard.Guard.stream>` decode (both build one from their keyword
    arguments, or take one as ``settings=``). Validated on construction.

    ``correct``: ``"policy"`` (as the policy says), ``"always"`` (every detector's corrector on from
    the first token) or ``"never"`` (the correct tier is only recorded); :meth:`make` maps the
    public ``correct=None | True | False`` onto these.
    """

    max_new_tokens: int = 64
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    correct: str = "policy"

    def __post_init__(self) -> None:
        if int(self.max_new_tokens) < 1:
            raise InputError("max_new_tokens must be >= 1")
        if int(self.min_new_tokens) < 0:
            raise InputError("min_new_tokens must be >= 0")
        if self.do_sample and not self.temperature > 0:
            raise InputError("temperature must be > 0 when sampling")
        if not 0 < self.top_p <= 1:
            raise InputError("top_p must be in (0, 1]")
        if self.correct not in CORRECT_MODES.values():
            raise InputError(f"correct must be one of {', '.join(CORRECT_MODES.values())}, got {self.correct!r}")

    @classmethod
    def make(cls, max_new_tokens: int = 64, min_new_tokens: int = 0, do_sample: bool = False, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, seed: int | None = None, correct: bool | None = None) -> GenerationSettings:
        """From the keyword arguments of ``generate``/``stream`` (``correct``: None, True or False)."""
        return cls(int(max_new_tokens), int(min_new_tokens), bool(do_sample), float(temperature), int(top_k),
                   float(top_p), seed, CORRECT_MODES[correct if correct is None else bool(correct)])

    @classmethod
    def resolve(cls, settings: GenerationSettings | None, *args: Any) -> GenerationSettings:
        """The one settings object of a call: ``settings=`` or the keywords (``make``'s), not both."""
        made = cls.make(*args)
        if settings is None:
            return made
        if not isinstance(settings, GenerationSettings):
            raise InputError(f"settings must be a GenerationSettings, got {type(settings).__name__}")
        if made != cls():
            raise InputError("give settings= or the decoding keyword arguments, not both")
        return settings

    def rng(self, device: Any) -> torch.Generator | None:
        """The sampling generator (seeded), or None (greedy, or sampling unseeded)."""
        if not self.do_sample or self.seed is None:
            return None
        g = torch.Generator(device=device)
        g.manual_seed(int(self.seed))
        return g

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def check_count(value: Any, what: str, minimum: int) -> int:
    """``value`` if it is an integer >= ``minimum`` (not a bool), else a one-line InputError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_processor(fn: Any) -> Any:
    if fn is not None and not callable(fn):
        raise InputError(f"logits_processor must be callable (input_ids, scores) -> scores, got {type(fn).__name__}")
    return fn


@dataclass
class Prompt:
    """One prompt as the Guard runs it: the item given, its tokens, and the rendered text (hashed in the audit)."""

    item: Item
    enc: Encoded
    text: str


# --------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------
@dataclass
class Action:
    """Something the Guard did. ``token`` is the generated-token index it happened at.

    ``kind``: ``monitor`` (score rose above the monitor tier), ``correct``, ``escalate``,
    ``block``, ``move_up`` (a correction did not clear the flag within ``patience`` tokens, or a
    regenerated response is still flagged), ``regenerate`` (``timing = "regenerate"``: the finished
    response was flagged and generated again, corrected; ``detail`` keeps the discarded attempt) or
    ``detector_error``.
    """

    token: int
    kind: str
    detector: str | None
    score: float | None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"token": self.token, "kind": self.kind, "detector": self.detector, "score": self.score, **({"detail": self.detail} if self.detail else {})}


@dataclass
class HumanDecision:
    """A decision on an escalation (``by``: ``callback`` or ``default`` when no callback was given)."""

    token: int
    detector: str
    score: float
    decision: str
    by: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class EscalationContext:
    """What ``on_escalate`` is given.

    Attributes:
        prompt: the item as passed to ``generate``; ``prompt_text`` the rendered prompt.
        text: the response generated so far (the flagged token not yet included).
        detector, behaviour: which detector flagged; ``score`` its score; ``threshold`` the tier's.
        token_index: index of the token about to be generated.
        row: batch row.
        red_line: the detector is a red line (an "allow" will not lift its block tier).
        reason: ``"tier"`` (score above the escalate tier) or ``"correction_persisted"``.
    """

    prompt: Item
    prompt_text: str
    text: str
    detector: str
    behaviour: str
    score: float
    threshold: float
    token_index: int
    row: int
    red_line: bool
    reason: str


@dataclass
class GuardOutput:
    """The result for one prompt.

    Attributes:
        text: what to show (the refusal text if the row was blocked).
        generated_text: what the model generated (up to the block, if blocked).
        token_ids: generated token ids (up to and including EOS, excluding a blocked step).
        scores: ``{detector name: float32 array [n_steps]}``; ``scores[name][t]`` is read while
            producing token ``t`` (see the module docstring).
        policy_scores: the statistic the policy compared with its tiers at each step (the running
            mean for stream-calibrated detectors, else the token score; NaN before a step ran).
        actions: everything the Guard did, in token order.
        decisions: human decisions on escalations.
        blocked, blocked_by: whether a block ended the row, and which detector (None for a
            detector failure with fail-closed).
        finish_reason: ``eos``, ``length``, ``blocked``, ``error``, or ``regenerate`` (an attempt
            stopped to be generated again; only in the audit record of the discarded attempt).
        correctors: correctors used on this row (spec, hook, dose, from which token).
        errors: detector failures seen.
    """

    prompt: Item
    text: str
    generated_text: str
    token_ids: list[int]
    scores: dict[str, np.ndarray]
    policy_scores: dict[str, np.ndarray]
    actions: list[Action]
    decisions: list[HumanDecision]
    blocked: bool
    blocked_by: str | None
    finish_reason: str
    correctors: list[dict[str, Any]]
    prompt_tokens: int
    errors: list[dict[str, Any]]

    def max_scores(self, policy: bool = False) -> dict[str, float]:
        """Per detector, the largest token score (``policy=True``: of the statistic the policy acted on)."""
        src = self.policy_scores if policy else self.scores
        return {k: (float(np.nanmax(v)) if v.size and np.isfinite(v).any() else float("nan")) for k, v in src.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "generated_text": self.generated_text,
            "token_ids": self.token_ids,
            "scores": {k: [None if not math.isfinite(x) else float(x) for x in v.tolist()] for k, v in self.scores.items()},
            "policy_scores": {k: [None if not math.isfinite(x) else float(x) for x in v.tolist()] for k, v in self.policy_scores.items()},
            "actions": [a.to_dict() for a in self.actions],
            "decisions": [d.to_dict() for d in self.decisions],
            "blocked": self.blocked,
            "blocked_by": self.blocked_by,
            "finish_reason": self.finish_reason,
            "correctors": self.correctors,
            "prompt_tokens": self.prompt_tokens,
            "errors": self.errors,
        }


@dataclass
class TokenEvent:
    """One step of :meth:`Guard.stream`: the new token (None if the step was blocked), the new
    text piece, this step's scores and actions. The last event has ``done=True`` and ``output``.

    ``retract``: characters of the text streamed so far to delete before appending ``text``; non-zero
    when ``timing = "rewind"`` took back the previous token and re-chose it, or when its
    ``timing = "regenerate"`` discarded the response shown so far and this event starts the new attempt (a
    terminal can print that many backspaces)."""

    index: int
    token_id: int | None
    text: str
    scores: dict[str, float]
    actions: list[Action]
    done: bool = False
    output: GuardOutput | None = None
    policy_scores: dict[str, float] = field(default_factory=dict)
    retract: int = 0
