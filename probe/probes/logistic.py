"""L2-regularised logistic-regression probe."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression

from .base import BaseProbe


class LogisticProbe(BaseProbe):
    """L2 logistic regression (sklearn ``LogisticRegression``, lbfgs) on activations.

    Parameters
    ----------
    C : float
        Inverse L2 strength (in standardised units when ``standardize``).
    fit_intercept : bool
        Fit a bias. With ``fit_intercept=False`` standardisation only *scales* the
        features (no centring), so the read-out stays linear through the origin
        (``intercept_ == 0``).
    standardize : bool
        Fit on features standardised with the training mean/std (constant features get
        std 1), then fold the scaling back: ``coef_ = w / std``,
        ``intercept_ = b - coef_ @ mean``, so ``decision_function(X) == X @ coef_ + intercept_``
        on raw activations.
    max_iter : int
        lbfgs iteration cap.

    Fitted attributes: ``coef_`` [d] float64, ``intercept_``, ``direction_`` (unit float32),
    ``classes_``, ``n_features_in_``, ``n_iter_``, ``mean_``/``scale_`` (None unless standardised).
    """

    def __init__(self, C=1.0, fit_intercept=True, standardize=True, max_iter=1000):
        self.C = C
        self.fit_intercept = fit_intercept
        self.standardize = standardize
        self.max_iter = max_iter

    def fit(self, X, y):
        X, y01 = self._validate_fit(X, y)
        X = X.astype(np.float64, copy=False)
        mean = scale = None
        Z = X
        if self.standardize:
            mean = X.mean(axis=0) if self.fit_intercept else np.zeros(X.shape[1])
            scale = np.sqrt(((X - mean) ** 2).mean(axis=0))  # std, or RMS without centring
            scale[scale < 1e-12] = 1.0
            Z = (X - mean) / scale
        lr = LogisticRegression(C=self.C, fit_intercept=self.fit_intercept, max_iter=self.max_iter,
                                solver="lbfgs")
        lr.fit(Z, y01)
        coef = lr.coef_[0].astype(np.float64)
        intercept = float(lr.intercept_[0]) if self.fit_intercept else 0.0
        if self.standardize:
            coef = coef / scale
            intercept = intercept - float(coef @ mean)
        self._set_affine(coef, intercept)
        self.mean_, self.scale_ = mean, scale
        self.n_iter_ = int(np.max(lr.n_iter_))
        return self
