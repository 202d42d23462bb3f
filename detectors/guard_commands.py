"""Carrying out the policy engine's commands: correctors built, attached and switched on per row,
escalations put to a person (internals of :mod:`detectors.guard`)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch

from circuits.steering import Corrector
from detectors.guard_run import BatchRun
from detectors.guard_types import EscalationContext
from detectors.policy import Decision
from detectors.policy_engine import Command, Correct, Escalate
from detectors.router import Route

__all__ = ["CommandRunner"]

FLAG_KINDS = ("correct", "escalate", "block", "move_up")


class CommandRunner:
    """Executes :mod:`~detectors.policy_engine` commands for a Guard.

    Args:
        guard: the Guard (its public ``model``, ``detectors``, ``names``, ``router``, ``policy`` and
            ``on_escalate`` are read at each use, so reassigning them takes effect).
        eos: end-of-turn token ids.
    """

    def __init__(self, guard: Any, eos: set[int]) -> None:
        self.guard = guard
        self.eos = eos
        self._attr_cache: dict = {}  # W_dec @ w per (detector, SAE), for feature reports

    def execute(self, run: BatchRun, t: int, commands: Iterator[Command]) -> None:
        for cmd in commands:
            if isinstance(cmd, Correct):
                self._start_correction(run, cmd)
            elif isinstance(cmd, Escalate):
                self.execute(run, t, run.engine.answer(cmd, *self.ask(run, cmd)))

    def _corrector(self, run: BatchRun, route: Route, det: Any, j: int) -> Corrector:
        entry = run.correctors.get(route.key)
        if entry is None:
            bound = run.scores.bound_readouts.get(j)  # a prompt-conditioned detector's per-row read-out, once bound
            c = self.guard.router.build(route, det, self.guard.model, run.state, readout=None if bound is None else bound[0], batch=run.B)
            if run.gen.correct != "always":
                c.rows_off(run.B)
            h = c.attach(self.guard.model, state=run.state)
            entry = run.correctors[route.key] = (c, h, route)
        return entry[0]

    def report_features(self, run: BatchRun, t: int, marks: list[int]) -> None:
        """The top SAE features of each token flagged at step ``t`` (``Guard(features=k)``): added to the
        detail of the engine's actions since ``marks`` (correct, escalate, block, move up; streamed and
        audited), and kept for the tokens where a statistic rises above its monitor tier (the output's
        ``monitor`` actions are assembled from them when the row finishes)."""
        k = self.guard.features
        from detectors.explain import token_features

        def report(b: int, j: int) -> dict[str, Any] | None:
            det = self.guard.detectors[j]
            sae = self.guard.router.sae_for(det.hooks[0])
            kept = run.scores.last_acts.get(det.hooks[0])
            return None if sae is None or kept is None else token_features(det, sae, kept[b], k, self._attr_cache)

        for b, acts in enumerate(run.engine.actions):
            for a in acts[marks[b]:]:
                if a.token == t and a.kind in FLAG_KINDS and a.detector in self.guard.names and "sae_features" not in a.detail:
                    rep = report(b, self.guard.names.index(a.detector))
                    if rep is not None:
                        a.detail["sae_features"] = rep
        stat = run.engine.statistic
        for j, name in enumerate(self.guard.names):
            thr = run.res[j].monitor
            if not math.isfinite(thr) or self.guard.router.sae_for(self.guard.detectors[j].hooks[0]) is None:
                continue
            now = stat[t][:, j].nan_to_num(nan=-math.inf) > thr
            if t > 0:
                now &= ~(stat[t - 1][:, j].nan_to_num(nan=-math.inf) > thr)
            for b in now.nonzero().flatten().tolist():
                rep = report(b, j)
                if rep is not None:
                    run.feature_reports[(b, t, name)] = rep

    def _start_correction(self, run: BatchRun, cmd: Correct) -> None:
        b, j = cmd.row, cmd.detector
        det = self.guard.detectors[j]
        kept = run.scores.last_acts.get(det.hooks[0]) if cmd.timing != "forced" else None
        route = self.guard.router.route(det, run.res[j], model=self.guard.model, act=None if kept is None else kept[b])
        if route is None:  # its linked SAE features are silent here: a clamp would change nothing
            self.execute(run, cmd.token, run.engine.fall_back(cmd, "sae_features_silent"))
            return
        c = self._corrector(run, route, det, j)
        if cmd.timing == "forced" and run.gen.correct == "always":
            from_token = 0  # every row is on already
        else:
            c.set_row(b, 1.0)
            from_token = {"forced": 0, "rewind": cmd.token - 1, "immediate": cmd.token}.get(cmd.timing, cmd.token + 1)
        cmd.action.detail = route.to_dict() | cmd.action.detail
        if cmd.timing == "rewind":
            run.rewinds.append((b, route.key, cmd.action))
        elif cmd.timing == "immediate":
            run.redo = True
        run.row_correctors[b].append({**route.to_dict(), "from_token": from_token})

    def force(self, run: BatchRun) -> None:
        """Correctors on from the first token: every detector's for every row (``correct=True``), or
        the flagged detectors' of a regeneration's rows."""
        if run.gen.correct == "always":
            for j, det in enumerate(self.guard.detectors):
                self.guard.router.validate(run.res[j].corrector, det, where=self.guard.policy.source)
                for b in range(run.B):
                    self._start_correction(run, run.engine.force(b, j, {"forced": True}))
        else:
            for b, js in run.force.items():
                for j in js:
                    self._start_correction(run, run.engine.force(b, j, {"regenerated": True}))

    def ask(self, run: BatchRun, esc: Escalate) -> tuple[Decision, str]:
        """A person's decision on an escalation (``block`` without a callback: fail closed)."""
        if self.guard.on_escalate is None:
            return Decision.BLOCK, "default"
        b, j = esc.row, esc.detector
        ctx = EscalationContext(
            prompt=run.prompts[b].item, prompt_text=run.prompts[b].text, text=self._text_so_far(run, b, esc.token),
            detector=self.guard.names[j], behaviour=getattr(self.guard.detectors[j], "behaviour", self.guard.names[j]), score=esc.score,
            threshold=esc.threshold, token_index=esc.token, row=b, red_line=esc.red_line, reason=esc.reason,
        )
        return Decision.parse(self.guard.on_escalate(ctx)), "callback"

    def _text_so_far(self, run: BatchRun, b: int, t: int) -> str:
        if t == 0 or not run.tokens:
            return ""
        ids = torch.stack(run.tokens[:t])[:, b].tolist()
        out = []
        for i in ids:
            out.append(i)
            if i in self.eos:
                break
        return self.guard.model.tokenizer.decode(out, skip_special_tokens=True)
