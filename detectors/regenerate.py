"""``timing = "regenerate"``: judge a finished response as a whole, and generate it again under
correction when it is still flagged.

A response-mean detector's item threshold is calibrated on the mean over a whole response, which a
Guard only knows once the response is finished. Mid-response tiers act on the running mean against
a stream threshold set so that benign responses rarely trip it *at any point*; that threshold sits
far above the item threshold, so a response can end flagged without ever tripping it. These
functions close that gap for :meth:`Guard.generate <detectors.guard.Guard.generate>` and
:meth:`Guard.stream <detectors.guard.Guard.stream>` (whose next event then retracts what the
discarded attempt showed): the finished
response is judged against the tiers resolved at the item threshold; if it is above the correct
tier, it is discarded and generated again from its first token with the detector's corrector on
(once), and a second attempt still above it moves up a tier. A flag in the correct tier *during*
the response does the same, sooner: the Guard stops the row there instead of steering the rest of
it (``Guard._stop_for_regeneration``).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np

from detectors.detector import MEAN_SELECTIONS
from detectors.guard_run import BatchRun
from detectors.guard_types import Action, EscalationContext, GuardOutput, HumanDecision
from detectors.policy import Decision, Policy, PolicyError, Resolved


def end_policy(policy: Policy, names: list[str], detectors: list[Any], res: list[Resolved]) -> dict[int, Resolved]:
    """For each detector under ``regenerate``: its tiers resolved at its *item* threshold."""
    out = {}
    for j, (name, det, r) in enumerate(zip(names, detectors, res)):
        if not r.regenerate:
            continue
        select = getattr(det, "select", None)
        if select not in MEAN_SELECTIONS:
            raise PolicyError(f"{policy.source}: detector {name!r}: regenerate judges a finished response by its mean "
                              f"score, but this detector reads {select!r} (needs one of {', '.join(MEAN_SELECTIONS)})")
        end = policy.resolve(name, float(det.threshold))
        if not math.isfinite(end.correct):
            raise PolicyError(f"{policy.source}: detector {name!r}: regenerate needs a correct tier (correct_above)")
        out[j] = end
    return out


def response_mean(out: GuardOutput, name: str) -> float | None:
    """The mean token score over the response (step 0 reads the prompt's last token)."""
    s = np.asarray(out.scores[name][1:], dtype=np.float64)
    s = s[np.isfinite(s)]
    return float(s.mean()) if s.size else None


def judge_end(guard: Any, run: BatchRun, b: int, out: GuardOutput) -> GuardOutput:
    """Judge row ``b``'s finished response for every detector under ``regenerate``; record the
    rows to generate again in ``run.regen``. Returns the output (blocked if a second attempt is
    still flagged and the next tier says so)."""
    if run.error is not None:
        return out
    if run.stopped_at[b] is not None:  # flagged mid-way: already on its way to be generated again
        for a in out.actions:
            if a.kind == "regenerate" and "discarded_text" not in a.detail:
                a.detail |= {"discarded_text": out.generated_text, "discarded_tokens": len(out.token_ids)}
        return out
    for j, end in guard._res_end.items():
        if out.blocked:
            break
        name = guard.names[j]
        x = response_mean(out, name)
        if x is None or not x > end.correct:
            continue
        if j in run.force.get(b, ()):
            out = _move_up(guard, run, b, j, x, out, end)
            continue
        if (b, j) in run.corrected:
            continue  # a correction ran mid-response; its own patience rule applies
        detail: dict[str, Any] = {"item_score": x, "threshold": end.correct}
        if run.gen.correct == "never":
            detail |= {"applied": False, "reason": "correct=False"}
        elif run.attempt > 1:
            detail |= {"applied": False, "reason": "one regeneration per response"}
        else:
            detail |= {"discarded_text": out.generated_text, "discarded_tokens": len(out.token_ids)}
            run.regen.append((b, j))
        out.actions.append(Action(len(out.token_ids), "regenerate", name, x, detail))
    return out


def _move_up(guard: Any, run: BatchRun, b: int, j: int, x: float, out: GuardOutput, end: Resolved) -> GuardOutput:
    name = guard.names[j]
    nxt = end.next_tier("correct")
    n = len(out.token_ids)
    out.actions.append(Action(n, "move_up", name, x, {"from": "correct", "to": nxt, "after": "regenerate", "threshold": end.correct}))
    if nxt == "escalate":
        if guard.on_escalate is None:
            decision, by = Decision.BLOCK, "default"
        else:
            p = run.prompts[b]
            ctx = EscalationContext(prompt=p.item, prompt_text=p.text, text=out.generated_text, detector=name,
                                    behaviour=getattr(guard.detectors[j], "behaviour", name), score=x,
                                    threshold=end.escalate, token_index=n, row=b, red_line=end.red_line,
                                    reason="regenerated_still_flagged")
            decision, by = Decision.parse(guard.on_escalate(ctx)), "callback"
        out.decisions.append(HumanDecision(n, name, x, decision.value, by, "regenerated_still_flagged"))
        out.actions.append(Action(n, "escalate", name, x, {"decision": decision.value, "by": by, "reason": "regenerated_still_flagged"}))
        red_line_holds = end.red_line and not (x <= end.block)  # a person's "allow" never lifts a red line
        if decision is not Decision.BLOCK and not red_line_holds:
            return out  # allow, or correct: the response is already the corrected one
    out.actions.append(Action(n, "block", name, x, {"reason": "regenerated_still_flagged", "red_line": end.red_line}))
    return replace(out, text=end.refusal_text, blocked=True, blocked_by=name, finish_reason="blocked")


def merge(first: GuardOutput, second: GuardOutput) -> GuardOutput:
    """The regenerated output, carrying what happened to the discarded attempt."""
    lead = []
    for a in first.actions:
        if a.kind == "regenerate" and a.detail.get("applied", True):
            detail = {**a.detail, "discarded_actions": [x.to_dict() for x in first.actions if x is not a]}
            lead.append(Action(0, "regenerate", a.detector, a.score, detail))
    return replace(second, actions=lead + second.actions, decisions=first.decisions + second.decisions,
                   errors=first.errors + second.errors)


def regenerate_rows(guard: Any, outs: list[GuardOutput | None], prompts: list[Any], regen: dict[int, list[int]], gen: Any,
                    processor: Any, bs: int, generator: Any) -> None:
    """Generate the rows ``timing = "regenerate"`` flagged again, each with its detectors'
    correctors on from the first token, and merge each with its discarded attempt."""
    order = sorted(regen, key=lambda i: len(prompts[i].enc.ids))
    for s in range(0, len(order), bs):
        chunk = order[s : s + bs]
        run = guard._new_run([prompts[i] for i in chunk], gen, generator, attempt=2)
        run.processor = processor
        run.force = {b: regen[i] for b, i in enumerate(chunk)}
        for _ in guard._loop.steps(run):
            pass
        for i, o in zip(chunk, run.outputs):
            outs[i] = merge(outs[i], o)  # type: ignore[arg-type]
