"""The policy engine: per batch row x detector state, a statistic in, commands out. Pure: no model,
no hooks, no callbacks; unit-tested on tensors (``tests/test_policy_engine.py``).

Each decode step the Guard hands it the step's token scores (``[batch, detectors]``); the engine
updates the running means, computes the statistic each detector's policy compares
(``statistic[t]``), and yields what to do:

===============  ==============================================================================
:class:`Correct`  switch the corrector of (row, detector) on; ``timing`` says when it takes effect
                  (``next``, ``immediate``: redo this step, ``rewind``: take back the last token,
                  ``forced``: on from the first token); the Guard builds it and fills in the route
:class:`Escalate` ask a person; the Guard answers with :meth:`PolicyEngine.answer` (more commands)
:class:`Block`    the row is stopped (already recorded in the engine's state)
:class:`Regenerate` the row is stopped to be generated again, corrected (``timing = "regenerate"``)
===============  ==============================================================================

Commands are yielded in the order the old in-line logic acted, and an :class:`Escalate` must be
answered before the generator is resumed (a decision can change what the rest of the step does).
Everything the engine decided is also in its state: ``actions``, ``decisions``, ``errors``,
``blocked_at``/``blocked_by``, ``stopped_at``, ``regen`` per row.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from detectors.guard_types import Action, DetectorFailure, HumanDecision
from detectors.policy import Decision, Resolved

__all__ = ["Block", "Correct", "Escalate", "PolicyEngine", "Regenerate"]


@dataclass
class Correct:
    row: int
    detector: int
    score: float | None
    token: int
    timing: str  # next | immediate | rewind | forced
    action: Action  # recorded already; the Guard adds the route to its detail


@dataclass
class Escalate:
    row: int
    detector: int
    score: float
    token: int
    reason: str  # tier | correction_persisted | sae_features_silent
    threshold: float
    red_line: bool


@dataclass
class Block:
    row: int
    detector: int
    score: float | None
    token: int
    reason: str


@dataclass
class Regenerate:
    row: int
    detector: int
    score: float
    token: int


Command = Correct | Escalate | Block | Regenerate


@dataclass
class _RowState:
    """What the engine remembers per (row, detector) pair, by key."""

    corrected: set[tuple[int, int]] = field(default_factory=set)
    run_start: dict[tuple[int, int], int] = field(default_factory=dict)  # first step of the current run of flags
    last_hit: dict[tuple[int, int], int] = field(default_factory=dict)
    allowed: set[tuple[int, int]] = field(default_factory=set)  # a person said "allow"
    human_correct: set[tuple[int, int]] = field(default_factory=set)  # a person said "correct"
    noted: set[tuple[int, int]] = field(default_factory=set)  # a not-applied correction already recorded


class PolicyEngine:
    """The policy acting on one batch.

    Args:
        res: each detector's policy in numbers (the one in force when the batch started).
        names: detector names (for the records).
        mean: ``[detectors]`` bool: judged by the running mean over the response (else per token).
        warmup: ``[detectors]`` tokens the running mean must cover before it is judged.
        batch: rows; ``steps``: steps at most.
        correct: ``"policy"``, ``"always"`` or ``"never"`` (the generation settings' ``correct``).
        attempt: 2 for a regeneration (``timing = "regenerate"`` acts once per response).
        error_mode: ``fail_closed``, ``fail_open`` or ``raise`` (red lines always fail closed).
    """

    def __init__(self, res: Sequence[Resolved], names: Sequence[str], mean: Tensor, warmup: Tensor, batch: int,
                 steps: int, correct: str = "policy", attempt: int = 1, error_mode: str = "fail_closed",
                 device: torch.device | str = "cpu") -> None:
        self.res = list(res)
        self.names = list(names)
        self.B, D = batch, len(self.res)
        self.mean, self.warmup, self.mean_any = mean.to(device), warmup.to(device), bool(mean.any())
        self.correct_mode, self.attempt, self.error_mode = correct, attempt, error_mode
        self.thr_act = torch.tensor([r.action_threshold for r in self.res], dtype=torch.float32, device=device)
        self.running_sum = torch.zeros(batch, D, device=device)
        self.running_count = torch.zeros(batch, D, device=device)
        self.statistic = torch.full((steps, batch, D), float("nan"), device=device)  # what the policy compared
        self.active = torch.ones(batch, dtype=torch.bool, device=device)
        self.active_py = [True] * batch
        self.live = torch.ones(D, dtype=torch.bool, device=device)  # detectors not failed open
        self.failed_open: set[int] = set()
        self.blocked_at: list[int | None] = [None] * batch
        self.blocked_by: list[str | None] = [None] * batch
        self.stopped_at: list[int | None] = [None] * batch  # stopped to be generated again
        self.regen: list[tuple[int, int]] = []
        self.actions: list[list[Action]] = [[] for _ in range(batch)]
        self.decisions: list[list[HumanDecision]] = [[] for _ in range(batch)]
        self.errors: list[dict[str, Any]] = []
        self.state = _RowState()

    # -- the statistic -------------------------------------------------------------------------
    def observe(self, t: int, token_scores: Tensor) -> Iterator[Command]:
        """Step ``t``'s token scores ``[batch, detectors]`` in; commands out (see the module docstring)."""
        raw = token_scores
        if t > 0:  # step 0 reads the last prompt token; the mean covers response tokens only
            self.running_sum.add_(raw)
            self.running_count.add_(1.0)
        ready = ~self.mean | (self.running_count >= self.warmup)
        s = self.statistic[t]
        torch.where(self.mean, self.running_sum / self.running_count.clamp(min=1.0), raw, out=s)
        s.masked_fill_(~ready, float("nan"))  # no statistic yet (warm-up)
        hit = ~(s <= self.thr_act) & ready & self.active.unsqueeze(-1) & self.live  # NaN counts as a hit
        if not bool(hit.any()):
            return
        rows, dets = hit.nonzero(as_tuple=True)
        vals = s[rows, dets].tolist()
        for b, j, x in zip(rows.tolist(), dets.tolist(), vals):
            if not self.active_py[b] or not bool(self.live[j]):
                continue
            if x != x:
                yield from self.fail(t, [([j], f"non-finite score {x}")])
                continue
            yield from self._act(b, j, x, t)

    def rescored(self, t: int, old: Tensor, new: Tensor) -> None:
        """Step ``t`` was re-scored (a rewound token re-chosen): the running means counted the
        taken-back token's score; count the new one's instead."""
        self.running_sum.add_(torch.where(self.running_count > 0, (new - old).nan_to_num(), 0.0))

    def judge_short(self, t: int, ending: Tensor) -> Iterator[Command]:
        """Rows ``ending`` (``[batch]`` bool) emit their end-of-turn token at step ``t``: a response
        ending inside the warm-up is judged once, on its whole mean (as stream calibration counts it)."""
        cand = (ending & self.active).unsqueeze(-1) & self.mean & (self.running_count > 0) & (self.running_count < self.warmup) & self.live
        if not bool(cand.any()):
            return
        s = self.statistic[t]
        s[cand] = (self.running_sum / self.running_count.clamp(min=1.0))[cand]
        hit = cand & ~(s <= self.thr_act)
        for b, j in zip(*(x.tolist() for x in hit.nonzero(as_tuple=True))):
            if self.active_py[b]:
                yield from self._act(b, j, float(s[b, j]), t)

    # -- failures --------------------------------------------------------------------------------
    def fail(self, t: int, failures: Sequence[tuple[list[int], BaseException | str]]) -> Iterator[Command]:
        """Detector failures (columns, error) at step ``t``, handled by the policy's error mode."""
        for cols, err in failures:
            for j in cols:
                name = self.names[j]
                msg = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
                mode = "fail_closed" if self.res[j].red_line else self.error_mode
                self.errors.append({"detector": name, "token": t, "error": msg, "handling": mode})
                if mode == "raise":
                    exc = DetectorFailure(f"detector {name!r} failed at token {t}: {msg}")
                    if isinstance(err, BaseException):
                        raise exc from err
                    raise exc
                for b in range(self.B):
                    if self.active_py[b]:
                        self.actions[b].append(Action(t, "detector_error", name, None, {"error": msg, "handling": mode}))
                if mode == "fail_open":
                    self.live[j] = False
                    self.failed_open.add(j)
                    continue
                for b in range(self.B):
                    if self.active_py[b]:
                        yield self._block(b, j, float("nan"), t, "detector_error", by=None)

    # -- tiers -------------------------------------------------------------------------------------
    def _act(self, b: int, j: int, x: float, t: int) -> Iterator[Command]:
        res = self.res[j]
        tier = res.tier_of(x, lowest="correct")
        if tier is None:
            return
        if tier == "block":
            yield self._block(b, j, x, t, "policy")
            return
        key = (b, j)
        if tier == "escalate":
            if key in self.state.allowed:
                if x <= res.correct:
                    return
            elif key not in self.state.human_correct:
                yield Escalate(b, j, x, t, "tier", res.escalate, res.red_line)
                return
        yield from self._correct(b, j, x, t)

    def _block(self, b: int, j: int, x: float, t: int, reason: str, by: str | None | bool = True) -> Block:
        if self.active_py[b]:
            self.active_py[b] = False
            self.active[b] = False
            self.blocked_at[b] = t
            self.blocked_by[b] = self.names[j] if by is True else by  # type: ignore[assignment]
            self.actions[b].append(Action(t, "block", self.names[j], None if x != x else x, {"reason": reason, "red_line": self.res[j].red_line}))
        return Block(b, j, None if x != x else x, t, reason)

    def _correct(self, b: int, j: int, x: float, t: int) -> Iterator[Command]:
        key, res, st, name = (b, j), self.res[j], self.state, self.names[j]
        if self.correct_mode == "never":
            if key not in st.noted:
                st.noted.add(key)
                self.actions[b].append(Action(t, "correct", name, x, {"applied": False, "reason": "correct=False"}))
            return
        if res.regenerate and self.attempt == 1 and key not in st.corrected:
            self.active_py[b] = False
            self.active[b] = False
            self.stopped_at[b] = t
            self.regen.append((b, j))
            self.actions[b].append(Action(t, "regenerate", name, x, {"threshold": res.correct, "during": "response"}))
            yield Regenerate(b, j, x, t)
            return
        if res.rewind and t == 0:  # step 0 reads the prompt's last token: nothing has been said to take back
            if key not in st.noted:
                st.noted.add(key)
                self.actions[b].append(Action(t, "correct", name, x, {"applied": False, "reason": "rewind: no token said yet"}))
            return
        if key not in st.corrected:
            timing = "rewind" if res.rewind else "immediate" if res.immediate else "next"
            action = Action(t, "correct", name, x, {"rewind": True} if res.rewind else {"immediate": True} if res.immediate else {})
            self.running_sum[b, j] = 0.0  # re-score the corrected continuation on its own
            self.running_count[b, j] = 0.0
            st.corrected.add(key)
            st.run_start[key] = st.last_hit[key] = t
            self.actions[b].append(action)
            yield Correct(b, j, x, t, timing, action)
            return
        if st.last_hit.get(key) != t - 1:
            st.run_start[key] = t
        st.last_hit[key] = t
        if t - st.run_start[key] >= res.patience:
            nxt = res.next_tier("correct")
            st.run_start[key] = t
            self.actions[b].append(Action(t, "move_up", name, x, {"from": "correct", "to": nxt, "after_tokens": res.patience}))
            if nxt == "block":
                yield self._block(b, j, x, t, "correction_persisted")
            elif nxt == "escalate" and key not in st.allowed:
                yield Escalate(b, j, x, t, "correction_persisted", res.escalate, res.red_line)

    def fall_back(self, cmd: Correct, reason: str) -> Iterator[Command]:
        """The correction ``cmd`` cannot act (``reason``): record it and move up to the next tier now."""
        b, j, t, x = cmd.row, cmd.detector, cmd.token, cmd.score
        res, name = self.res[j], self.names[j]
        nxt = res.next_tier("correct")
        cmd.action.detail.update({"applied": False, "reason": reason})
        self.actions[b].append(Action(t, "move_up", name, x, {"from": "correct", "to": nxt, "reason": reason}))
        score = float("nan") if x is None else x
        if nxt == "block":
            yield self._block(b, j, score, t, reason)
        elif nxt == "escalate" and (b, j) not in self.state.allowed:
            yield Escalate(b, j, score, t, reason, res.escalate, res.red_line)

    def force(self, b: int, j: int, detail: dict[str, Any]) -> Correct:
        """(row, detector) corrected from the first token (``correct=True``, or a regeneration)."""
        self.state.corrected.add((b, j))
        self.state.run_start[(b, j)] = 0
        action = Action(0, "correct", self.names[j], None, dict(detail))
        self.actions[b].append(action)
        return Correct(b, j, None, 0, "forced", action)

    # -- people ------------------------------------------------------------------------------------
    def answer(self, esc: Escalate, decision: Decision, by: str) -> Iterator[Command]:
        """A person's (or the default's) decision on ``esc``."""
        b, j, x, t, name = esc.row, esc.detector, esc.score, esc.token, self.names[esc.detector]
        self.decisions[b].append(HumanDecision(t, name, x, decision.value, by, esc.reason))
        detail = {"decision": decision.value, "by": by, "reason": esc.reason}
        if self.res[j].red_line and decision is Decision.ALLOW:
            detail["note"] = "red line: the block tier still applies"
        self.actions[b].append(Action(t, "escalate", name, x, detail))
        key = (b, j)
        if decision is Decision.ALLOW:
            self.state.allowed.add(key)
        elif decision is Decision.CORRECT:
            self.state.human_correct.add(key)
            if self.correct_mode != "never" and key in self.state.corrected:
                return  # already correcting; the patience count continues
            yield from self._correct(b, j, x, t)
        else:
            yield self._block(b, j, x, t, "human" if by == "callback" else "escalation_without_callback")

    def corrected(self, b: int, j: int) -> bool:
        return (b, j) in self.state.corrected
