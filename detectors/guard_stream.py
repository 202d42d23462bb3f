"""The events of :meth:`Guard.stream <detectors.guard.Guard.stream>`: one per step of the batch
loop, with the text piece, the scores and the actions; a regeneration's first event retracts what
the discarded attempt showed (internals of :mod:`detectors.guard`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from detectors.guard_run import BatchRun
from detectors.guard_types import TokenEvent
from detectors.regenerate import merge

__all__ = ["stream_events"]


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def stream_events(guard: Any, run: BatchRun) -> Iterator[TokenEvent]:
    shown = yield from _attempt(guard, run, 0)
    out = run.outputs[0]
    if run.regen:  # ``timing = "regenerate"``: the next event retracts what the first attempt showed
        again = guard._new_run(run.prompts, run.gen, run.generator, attempt=2)
        again.processor = run.processor
        again.force = {0: [j for _, j in run.regen]}
        yield from _attempt(guard, again, len(shown))
        out = merge(out, again.outputs[0])
    yield TokenEvent(len(out.token_ids), None, "", {}, [a for a in out.actions if a.kind == "monitor"], done=True, output=out)


def _attempt(guard: Any, run: BatchRun, shown: int) -> Iterator[TokenEvent]:
    """One attempt's events; ``shown``: characters of an earlier attempt still on screen, which
    the first event retracts. Returns the text this attempt showed."""
    steps = guard._loop.steps(run)
    guard._streams.add(steps)
    tok = guard.model.tokenizer
    text = ""
    n_actions = 0
    try:
        for t in steps:
            acts = run.actions[0][n_actions:]
            n_actions = len(run.actions[0])
            scores = dict(zip(guard.names, run.scores.token_scores[t, 0].tolist()))
            pol = dict(zip(guard.names, run.engine.statistic[t, 0].tolist()))
            if run.blocked_at[0] == t or run.stopped_at[0] == t:
                yield TokenEvent(t, None, "", scores, acts, policy_scores=pol, retract=shown)
                shown = 0
                continue
            tid = int(run.tokens[t][0])
            ids = [int(x[0]) for x in run.tokens[: t + 1]]
            new = tok.decode(ids, skip_special_tokens=True)
            keep = 0 if new.startswith(text) else _common_prefix(text, new)
            retract = 0 if new.startswith(text) else len(text) - keep
            piece, text = new[len(text) - retract:], new
            yield TokenEvent(t, tid, piece, scores, acts, policy_scores=pol, retract=retract + shown)
            shown = 0
    finally:
        steps.close()
    return text
