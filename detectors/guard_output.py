"""Turning a finished batch into :class:`~detectors.guard_types.GuardOutput` rows and audit
records (internals of :mod:`detectors.guard`, which holds one :class:`OutputAssembler`)."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from circuits.inputs import encode, render
from detectors.audit import AuditLog, build_record
from detectors.guard_drift import DriftMonitor
from detectors.guard_run import BatchRun
from detectors.guard_types import Action, GuardOutput

__all__ = ["OutputAssembler", "detector_records"]


def detector_records(names: list[str], detectors: list[Any], thresholds: dict[str, float], mean: list[bool]) -> list[dict[str, Any]]:
    """What every audit record says of each detector."""
    return [
        {
            "name": n, "behaviour": getattr(d, "behaviour", n), "id": getattr(d, "id", None), "threshold": float(d.threshold),
            "policy_threshold": thresholds[n], "policy_statistic": "running_mean" if mean[j] else "token",
            "hooks": list(d.hooks), "probe_kind": getattr(d, "probe_kind", type(d).__name__),
            "created": getattr(d, "created", None), "model_id": getattr(d, "model_id", None),
        }
        for j, (n, d) in enumerate(zip(names, detectors))
    ]


class OutputAssembler:
    """Outputs and audit records of the Guard's batches.

    Args:
        names: detector names; ``tokenizer``: to decode; ``eos``: end-of-turn ids.
        audit: the audit log or None; ``meta_model``, ``meta_dets``: what every record says of them.
        detectors: the detectors, for the drift warning over finished responses (:mod:`detectors.guard_drift`).
    """

    def __init__(self, names: list[str], tokenizer: Any, eos: set[int], audit: AuditLog | None,
                 meta_model: dict[str, Any], meta_dets: list[dict[str, Any]], detectors: Sequence[Any] = ()) -> None:
        self.names, self.tokenizer, self.eos, self.audit = names, tokenizer, eos, audit
        self.meta_model, self.meta_dets = meta_model, meta_dets
        self.drift = DriftMonitor(names, detectors)

    def finish(self, run: BatchRun, judge: Callable[[BatchRun, int, GuardOutput], GuardOutput] | None = None) -> None:
        """Fill ``run.outputs`` (one per row) and write the audit records; ``judge``: the end-of-response
        check of ``timing = "regenerate"`` detectors."""
        n = run.n_steps
        toks = torch.stack(run.tokens).cpu().numpy() if run.tokens else np.zeros((0, run.B), dtype=np.int64)
        buf = run.scores.token_scores[:n].detach().cpu().numpy() if n else np.zeros((0, run.B, len(self.names)), dtype=np.float32)
        stat = run.engine.statistic[:n].detach().cpu().numpy() if n else buf
        eos = self.eos
        tok = self.tokenizer
        for b, p in enumerate(run.prompts):
            col = toks[:, b].tolist()
            if run.blocked_at[b] is not None:
                s = int(run.blocked_at[b])  # type: ignore[arg-type]
                ids, n_sc, reason = col[:s], s + 1, "blocked"
            elif run.stopped_at[b] is not None:
                s = int(run.stopped_at[b])  # type: ignore[arg-type]
                ids, n_sc, reason = col[:s], s + 1, "regenerate"
            else:
                e = next((i for i, x in enumerate(col) if x in eos), None)
                if e is not None:
                    ids, n_sc, reason = col[: e + 1], e + 1, "eos"
                else:
                    ids, n_sc, reason = col, len(col), "length"
            if run.error is not None and reason == "length":
                reason = "error"
            n_sc = min(n_sc, n)
            scores = {name: buf[:n_sc, b, j].copy() for j, name in enumerate(self.names)}
            policy_scores = {name: stat[:n_sc, b, j].copy() for j, name in enumerate(self.names)}
            actions = self.monitor_actions(run, policy_scores, b) + run.actions[b]
            actions.sort(key=lambda a: a.token)
            generated = tok.decode(ids, skip_special_tokens=True)
            blocked = run.blocked_at[b] is not None
            res0 = run.res[0]
            refusal = res0.refusal_text
            if blocked and run.blocked_by[b] in self.names:
                refusal = run.res[self.names.index(run.blocked_by[b])].refusal_text  # type: ignore[arg-type]
            out = GuardOutput(
                prompt=p.item,
                text=refusal if blocked else generated,
                generated_text=generated,
                token_ids=[int(i) for i in ids],
                scores=scores,
                policy_scores=policy_scores,
                actions=actions,
                decisions=list(run.decisions[b]),
                blocked=blocked,
                blocked_by=run.blocked_by[b],
                finish_reason=reason,
                correctors=list(run.row_correctors[b]),
                prompt_tokens=len(p.enc.ids),
                errors=list(run.errors),
            )
            if judge is not None:
                out = judge(run, b, out)
            run.outputs.append(out)
            for name in self.names:
                self.drift.observe(name, out.scores[name])
        if self.audit is not None:
            self.write_audit(run)

    def write_rejection(self, items: list[Any], gen: Any, err: BaseException, policy_meta: dict[str, Any]) -> None:
        """One audit record per prompt of a call refused before generation (nothing was generated)."""
        assert self.audit is not None
        tok = self.tokenizer
        started = time.time()
        for b, it in enumerate(items):
            try:
                prefix, response, _ = render(tok, it, where=f"item {b}")
                text = prefix + response
                n_tok = len(encode(tok, [it], 2**62)[0].ids)
            except Exception:  # the item itself is malformed: record what was given
                text, n_tok = repr(it), 0
            rec = build_record(
                log=self.audit, started=started, model=self.meta_model, detectors=self.meta_dets,
                policy=policy_meta, prompt_text=text, prompt_tokens=n_tok,
                settings={**(gen.to_dict() if gen is not None else {}), "batch_size": len(items), "attempt": 1}, row=b, scores={},
                monitor_thresholds={}, actions=[], correctors=[], decisions=[], detector_errors=[], n_generated=0,
                finish_reason="rejected", blocked=False, blocked_by=None, generated_text=None, output_text=None,
                error=err,
            )
            self.audit.write(rec)

    def monitor_actions(self, run: BatchRun, scores: dict[str, np.ndarray], row: int = 0) -> list[Action]:
        """One ``monitor`` action where each detector's statistic rises above its monitor tier (with the
        token's SAE features when the Guard reported them, ``Guard(features=k)``)."""
        out = []
        for j, name in enumerate(self.names):
            thr = run.res[j].monitor
            if not math.isfinite(thr):
                continue
            s = scores[name]
            above = np.nan_to_num(s, nan=-np.inf) > thr
            rises = np.nonzero(above & ~np.concatenate([[False], above[:-1]]))[0]
            for i in rises:
                rep = run.feature_reports.get((row, int(i), name))
                out.append(Action(int(i), "monitor", name, float(s[i]), {"sae_features": rep} if rep else {}))
        return out

    def write_audit(self, run: BatchRun) -> None:
        assert self.audit is not None
        monitor = {r.name: r.monitor for r in run.res}
        for b, (p, o) in enumerate(zip(run.prompts, run.outputs)):
            try:
                rec = build_record(
                    log=self.audit,
                    started=run.started,
                    model=self.meta_model,
                    detectors=self.meta_dets,
                    policy=run.policy_meta,
                    prompt_text=p.text,
                    prompt_tokens=len(p.enc.ids),
                    settings={**run.gen.to_dict(), "batch_size": run.B, "attempt": run.attempt},
                    row=b,
                    scores=o.scores,
                    policy_scores=o.policy_scores,
                    monitor_thresholds=monitor,
                    actions=[a.to_dict() for a in o.actions],
                    correctors=o.correctors,
                    decisions=[d.to_dict() for d in o.decisions],
                    detector_errors=o.errors,
                    n_generated=len(o.token_ids),
                    finish_reason=o.finish_reason,
                    blocked=o.blocked,
                    blocked_by=o.blocked_by,
                    generated_text=o.generated_text,
                    output_text=o.text,
                    error=run.error if not isinstance(run.error, GeneratorExit) else _Cancelled("stream closed before the end"),
                )
                self.audit.write(rec)
            except Exception as e:
                if run.error is None:
                    raise
                warnings.warn(f"could not write the audit record: {e}", RuntimeWarning, stacklevel=2)


class _Cancelled(Exception):
    pass
