"""Mass-mean probe (Marks & Tegmark 2023) and its covariance-adjusted (Fisher LDA) variant."""

from __future__ import annotations

from numbers import Real

import numpy as np
import scipy.linalg

from .base import BaseProbe, ProbeInputError, small_lapack


class MassMeanProbe(BaseProbe):
    """Direction = difference of class means (``mu_1 - mu_0``).

    With ``covariance_adjusted=True`` the direction is ``Sigma_w^{-1} (mu_1 - mu_0)``,
    the Fisher LDA direction, where ``Sigma_w`` is the pooled within-class covariance
    (each class centred on its own mean), shrunk towards a scaled identity:

    * ``shrinkage="auto"``: Ledoit-Wolf shrinkage intensity (default),
    * a float in [0, 1]: ``(1 - s) * S + s * trace(S) / d * I``,
    * ``None``: no shrinkage (least-squares solve; singular S falls back to lstsq).

    ``shrinkage`` is ignored when ``covariance_adjusted=False``. Scale and intercept come
    from a 1-D Platt scaling of the training projections, so ``decision_function`` is a
    calibrated log-odds and ``decision_function(X) == X @ coef_ + intercept_``.

    Fitted: ``coef_``, ``intercept_``, ``direction_``, ``classes_``, ``mean_diff_`` [d]
    and ``shrinkage_`` (the intensity used; None without covariance adjustment).
    """

    def __init__(self, covariance_adjusted=False, shrinkage="auto"):
        self.covariance_adjusted = covariance_adjusted
        self.shrinkage = shrinkage

    def fit(self, X, y):
        X, y01 = self._validate_fit(X, y)
        X = X.astype(np.float64, copy=False)
        pos, neg = X[y01 == 1], X[y01 == 0]
        mu1, mu0 = pos.mean(axis=0), neg.mean(axis=0)
        delta = mu1 - mu0
        self.mean_diff_ = delta
        self.shrinkage_ = None
        w = delta
        if self.covariance_adjusted:
            w = self._lda_direction(np.concatenate([pos - mu1, neg - mu0]), delta)
        self._set_from_direction(w, X, y01)
        return self

    def _lda_direction(self, Xc: np.ndarray, delta: np.ndarray) -> np.ndarray:
        s = self.shrinkage
        d = Xc.shape[1]
        auto = isinstance(s, str) and s == "auto"
        if not (auto or s is None or (isinstance(s, Real) and not isinstance(s, bool) and 0.0 <= s <= 1.0)):
            raise ProbeInputError(f"shrinkage must be 'auto', None or a float in [0, 1]; got {s!r}")
        n = Xc.shape[0]
        cov = Xc.T @ Xc / n
        mu = np.trace(cov) / d
        if auto:  # Ledoit-Wolf intensity, same formula as sklearn.covariance.ledoit_wolf
            lw_delta = ((cov**2).sum() - 2 * mu * np.trace(cov) + d * mu**2) / d
            lw_beta = ((np.einsum("ij,ij->i", Xc, Xc) ** 2).sum() / n - (cov**2).sum()) / (d * n)
            s = 0.0 if lw_delta == 0 else min(lw_beta, lw_delta) / lw_delta
        self.shrinkage_ = float(s or 0.0)
        if s:
            cov = (1.0 - s) * cov
            cov[np.diag_indices(d)] += s * mu
        with small_lapack():
            try:
                return scipy.linalg.solve(cov, delta, assume_a="pos")
            except np.linalg.LinAlgError:  # singular (s == 0 with rank-deficient data)
                return np.linalg.lstsq(cov, delta, rcond=None)[0]
