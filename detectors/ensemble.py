"""Combining detectors into one: a weighted sum of their standardised scores, folded into a single
linear read-out and calibrated again.

Two detectors trained on different data often read different things (for deception on SmolLM2:
"the response was produced under an instruction to deceive" versus "the response conceals what
the speaker knows"; see ``benchmarks/deception_training_data.py``). Their raw scores live on
unrelated scales, so each is standardised on the benign control set first:
``z_i = (s_i - mean_i) / std_i``. The combination ``sum_i w_i z_i`` is still linear in the
activations, so it becomes an ordinary :class:`~detectors.detector.Detector` (one row per hook)
that a Guard scores inside its forward pass like any other.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from circuits import HookedModel
from circuits.errors import InputError
from circuits.inputs import Item
from detectors.calibration import control_summary
from detectors.kinds import MEAN_SELECTIONS, DetectorLike, detector_kind
from probe.datasets import LabelledDataset
from probe.trainer import calibrate_threshold


def combine_detectors(
    detectors: Sequence[DetectorLike],
    model: HookedModel,
    weights: Sequence[float] | None = None,
    name: str | None = None,
    fpr: float | None = None,
    confidence: float | None = 0.95,
    control: Sequence[str | os.PathLike] | Sequence[Item] | LabelledDataset | None = None,
    n_control: int = 200,
    cache_dir: str | os.PathLike | None = None,
    stream_warmup: int = 4,
) -> DetectorLike:
    """One calibrated detector scoring ``sum_i weights[i] * z_i``, each ``z_i`` standardised on the control set.

    Args:
        detectors: two or more linear detectors for ``model`` with the same token selection
            (prompt-conditioned detectors cannot be folded: their read-out changes per prompt).
        weights: one non-negative weight per detector (normalised to sum 1); default equal.
        name: the new detector's name; default the parts' names joined by ``"+"`` (or
            ``"<name>_mixture"`` when they share one name).
        fpr: target false-positive rate for the new threshold; default the first detector's.
        confidence, control, n_control, stream_warmup: as in :func:`detectors.training.train_detector`
            (the same shipped benign chats by default, so standardisation and threshold use them).

    Returns:
        A :class:`Detector` with ``probe_kind="ensemble"``; ``metrics["components"]`` records each
        part's id, name, weight and control mean/std.

    Example:
        >>> both = Detector.combine([instructed_det, concealment_det], model, weights=[0.7, 0.3])
        >>> both.score(model, chats)
    """
    from detectors.control import control_dataset, default_cache_dir

    dets = list(detectors)
    _check_parts(dets, model)
    w = _normalised_weights(weights, len(dets))
    fpr = dets[0].fpr if fpr is None else float(fpr)
    if not 0.0 < fpr < 1.0:
        raise InputError(f"fpr must be in (0, 1), got {fpr} (give fpr= when the first detector has none)")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    ctrl = control_dataset(model, control, n_control, cache)
    acts_dir = str(cache / "acts")
    raw = [d.score(model, ctrl.items, cache_dir=acts_dir) for d in dets]
    means = [float(s.mean()) for s in raw]
    stds = [float(s.std()) for s in raw]
    for d, sd in zip(dets, stds):
        if not sd > 0:
            raise InputError(f"detector {d.name!r} gives the same score to every control item; it cannot be standardised")

    hooks = list(dict.fromkeys(h for d in dets for h in d.hooks))
    weight = np.zeros((len(hooks), model.d_model), dtype=np.float64)
    bias = 0.0
    for d, wi, mu, sd in zip(dets, w, means, stds):
        for k, h in enumerate(d.hooks):
            weight[hooks.index(h)] += (wi / sd) * d.weight[k].double().numpy()
        bias += wi * (d.bias - mu) / sd
    combined = detector_kind("linear_detector")(
        behaviour=dets[0].behaviour if len({d.behaviour for d in dets}) == 1 else "+".join(d.behaviour for d in dets),
        hooks=hooks, weight=weight.astype(np.float32), bias=bias, threshold=0.0, fpr=fpr, select=dets[0].select,
        model_id=model.model_id, model_fingerprint=model.fingerprint, d_model=model.d_model, probe_kind="ensemble",
        data_hash=_combined_hash(dets, w), name=name or _default_name(dets),
    )
    # calibrate on the folded read-out itself, so float32 rounding cannot shift the rate
    ctrl_scores = combined.score(model, ctrl.items, cache_dir=acts_dir)
    combined.threshold = calibrate_threshold(ctrl_scores, fpr, confidence)
    combined.metrics = {
        "components": [
            {"id": d.id, "name": d.name, "behaviour": d.behaviour, "hooks": list(d.hooks), "weight": wi,
             "control_mean": mu, "control_std": sd}
            for d, wi, mu, sd in zip(dets, w, means, stds)
        ],
        "control_fpr": float(np.mean(ctrl_scores > combined.threshold)),
        "n_control": len(ctrl_scores),
        "control_summary": control_summary(ctrl_scores),
        "threshold_confidence": confidence,
    }
    if combined.select in MEAN_SELECTIONS:
        try:
            combined.calibrate_stream(model, ctrl.items, warmup=stream_warmup, cache_dir=acts_dir, confidence=confidence)
        except InputError as e:
            warnings.warn(f"no stream calibration for {combined.name!r} ({e}); a Guard will judge it token by token",
                          RuntimeWarning, stacklevel=2)
    return combined


def _check_parts(dets: list[DetectorLike], model: HookedModel) -> None:

    if len(dets) < 2:
        raise InputError(f"combining needs at least two detectors, got {len(dets)}")
    for d in dets:
        if not isinstance(d, detector_kind("linear_detector")):
            raise InputError(f"expected Detector objects, got {type(d).__name__}")
        if isinstance(d, detector_kind("conditional_detector")):
            raise InputError(f"detector {d.name!r} is prompt-conditioned (its read-out changes with every prompt) "
                             "and cannot be folded into one linear read-out")
        d.check_model(model)
    selects = {d.select for d in dets}
    if len(selects) > 1:
        raise InputError(f"detectors read different token selections {sorted(selects)}; "
                         "a sum of their scores would mix per-item statistics")


def _default_name(dets: list[DetectorLike]) -> str:
    names = list(dict.fromkeys(d.name for d in dets))
    return f"{names[0]}_mixture" if len(names) == 1 else "+".join(names)


def _normalised_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    if weights is None:
        return [1.0 / n] * n
    w = [float(x) for x in weights]
    if len(w) != n:
        raise InputError(f"got {len(w)} weights for {n} detectors")
    if any(not np.isfinite(x) or x < 0 for x in w) or sum(w) <= 0:
        raise InputError(f"weights must be finite, non-negative and not all zero, got {w}")
    return [x / sum(w) for x in w]


def _combined_hash(dets: list[DetectorLike], w: list[float]) -> str:
    key = json.dumps([[d.data_hash, d.id, x] for d, x in zip(dets, w)])
    return hashlib.sha256(key.encode()).hexdigest()
