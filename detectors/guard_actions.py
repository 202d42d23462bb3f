"""What the Guard does when a score crosses a policy tier: correct, escalate, block, or record a
detector failure. Split out of :mod:`detectors.guard` so the decode loop and the policy's actions
can be read apart; :class:`~detectors.guard.Guard` is the only class that mixes this in."""

from __future__ import annotations

from typing import Any, Callable

import torch

from circuits.hooked_model import HookedModel
from circuits.steering import Corrector
from detectors.guard_run import BatchRun
from detectors.guard_types import (
    Action,
    DetectorFailure,
    EscalationContext,
    HumanDecision,
)
from detectors.policy import Decision, Policy
from detectors.router import Route, Router


class PolicyActions:
    """The policy's actions on one row and detector at one step (mixed into the Guard)."""

    # set by Guard.__init__
    _eos: torch.Tensor  # end-of-turn token ids
    model: HookedModel
    detectors: list[Any]
    names: list[str]
    router: Router
    on_escalate: Callable[[EscalationContext], Any] | None
    _policy: Policy

    def _handle_errors(self, run: BatchRun, t: int) -> None:
        pending, run.pending = run.pending, []
        for cols, err in pending:
            for j in cols:
                name = self.names[j]
                res = run.res[j]
                msg = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
                mode = "fail_closed" if res.red_line else run.error_mode
                run.errors.append({"detector": name, "token": t, "error": msg, "handling": mode})
                if mode == "raise":
                    exc = DetectorFailure(f"detector {name!r} failed at token {t}: {msg}")
                    if isinstance(err, BaseException):
                        raise exc from err
                    raise exc
                if mode == "fail_open":
                    run.det_live[j] = False
                    run.failed_open.add(j)
                    for b in range(run.B):
                        if run.active_py[b]:
                            run.actions[b].append(Action(t, "detector_error", name, None, {"error": msg, "handling": "fail_open"}))
                    continue
                for b in range(run.B):
                    if run.active_py[b]:
                        run.actions[b].append(Action(t, "detector_error", name, None, {"error": msg, "handling": "fail_closed"}))
                        self._block(run, b, j, float("nan"), t, "detector_error", by=None)

    def _act(self, run: BatchRun, b: int, j: int, x: float, t: int) -> None:
        res = run.res[j]
        tier = res.tier_of(x, lowest="correct")
        if tier is None:
            return
        if tier == "block":
            self._block(run, b, j, x, t, "policy")
            return
        key = (b, j)
        if tier == "escalate":
            if key in run.allowed:
                if x <= res.correct:
                    return
            elif key not in run.human_correct:
                self._escalate(run, b, j, x, t, "tier")
                return
        self._correct(run, b, j, x, t)

    def _block(self, run: BatchRun, b: int, j: int, x: float, t: int, reason: str, by: str | None | bool = True) -> None:
        if not run.active_py[b]:
            return
        name = self.names[j] if by is True else by
        run.active_py[b] = False
        run.active[b] = False
        run.blocked_at[b] = t
        run.blocked_by[b] = name  # type: ignore[assignment]
        run.actions[b].append(Action(t, "block", self.names[j], None if x != x else x, {"reason": reason, "red_line": run.res[j].red_line}))

    def _corrector(self, run: BatchRun, route: Route, det: Any, j: int) -> Corrector:
        entry = run.correctors.get(route.key)
        if entry is None:
            bound = run.bound.get(j)  # a prompt-conditioned detector's per-row read-out, once bound
            c = self.router.build(route, det, self.model, run.state, readout=None if bound is None else bound[0], batch=run.B)
            if run.gen.correct != "always":
                c.rows_off(run.B)
            h = c.attach(self.model, state=run.state)
            entry = run.correctors[route.key] = (c, h, route)
        return entry[0]

    def _correct_all(self, run: BatchRun) -> None:
        for j, det in enumerate(self.detectors):
            res = run.res[j]
            self.router.validate(res.corrector, det, where=self._policy.source)
            route = self.router.route(det, res, model=self.model)
            self._corrector(run, route, det, j)
            for b in range(run.B):
                run.corrected[(b, j)] = route
                run.run_start[(b, j)] = 0
                run.actions[b].append(Action(0, "correct", self.names[j], None, {**route.to_dict(), "forced": True}))
                run.row_correctors[b].append({**route.to_dict(), "from_token": 0})

    def _force(self, run: BatchRun) -> None:
        """A regeneration: the flagged detectors' correctors on from the first token of their rows."""
        for b, js in run.force.items():
            for j in js:
                det = self.detectors[j]
                route = self.router.route(det, run.res[j], model=self.model)
                self._corrector(run, route, det, j).set_row(b, 1.0)
                run.corrected[(b, j)] = route
                run.run_start[(b, j)] = 0
                run.actions[b].append(Action(0, "correct", self.names[j], None, {**route.to_dict(), "regenerated": True}))
                run.row_correctors[b].append({**route.to_dict(), "from_token": 0})

    def _stop_for_regeneration(self, run: BatchRun, b: int, j: int, x: float, t: int) -> None:
        """Policy ``regenerate``: a response flagged mid-way is stopped here and, once the batch is
        done, generated again from its first token with the corrector on (see :meth:`generate`)."""
        run.active_py[b] = False
        run.active[b] = False
        run.stopped_at[b] = t
        run.regen.append((b, j))
        run.actions[b].append(Action(t, "regenerate", self.names[j], x, {"threshold": run.res[j].correct, "during": "response"}))

    def _correct(self, run: BatchRun, b: int, j: int, x: float, t: int) -> None:
        key = (b, j)
        res = run.res[j]
        if run.gen.correct == "never":
            if key not in run.noted:
                run.noted.add(key)
                run.actions[b].append(Action(t, "correct", self.names[j], x, {"applied": False, "reason": "correct=False"}))
            return
        if res.regenerate and run.attempt == 1 and key not in run.corrected:
            self._stop_for_regeneration(run, b, j, x, t)
            return
        if res.rewind and t == 0:  # step 0 reads the prompt's last token: nothing has been said to take back
            if key not in run.noted:
                run.noted.add(key)
                run.actions[b].append(Action(t, "correct", self.names[j], x, {"applied": False, "reason": "rewind: no token said yet"}))
            return
        if key not in run.corrected:
            det = self.detectors[j]
            route = self.router.route(det, res, model=self.model)
            self._corrector(run, route, det, j).set_row(b, 1.0)
            rewind = res.rewind
            how = {"rewind": True} if rewind else {"immediate": True} if res.immediate else {}
            action = Action(t, "correct", self.names[j], x, route.to_dict() | how)
            if rewind:
                run.rewinds.append((b, route.key, action))
            elif res.immediate:
                run.redo = True
            run.cum[b, j] = 0.0  # re-score the corrected continuation on its own
            run.cnt[b, j] = 0.0
            run.corrected[key] = route
            run.run_start[key] = run.last_hit[key] = t
            run.actions[b].append(action)
            run.row_correctors[b].append({**route.to_dict(), "from_token": t - 1 if rewind else t if res.immediate else t + 1})
            return
        if run.last_hit.get(key) != t - 1:
            run.run_start[key] = t
        run.last_hit[key] = t
        if t - run.run_start[key] >= res.patience:
            nxt = res.next_tier("correct")
            run.run_start[key] = t
            run.actions[b].append(Action(t, "move_up", self.names[j], x, {"from": "correct", "to": nxt, "after_tokens": res.patience}))
            if nxt == "block":
                self._block(run, b, j, x, t, "correction_persisted")
            elif nxt == "escalate" and key not in run.allowed:
                self._escalate(run, b, j, x, t, "correction_persisted")

    def _escalate(self, run: BatchRun, b: int, j: int, x: float, t: int, reason: str) -> None:
        res = run.res[j]
        name = self.names[j]
        det = self.detectors[j]
        if self.on_escalate is None:
            decision, by = Decision.BLOCK, "default"
        else:
            ctx = EscalationContext(
                prompt=run.prompts[b].item,
                prompt_text=run.prompts[b].text,
                text=self._text_so_far(run, b, t),
                detector=name,
                behaviour=getattr(det, "behaviour", name),
                score=x,
                threshold=res.escalate,
                token_index=t,
                row=b,
                red_line=res.red_line,
                reason=reason,
            )
            decision, by = Decision.parse(self.on_escalate(ctx)), "callback"
        run.decisions[b].append(HumanDecision(t, name, x, decision.value, by, reason))
        detail = {"decision": decision.value, "by": by, "reason": reason}
        if res.red_line and decision is Decision.ALLOW:
            detail["note"] = "red line: the block tier still applies"
        run.actions[b].append(Action(t, "escalate", name, x, detail))
        key = (b, j)
        if decision is Decision.ALLOW:
            run.allowed.add(key)
        elif decision is Decision.CORRECT:
            run.human_correct.add(key)
            if run.gen.correct != "never" and key in run.corrected:
                return  # already correcting; the patience count continues
            self._correct(run, b, j, x, t)
        else:
            self._block(run, b, j, x, t, "human" if by == "callback" else "escalation_without_callback")

    def _text_so_far(self, run: BatchRun, b: int, t: int) -> str:
        if t == 0 or not run.tokens:
            return ""
        ids = torch.stack(run.tokens[:t])[:, b].tolist()
        eos = set(self._eos.tolist())
        out = []
        for i in ids:
            out.append(i)
            if i in eos:
                break
        return self.model.tokenizer.decode(out, skip_special_tokens=True)
