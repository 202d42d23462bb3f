"""A probe on SAE codes: k latents chosen on the training split, then an L1 logistic head.

Kantamneni et al. (2025) and AxBench found dense probes usually beat SAE-feature probes, above
all out of distribution; this estimator exists to measure that here beside the dense ones, on the
same splits (``benchmarks/sae_probe.py``).

``X`` is SAE codes ``[n, d_sae]`` (an item's codes pooled over its tokens: :func:`pooled_codes`).
Latents are ranked by the absolute standardised mean difference between the classes *on the
training rows only*; the head sees the ``k`` best.

Example:
    >>> codes = pooled_codes(model, sae, items)                 # [n, d_sae]
    >>> p = SAEFeatureProbe(k=16).fit(codes[train], y[train])
    >>> p.decision_function(codes[test])
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.utils.validation import check_is_fitted

from probe.probes.base import ProbeInputError, as_float_array, check_finite_2d

K_GRID = (1, 4, 16, 64)


class SAEFeatureProbe(ClassifierMixin, BaseEstimator):
    """Parameters: ``k`` latents kept; ``C`` inverse L1 strength (standardised units); ``max_iter``.

    Fitted: ``features_`` (latent ids, best first), ``coef_`` (on raw codes of those latents),
    ``intercept_``, ``classes_``, ``n_features_in_``, ``feature_scores_``.
    """

    def __init__(self, k: int = 16, C: float = 1.0, max_iter: int = 2000):
        self.k = k
        self.C = C
        self.max_iter = max_iter

    def fit(self, X: Any, y: Any) -> "SAEFeatureProbe":
        X = as_float_array(X).astype(np.float64, copy=False)
        check_finite_2d(X)
        y = np.asarray(y)
        if y.shape[0] != X.shape[0]:
            raise ProbeInputError(f"X has {X.shape[0]} rows but y has {y.shape[0]}")
        self.classes_ = np.unique(y)
        if len(self.classes_) != 2:
            raise ProbeInputError(f"SAEFeatureProbe needs two classes, got {len(self.classes_)}")
        if not 1 <= int(self.k) <= X.shape[1]:
            raise ProbeInputError(f"k={self.k} must be between 1 and the number of latents ({X.shape[1]})")
        y01 = (y == self.classes_[1]).astype(int)
        a, b = X[y01 == 1], X[y01 == 0]
        pooled = np.sqrt(0.5 * (a.var(0) + b.var(0))) + 1e-8
        score = np.abs(a.mean(0) - b.mean(0)) / pooled
        score[(X != 0).sum(0) == 0] = 0  # never active on the training rows: no evidence
        self.feature_scores_ = score
        self.features_ = np.argsort(-score, kind="stable")[: int(self.k)]
        Z = X[:, self.features_]
        self.mean_, self.scale_ = Z.mean(0), Z.std(0)
        self.scale_[self.scale_ < 1e-12] = 1.0
        lr = LogisticRegression(l1_ratio=1.0, solver="liblinear", C=self.C, max_iter=self.max_iter)  # L1
        lr.fit((Z - self.mean_) / self.scale_, y01)
        self.coef_ = lr.coef_[0] / self.scale_
        self.intercept_ = float(lr.intercept_[0] - self.coef_ @ self.mean_)
        self.n_features_in_ = X.shape[1]
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "coef_")
        X = as_float_array(X).astype(np.float64, copy=False)
        check_finite_2d(X)
        if X.shape[1] != self.n_features_in_:
            raise ProbeInputError(f"X has {X.shape[1]} latents, the probe was fitted on {self.n_features_in_}")
        return X[:, self.features_] @ self.coef_ + self.intercept_

    def predict_proba(self, X: Any) -> np.ndarray:
        p = 1 / (1 + np.exp(-self.decision_function(X)))
        return np.stack([1 - p, p], axis=1)

    def predict(self, X: Any) -> np.ndarray:
        return self.classes_[(self.decision_function(X) > 0).astype(int)]


def pooled_codes(model: Any, sae: Any, items: Sequence[Any], select: str = "response_each", batch_size: int = 16) -> np.ndarray:
    """Per item, SAE codes averaged over the tokens of ``select`` (``response_each`` / ``all_each``),
    position 0 excluded (outside the SAE's domain)."""
    import torch

    from circuits import capture

    acts = capture(model, items, sae.hook, select=select, batch_size=batch_size)
    X = torch.from_numpy(acts[sae.hook])
    codes = sae.encode(X).float().numpy()
    out = np.zeros((len(items), sae.d_sae), dtype=np.float64)
    for i in range(len(items)):
        rows = codes[acts.index == i]
        if select == "all_each":
            rows = rows[1:]
        if len(rows):
            out[i] = rows.mean(0)
    return out
