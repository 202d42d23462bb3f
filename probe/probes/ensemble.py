"""Multi-layer ensemble of single-layer probes."""

from __future__ import annotations

from numbers import Integral

import numpy as np
from sklearn.base import clone
from sklearn.utils.validation import check_is_fitted

from .base import BaseProbe, ProbeInputError, as_float_array, platt
from .logistic import LogisticProbe
from .tags import ProbeTags


class EnsembleProbe(BaseProbe):
    """One clone of ``base_estimator`` per layer; decision = Platt(mean of standardised scores).

    Input: ``X`` of shape [n, k, d] (k layers), or [n, k*d] with ``n_blocks=k`` (layers
    concatenated along features, layer 0 first). Extra fit params (``groups=``...) are
    passed to every layer's ``fit``. ``base_estimator=None`` means ``LogisticProbe()``.

    Aggregation (``aggregate="mean"``, the only one implemented): each layer's training
    decision scores are standardised (``z_k = (s_k - m_k) / sd_k``), averaged, and a 1-D Platt
    scaling ``a * mean_k z_k + c`` gives the log-odds. With affine base probes this is itself
    affine, folded into

        decision_function(X) == sum_k weights_[k] * (X[:, k] @ coefs_[k]) + intercept_
                             == X.reshape(n, -1) @ coef_ + intercept_

    ``coefs_`` [k, d] and ``intercepts_`` [k] are the layers' own ``coef_``/``intercept_``,
    ``weights_`` [k] = ``a / (k * sd_k)``, ``coef_`` [k*d] the flattened weighted coefs,
    ``direction_`` = ``coef_ / ||coef_||`` in the flattened space and ``directions_`` [k, d] the
    per-layer directions. Fitted layer probes are in ``estimators_``.
    """

    probe_tags = ProbeTags()  # its base estimator (logistic by default) takes no extra fit arguments

    def __init__(self, base_estimator=None, aggregate="mean", n_blocks=None):
        self.base_estimator = base_estimator
        self.aggregate = aggregate
        self.n_blocks = n_blocks

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        return tags

    def _blocks(self, X, *, fitting: bool) -> np.ndarray:
        """Validate and return X as [n, k, d]."""
        Xa = as_float_array(X)
        if Xa.ndim == 3:
            k = Xa.shape[1]
        elif Xa.ndim == 2:
            k = self.n_blocks if fitting else self.n_blocks_
            if k is None:
                raise ProbeInputError("2-D X needs n_blocks=<number of layers>; or pass X as [n, k, d]")
            if not isinstance(k, Integral) or k < 1 or Xa.shape[1] % k:
                raise ProbeInputError(f"n_blocks={k!r} does not divide X's {Xa.shape[1]} features")
        else:
            raise ProbeInputError(f"X must be [n, k, d] or [n, k*d]; got shape {Xa.shape}. "
                                  "Reshape your data: x.reshape(1, -1) for a single sample")
        flat = Xa.reshape(Xa.shape[0], -1)
        self._check_X(flat, reset=fitting)
        X3 = flat.reshape(flat.shape[0], k, -1)
        if not fitting and X3.shape[1:] != (self.n_blocks_, self.n_features_per_block_):
            raise ProbeInputError(f"expected X of shape [n, {self.n_blocks_}, "
                                  f"{self.n_features_per_block_}], got {list(Xa.shape)}")
        return X3

    def fit(self, X, y, **fit_params):
        if self.aggregate != "mean":
            raise ProbeInputError(f"aggregate must be 'mean'; got {self.aggregate!r}")
        X3 = self._blocks(X, fitting=True)
        y01 = self._check_y(y, X3.shape[0])
        self.n_blocks_, self.n_features_per_block_ = X3.shape[1], X3.shape[2]
        base = LogisticProbe() if self.base_estimator is None else self.base_estimator
        self.estimators_ = [clone(base).fit(X3[:, k], y01, **fit_params) for k in range(self.n_blocks_)]
        S = np.column_stack([e.decision_function(X3[:, k]) for k, e in enumerate(self.estimators_)])
        self.score_means_ = S.mean(axis=0)
        sd = S.std(axis=0)
        self.score_scales_ = np.where(sd > 1e-12, sd, 1.0)
        z = ((S - self.score_means_) / self.score_scales_).mean(axis=1)
        a, c = platt(z, y01)
        self.weights_ = a / (self.n_blocks_ * self.score_scales_)
        if all(hasattr(e, "coef_") for e in self.estimators_):
            self.coefs_ = np.stack([np.asarray(e.coef_, np.float64) for e in self.estimators_])
            self.intercepts_ = np.array([float(e.intercept_) for e in self.estimators_])
            self.directions_ = np.stack([e.direction_ for e in self.estimators_])
            intercept = c + float(self.weights_ @ (self.intercepts_ - self.score_means_))
            self._set_affine((self.weights_[:, None] * self.coefs_).ravel(), intercept)
        else:
            self.offset_ = c - float(self.weights_ @ self.score_means_)
        return self

    def decision_function(self, X) -> np.ndarray:
        check_is_fitted(self, "estimators_")
        X3 = self._blocks(X, fitting=False)
        if hasattr(self, "coef_"):
            return X3.reshape(X3.shape[0], -1).astype(np.float64, copy=False) @ self.coef_ + self.intercept_
        S = np.column_stack([e.decision_function(X3[:, k]) for k, e in enumerate(self.estimators_)])
        return S @ self.weights_ + self.offset_
