"""Fitting probes on activation sets: layer/method sweeps, folding into a linear read-out, calibration.

This is where every number of a detector is fitted; ``detectors`` only asks for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from circuits.errors import InputError
from probe.activation_set import ActivationSet
from probe.metrics import auroc, threshold_at_fpr
from probe.probes import make_probe, probe_tags


def fit_probe(method: str, X: np.ndarray, y: np.ndarray, fit_params: dict[str, Any] | None = None, **params: Any):
    """Fit ``make_probe(method, **params)``, passing the fit params its tags say it uses (``fit_uses``)."""
    probe = make_probe(method, **params)
    uses = probe_tags(probe).fit_uses
    missing = [k for k in probe_tags(probe).requires if k not in (fit_params or {})]
    if missing:
        raise InputError(f"probe {method!r} needs {', '.join(missing)} in its training data "
                         f"({'contrast pairs' if 'groups' in missing else 'statement polarity'}); this data has none")
    return probe.fit(X, y, **{k: v for k, v in (fit_params or {}).items() if k in uses})


def linear_readout(probe: Any) -> tuple[np.ndarray, float]:
    """``(weight [d], bias)`` with ``decision_function(X) == X @ weight + bias``."""
    if not hasattr(probe, "coef_"):
        raise InputError(f"{type(probe).__name__} has no single linear read-out (coef_/intercept_)")
    return np.asarray(probe.coef_, dtype=np.float64).reshape(-1), float(np.asarray(probe.intercept_).reshape(-1)[0])


@dataclass
class SweepResult:
    """Validation AUROC of every (method, hook) pair, and the best one."""

    scores: dict[tuple[str, str], float] = field(default_factory=dict)

    @property
    def best(self) -> tuple[str, str]:
        return max(self.scores, key=lambda k: self.scores[k])

    def table(self) -> list[dict[str, Any]]:
        return [{"method": m, "hook": h, "val_auroc": round(s, 4)} for (m, h), s in sorted(self.scores.items())]


def sweep(
    train: ActivationSet, val: ActivationSet, methods: Sequence[str], hooks: Sequence[str] | None = None, **params: Any
) -> SweepResult:
    """Fit each method at each hook on ``train`` and score AUROC on ``val``."""
    res = SweepResult()
    for hook in hooks or train.hooks:
        for method in methods:
            p = fit_probe(method, train.X[hook], train.y, train.fit_params(), **params)
            res.scores[(method, hook)] = auroc(val.y, p.decision_function(val.X[hook]))
    return res


def split_indices(y: np.ndarray, groups: np.ndarray | None, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train/validation indices keeping contrast pairs together and both classes on both sides."""
    rng = np.random.default_rng(seed)
    units = groups if groups is not None and (groups >= 0).all() else np.arange(len(y))
    uniq = rng.permutation(np.unique(units))
    n_val = max(1, int(round(len(uniq) * test_fraction)))
    val_mask = np.isin(units, uniq[:n_val])
    tr, va = np.flatnonzero(~val_mask), np.flatnonzero(val_mask)
    if len(np.unique(y[tr])) < 2 or len(np.unique(y[va])) < 2:
        raise InputError(f"cannot split {len(y)} examples into train/validation with both classes on each side; add data")
    return tr, va


def calibrate_threshold(control_scores: np.ndarray, fpr: float, confidence: float | None = 0.95) -> float:
    """Threshold above which at most ``fpr`` of the benign control scores fall (with ``confidence``
    for fresh data; None: the plain empirical quantile; see :func:`probe.metrics.threshold_at_fpr`)."""
    if len(control_scores) == 0:
        raise InputError("calibration needs a non-empty benign control set")
    return float(threshold_at_fpr(np.asarray(control_scores), fpr, confidence))
