"""The Guard's decode loop: a :class:`~detectors.guard_decoder.Decoder`, the scoring hooks and the
:class:`~detectors.policy_engine.PolicyEngine` composed, one step at a time, with hooks attached
only inside a step and under the model's lock (internals of :mod:`detectors.guard`)."""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from circuits.generation_lock import model_lock
from detectors.guard_commands import CommandRunner
from detectors.guard_decoder import Decoder
from detectors.guard_output import OutputAssembler
from detectors.guard_run import BatchRun
from detectors.guard_scoring import Scorer
from detectors.guard_types import GuardOutput

__all__ = ["BatchLoop"]


def _runner_up(logits: Tensor, taken: int) -> int | None:
    """The best token other than ``taken`` under these (processed) logits; None if none is allowed."""
    top = torch.topk(logits, 2)
    for v, i in zip(top.values.tolist(), top.indices.tolist()):
        if i != taken and v > float("-inf"):
            return int(i)
    return None


class BatchLoop:
    """Runs batches for a Guard (``guard.model`` is read at each batch)."""

    def __init__(self, guard: Any, scorer: Scorer, commands: CommandRunner, outputs: OutputAssembler,
                 judge: Callable[[BatchRun, int, GuardOutput], GuardOutput], dtype: torch.dtype, pad: int,
                 eos: Tensor, keep: dict[str, Any]) -> None:
        self.guard, self.scorer, self.commands, self.outputs, self.judge = guard, scorer, commands, outputs, judge
        self.dtype, self.pad, self.eos, self.keep = dtype, pad, eos, keep

    def steps(self, run: BatchRun) -> Iterator[int]:
        """Run one batch; yields the step index after each step; fills ``run.outputs``."""
        model, engine, scores = self.guard.model, run.engine, run.scores
        dec = run.decoder = Decoder(model, [list(p.enc.ids) for p in run.prompts], run.gen, self.pad, self.eos,
                                    run.state, engine.active, self.keep, run.generator, run.processor)
        lock = model_lock(model)
        # activations kept where the router has an SAE: feature reports and SAE routes read them at a flag
        keep = {d.hooks[0] for d in self.guard.detectors if self.guard.router.sae_for(d.hooks[0]) is not None}
        score_fns = self.scorer.hook_fns(model, scores, self.dtype, keep=sorted(keep))
        try:
            t = 0
            while True:
                # hooks exist only inside a step, under the model's lock: between steps (a stream
                # paused or abandoned by its consumer) the model is exactly the user's model, and
                # another thread's run on it cannot score or steer through this run's hooks
                with lock, self._hooked(run, score_fns), torch.inference_mode():
                    if t == 0:
                        self.commands.force(run)
                    scores.step = t
                    dec.begin_step(t)
                    logits = self._scored_forward(run)
                    marks = [len(a) for a in engine.actions] if self.guard.features else None
                    self.commands.execute(run, t, engine.observe(t, scores.token_scores[t]))
                    if marks is not None:
                        self.commands.report_features(run, t, marks)
                    if run.rewinds and dec.prev is not None:
                        logits = self._rewind(run, t)
                    elif run.redo:
                        run.redo = False
                        logits = dec.redo(t)
                        run.redos += 1
                    run.rewinds.clear()
                    logits = dec.processed(logits, t)
                    nxt = dec.select(logits)
                    if engine.mean_any and t > 0:
                        self.commands.execute(run, t, engine.judge_short(t, dec.ending(nxt)))
                    done = dec.advance(t, nxt, logits)
                yield t
                if done:
                    break
                t += 1
        except BaseException as e:
            run.error = e
            raise
        finally:
            scores.clear()
            try:
                self.outputs.finish(run, self.judge)
            except Exception as e:
                if run.error is None:
                    raise
                warnings.warn(f"could not assemble the guard outputs after an error: {e}", RuntimeWarning, stacklevel=2)

    def _scored_forward(self, run: BatchRun) -> Tensor:
        """The step's forward with the scoring hooks writing, then the detectors scored after it
        and any read-out failure handed to the policy."""
        run.scores.scoring = True
        try:
            logits = run.decoder.forward()  # type: ignore[union-attr]
        finally:
            run.scores.scoring = False
        if self.scorer.custom:
            self.scorer.score_custom(run.scores, run.scores.step, run.engine.live)
        if run.scores.failures:
            self.commands.execute(run, run.scores.step, run.engine.fail(run.scores.step, run.scores.take_failures()))
        return logits

    @contextlib.contextmanager
    def _hooked(self, run: BatchRun, score_fns: list[tuple[str, Any]]) -> Iterator[None]:
        """The run's scoring hooks, then its correctors (in the order they were made: detectors read
        an activation before a corrector at the same hook edits it), attached for one step.
        Correctors made during the step attach themselves; everything is removed on exit."""
        run.hooks = [self.guard.model.add_hooks(score_fns)]
        try:
            for key, (c, h, route) in list(run.correctors.items()):
                if not h.active:
                    run.correctors[key] = (c, c.attach(self.guard.model, state=run.state), route)
            yield
        finally:
            errs: list[BaseException] = []
            for _, h, _ in run.correctors.values():
                try:
                    h.remove()
                except BaseException as e:  # pragma: no cover - removal does not fail in practice
                    errs.append(e)
            for h in reversed(run.hooks):
                try:
                    h.remove()
                except BaseException as e:  # pragma: no cover
                    errs.append(e)
            run.hooks = []
            if errs and sys.exc_info()[1] is None:
                raise errs[0]

    def _rewind(self, run: BatchRun, t: int) -> Tensor:
        """Take back token ``t - 1`` of the rows whose correction (``timing = "rewind"``) started at
        step ``t``: re-run step ``t - 1`` with the correctors on, re-choose that token for those rows
        (the others keep theirs), then re-run step ``t`` on the re-chosen tokens, scored."""
        dec, scores = run.decoder, run.scores
        assert dec is not None and dec.prev is not None
        started, run.rewinds = list(run.rewinds), []
        run.redo = False
        taken = dec.tokens[t - 1]
        rows = sorted({b for b, _, _ in started})
        avoiders: dict[int, list[Any]] = {}
        for b, key, action in started:
            c = run.correctors[key][0]
            if callable(getattr(c, "avoid", None)):
                instead = _runner_up(dec.prev[3][b], int(taken[b]))
                if instead is None:
                    action.detail["avoid"] = "no other token is allowed"
                    continue
                c.avoid(b, int(taken[b]), instead)
                action.detail["instead_of"] = instead
                avoiders.setdefault(b, []).append(c)
        p_logits = dec.rerun_previous(t)
        chosen = dec.select(dec.processed(p_logits, t - 1))
        sel = torch.zeros(run.B, dtype=torch.bool, device=chosen.device)
        sel[rows] = True
        taken, new = dec.replace_previous(t, sel, chosen)
        for b, cs in avoiders.items():
            for c in cs:
                c.release(b)  # avoidance is for the re-chosen position only
        old = scores.reset_step(t)
        logits = self._scored_forward(run)
        run.engine.rescored(t, old, scores.token_scores[t])
        for b, _, action in started:
            action.detail["taken_back"] = int(taken[b])
            action.detail["replaced_by"] = int(new[b])
        run.rewound += len(rows)
        return logits

