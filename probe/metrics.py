"""Detection metrics and control-set calibration for probe scores.

Conventions: ``y`` is binary with 1 = behaviour present (positive); ``scores`` are real,
higher = more positive; a sample is flagged when its score is *strictly above* the
threshold.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import binom, rankdata
from sklearn.metrics import roc_auc_score

from circuits.errors import InputError


def _scores(scores, name: str = "scores") -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise InputError(f"{name} must be 1-D; got shape {s.shape}")
    if s.size == 0:
        raise InputError(f"{name} is empty")
    if not np.isfinite(s).all():
        raise InputError(f"{name} contains NaN or inf")
    return s


def _labels_scores(y, scores, *, both: bool = True) -> tuple[np.ndarray, np.ndarray]:
    s = _scores(scores)
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != s.shape[0]:
        raise InputError(f"y and scores have inconsistent shapes: {y.shape} vs {s.shape}")
    if not np.isin(y, [0, 1]).all():
        raise InputError(f"y must be binary 0/1 (1 = positive); got values {np.unique(y)[:5].tolist()}")
    y = y.astype(np.int64)
    if both and np.unique(y).size < 2:
        raise InputError(f"y contains only one class ({int(y[0])}); need positives and negatives")
    return y, s


def auroc(y, scores) -> float:
    """Area under the ROC curve (ties count 1/2). Raises if y has only one class."""
    y, s = _labels_scores(y, scores)
    return float(roc_auc_score(y, s))


def accuracy(y, scores, threshold: float = 0.0) -> float:
    """Fraction correct when predicting positive for ``score > threshold``."""
    y, s = _labels_scores(y, scores, both=False)
    return float(((s > threshold).astype(np.int64) == y).mean())


def pair_accuracy(y, scores, groups) -> tuple[float, int]:
    """Within-pair accuracy: over every (positive, negative) pair that shares a group, the fraction
    in which the positive scores higher (ties count 1/2), and the number of such pairs.

    This is the A/B accuracy of CAA and RepE: it judges each contrast pair on its own, so an offset
    that lifts both answers of one context does not count against it, as it does in the AUROC.
    Returns ``(nan, 0)`` when no group holds both classes (e.g. a statements file)."""
    y, s = _labels_scores(y, scores, both=False)
    g = np.asarray(groups, dtype=object)
    if g.shape != y.shape:
        raise InputError(f"groups and scores have inconsistent shapes: {g.shape} vs {y.shape}")
    wins, n = 0.0, 0
    by_group: dict = {}
    for i, k in enumerate(g):
        if k is not None:
            by_group.setdefault(k, []).append(i)
    for idx in by_group.values():
        pos, neg = s[[i for i in idx if y[i] == 1]], s[[i for i in idx if y[i] == 0]]
        if pos.size and neg.size:
            diff = pos[:, None] - neg[None, :]
            wins += float((diff > 0).sum() + 0.5 * (diff == 0).sum())
            n += diff.size
    return (wins / n if n else float("nan")), n


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson interval of a proportion k/n (nan, nan for n = 0)."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (round(max(0.0, c - h), 4), round(min(1.0, c + h), 4))


def fpr_at_threshold(negative_scores, threshold: float) -> float:
    """Fraction of negative (control) scores strictly above ``threshold``."""
    return float((_scores(negative_scores, "negative_scores") > threshold).mean())


def running_mean_peak(token_scores, warmup: int = 1) -> float:
    """Largest running mean of ``token_scores`` from token ``warmup`` on (the whole mean when the
    sequence is shorter): what a streaming monitor acting on the mean-so-far would peak at."""
    s = np.asarray(token_scores, dtype=np.float64).reshape(-1)
    if s.size == 0:
        raise InputError("running_mean_peak needs at least one token score")
    if warmup < 1:
        raise InputError(f"warmup must be >= 1, got {warmup}")
    m = np.cumsum(s) / np.arange(1, s.size + 1)
    return float(m[min(warmup, s.size) - 1:].max())


def threshold_at_fpr(negative_scores, fpr: float = 0.01, confidence: float | None = 0.95) -> float:
    """Threshold from a benign control set such that at most ``fpr`` of controls exceed it.

    The threshold is the (k+1)-th largest control score, so at most ``k`` controls are
    strictly above it (fewer when scores tie at the threshold: ties never count as above).

    * ``confidence=None``: ``k = floor(fpr * n)``, the plain empirical quantile (in-sample
      FPR <= fpr; e.g. n=100, fpr=0.01 -> 1 control above).
    * ``confidence=c`` (default 0.95): conservative for *fresh* data from the same
      distribution. Under exchangeability the true exceedance rate of the (k+1)-th largest
      of n is Beta(k+1, n-k), i.e. ``P(true FPR > fpr) = BinomCDF(k; n, fpr)``; k is the
      largest value <= floor(fpr * n) with that probability <= 1 - c. When no k qualifies
      (small n, e.g. n=100 at fpr=0.01) k = 0: the threshold is the maximum control score,
      and the guarantee is only the empirical one (0 controls above).
    """
    s = _scores(negative_scores, "negative_scores")
    if not 0.0 <= fpr < 1.0:
        raise InputError(f"fpr must be in [0, 1); got {fpr}")
    n = s.size
    k_max = math.floor(fpr * n + 1e-9)
    if confidence is None or k_max == 0:
        k = k_max
    else:
        if not 0.0 < confidence < 1.0:
            raise InputError(f"confidence must be in (0, 1) or None; got {confidence}")
        ok = np.flatnonzero(binom.cdf(np.arange(k_max + 1), n, fpr) <= 1.0 - confidence)
        k = int(ok[-1]) if ok.size else 0
    return float(np.sort(s)[::-1][k])


def recall_at_fpr(y, scores, fpr: float = 0.01) -> float:
    """Recall (positives strictly above) at the in-sample threshold where FPR on negatives
    <= ``fpr`` (``threshold_at_fpr(negatives, fpr, confidence=None)``)."""
    y, s = _labels_scores(y, scores)
    t = threshold_at_fpr(s[y == 0], fpr, confidence=None)
    return float((s[y == 1] > t).mean())


def calibration_report(y, scores, threshold: float) -> dict:
    """AUROC and the operating point at ``threshold`` (flag = score > threshold)."""
    y, s = _labels_scores(y, scores)
    return {
        "auroc": auroc(y, s),
        "accuracy": accuracy(y, s, threshold),
        "recall_at_threshold": float((s[y == 1] > threshold).mean()),
        "fpr_at_threshold": fpr_at_threshold(s[y == 0], threshold),
        "n": int(y.size),
        "n_positive": int(y.sum()),
    }


def bootstrap_auroc_ci(
    y, scores, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float]:
    """Percentile ``1 - alpha`` CI of the AUROC by stratified bootstrap (positives and
    negatives resampled separately, so every replicate has both classes)."""
    y, s = _labels_scores(y, scores)
    if n_boot < 1 or not 0.0 < alpha < 1.0:
        raise InputError(f"need n_boot >= 1 and alpha in (0, 1); got {n_boot}, {alpha}")
    pos, neg = s[y == 1], s[y == 0]
    n1, n0 = pos.size, neg.size
    rng = np.random.default_rng(seed)
    out = np.empty(n_boot)
    chunk = max(1, 2_000_000 // (n1 + n0))
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        sample = np.concatenate(
            [pos[rng.integers(0, n1, (b, n1))], neg[rng.integers(0, n0, (b, n0))]], axis=1
        )
        ranks = rankdata(sample, axis=1)  # average ranks: ties count 1/2
        out[start : start + b] = (ranks[:, :n1].sum(axis=1) - n1 * (n1 + 1) / 2) / (n1 * n0)
    low, high = np.quantile(out, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)
