"""Audit log: one JSON line per guarded generation, written even when generation fails.

Each record holds: time, the model (id, weight fingerprint), the detectors (name, behaviour, id,
threshold, hooks, probe kind, created), the policy (hash, red lines, failure mode), the SHA-256 of
the rendered prompt, generation settings, per-token scores per detector (or, with
``summary=True``, a summary plus only the tokens scoring above a threshold), every action with
its token index, the correctors and doses used, human decisions, and the error if generation
raised. The Guard writes records in a ``finally`` block, so an exception midway still leaves a
complete record of what happened up to that point (with ``"error"`` set).

Example:
    >>> guard = Guard(model, dets, policy, audit=AuditLog("audit.jsonl", summary=True))
    >>> [json.loads(l) for l in open("audit.jsonl")][-1]["actions"]
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from circuits.artifact_io import library_version

AUDIT_SCHEMA = 1


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _clean(x: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy -> Python."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, (np.floating,)):
        return _clean(float(x))
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, np.ndarray):
        return [_clean(v) for v in x.tolist()]
    if isinstance(x, Mapping):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def _round(values: np.ndarray, digits: int = 5) -> list[float | None]:
    return [None if not math.isfinite(v) else round(float(v), digits) for v in np.asarray(values, dtype=np.float64)]


def score_summary(scores: np.ndarray, above: float) -> dict[str, Any]:
    """``{n, max, mean, argmax, n_above, above: [[token, score], ...]}`` for one detector's scores."""
    s = np.asarray(scores, dtype=np.float64)
    finite = np.isfinite(s)
    out: dict[str, Any] = {"n": int(s.size), "n_nan": int((~finite).sum())}
    if finite.any():
        f = np.where(finite, s, -np.inf)
        out.update(max=round(float(f.max()), 5), argmax=int(f.argmax()), mean=round(float(s[finite].mean()), 5))
    idx = np.nonzero(finite & (s > above))[0]
    out["above_threshold"] = None if not math.isfinite(above) else round(float(above), 5)
    out["n_above"] = int(idx.size)
    out["above"] = [[int(i), round(float(s[i]), 5)] for i in idx]
    return out


class AuditLog:
    """Append-only JSONL audit log.

    Args:
        path: the ``.jsonl`` file (parent directories are created).
        summary: store a per-detector summary and only the tokens above ``summary_above`` instead of
            every token's score.
        summary_above: ``"threshold"`` (each detector's monitor tier, default) or a number.
        include_text: also store the generated and returned text (the prompt is only hashed).
        fsync: ``os.fsync`` after every record (durable across power loss; slower).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        summary: bool = False,
        summary_above: str | float = "threshold",
        include_text: bool = True,
        fsync: bool = False,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.summary = summary
        self.summary_above = summary_above
        self.include_text = include_text
        self.fsync = fsync
        self._lock = threading.Lock()

    def write(self, record: Mapping[str, Any]) -> None:
        """Append one record (one line) and flush."""
        line = json.dumps(_clean(dict(record)), ensure_ascii=False, allow_nan=False)
        with self._lock:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
                f.flush()
                if self.fsync:
                    os.fsync(f.fileno())

    def records(self) -> Iterator[dict[str, Any]]:
        """Read the records back."""
        if not self.path.exists():
            return iter(())
        with open(self.path, encoding="utf-8") as f:
            lines = [ln for ln in f if ln.strip()]
        return iter([json.loads(ln) for ln in lines])

    def scores_field(self, scores: Mapping[str, np.ndarray], monitor: Mapping[str, float],
                     policy_scores: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
        """The ``scores`` entry of a record: full per-token lists (raw token scores, and the
        statistic the policy compared when given), or summaries of that statistic (the one the
        monitor thresholds refer to)."""
        if not self.summary:
            out: dict[str, Any] = {"per_token": {name: _round(s) for name, s in scores.items()}}
            if policy_scores is not None:
                out["policy_per_token"] = {name: _round(s) for name, s in policy_scores.items()}
            return out
        judged = policy_scores if policy_scores is not None else scores
        summ = {}
        for name, s in judged.items():
            above = monitor.get(name, math.inf) if self.summary_above == "threshold" else float(self.summary_above)
            summ[name] = score_summary(s, above)
        return {"summary": summ}


def build_record(
    *,
    log: AuditLog,
    started: float,
    model: Mapping[str, Any],
    detectors: Sequence[Mapping[str, Any]],
    policy: Mapping[str, Any],
    prompt_text: str,
    prompt_tokens: int,
    settings: Mapping[str, Any],
    row: int,
    scores: Mapping[str, np.ndarray],
    monitor_thresholds: Mapping[str, float],
    actions: Sequence[Mapping[str, Any]],
    policy_scores: Mapping[str, np.ndarray] | None = None,
    correctors: Sequence[Mapping[str, Any]],
    decisions: Sequence[Mapping[str, Any]],
    detector_errors: Sequence[Mapping[str, Any]],
    n_generated: int,
    finish_reason: str,
    blocked: bool,
    blocked_by: str | None,
    generated_text: str | None,
    output_text: str | None,
    error: BaseException | None,
) -> dict[str, Any]:
    """Assemble one audit record (see the module docstring for the fields)."""
    now = time.time()
    rec: dict[str, Any] = {
        "schema": AUDIT_SCHEMA,
        "coalign_version": library_version(),
        "time": datetime.fromtimestamp(started, tz=timezone.utc).isoformat(),
        "duration_s": round(now - started, 4),
        "model": dict(model),
        "detectors": [dict(d) for d in detectors],
        "policy": dict(policy),
        "prompt_sha256": sha256_text(prompt_text),
        "prompt_tokens": prompt_tokens,
        "row": row,
        "settings": dict(settings),
        "n_generated": n_generated,
        "finish_reason": finish_reason,
        "blocked": blocked,
        "blocked_by": blocked_by,
        "scores": log.scores_field(scores, monitor_thresholds, policy_scores),
        "actions": list(actions),
        "correctors": list(correctors),
        "human_decisions": list(decisions),
        "detector_errors": list(detector_errors),
        "error": None if error is None else {"type": type(error).__name__, "message": str(error)[:2000]},
    }
    if log.include_text:
        rec["generated_text"] = generated_text
        rec["output_text"] = output_text
    elif output_text is not None:
        rec["output_sha256"] = sha256_text(output_text)
    return rec
