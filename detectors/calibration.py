"""Calibration that follows a detector to a new distribution.

A detector's threshold is set on benign control chats; on another source (role-play replies, short
factual answers, A/B letters) the benign scores can sit elsewhere, and a 1%-FPR threshold then fires on
most honest replies. Two tools:

- :func:`recalibrate` (``coalign calibrate DET --control FILE...``) re-sets the threshold (and the
  Guard's stream threshold) on the user's own benign rows, leaving the weights untouched;
- :func:`control_summary` is stored at every calibration, and :func:`drift_warning` compares a batch of
  scores with it: ``Detector.score`` warns when far more of a batch sits above the threshold than the
  calibrated FPR allows, or when the batch sits below nearly all of the control set, which is what a
  new form of text does.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from circuits import HookedModel
from detectors.control import control_dataset, default_cache_dir
from detectors.kinds import MEAN_SELECTIONS, DetectorLike
from probe.trainer import calibrate_threshold

# A batch is judged only from this many items: fewer say little about a distribution.
MIN_BATCH = 20
# Share of a batch above the threshold that is implausible for benign data at a 1-5% FPR.
FIRE_SHARE = 0.5


def control_summary(scores: np.ndarray) -> dict[str, float]:
    s = np.asarray(scores, dtype=np.float64)
    return {"n": int(s.size), "mean": float(s.mean()), "std": float(s.std()), "q01": float(np.quantile(s, 0.01)),
            "q50": float(np.median(s)), "q99": float(np.quantile(s, 0.99))}


def drift_warning(det: DetectorLike, scores: np.ndarray) -> str | None:
    """A one-line warning when ``scores`` (one batch) sit far from the detector's calibration set, else None."""
    summary = getattr(det, "metrics", {}).get("control_summary")
    s = np.asarray(scores, dtype=np.float64)
    s = s[np.isfinite(s)]
    if not summary or s.size < MIN_BATCH:
        return None
    fired = float(np.mean(s > det.threshold))
    if fired > FIRE_SHARE:
        return (f"detector {det.name!r}: {fired:.0%} of these {s.size} items score above its threshold, which was set "
                f"at {det.fpr:.0%} FPR on its control set (median {summary['q50']:+.2f}); if most of them are benign, "
                "this text differs from the calibration data: re-set the threshold on your own benign rows with "
                "`coalign calibrate`")
    if np.median(s) < summary["q01"]:
        return (f"detector {det.name!r}: these {s.size} items score below 99% of its control set (median "
                f"{np.median(s):+.2f} vs {summary['q50']:+.2f}); the text differs from the calibration data and the "
                "threshold may not mean the calibrated FPR here (see `coalign calibrate`)")
    return None


def recalibrate(det: DetectorLike, model: HookedModel, control: Sequence[str | os.PathLike] | Sequence[Any],
                fpr: float | None = None, confidence: float | None = 0.95, n_control: int = 200,
                cache_dir: str | os.PathLike | None = None, progress: bool = False) -> DetectorLike:
    """A copy of ``det`` with its threshold set on ``control`` (files whose label-0 rows are used, or chats);
    the read-out weights are untouched. Mean read-outs also get a new stream threshold for the Guard."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    ds = control_dataset(model, control, n_control, cache, progress=progress)
    scores = det.score(model, ds.items, cache_dir=str(cache / "acts"))
    new = copy.deepcopy(det)
    new.fpr = det.fpr if fpr is None else float(fpr)
    new.threshold = calibrate_threshold(scores, new.fpr, confidence)
    new.metrics = dict(det.metrics) | {
        "control_fpr": float(np.mean(scores > new.threshold)), "n_control": int(len(scores)),
        "threshold_confidence": confidence, "control_summary": control_summary(scores),
        "recalibrated_on": {"source": ds.name, "data_hash": ds.content_hash(), "previous_threshold": det.threshold},
    }
    if new.select in MEAN_SELECTIONS:
        new.calibrate_stream(model, ds.items, warmup=det.stream_warmup, cache_dir=str(cache / "acts"),
                             confidence=confidence)
    return new
