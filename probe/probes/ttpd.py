"""TTPD: polarity-robust truth probe after "Truth is Universal" (Bürger et al. 2024)."""

from __future__ import annotations

import numpy as np

from .base import BaseProbe, ProbeInputError, check_groups
from .tags import ProbeTags


class TTPDProbe(BaseProbe):
    """Training of Truth and Polarity Direction, reduced to a single affine read-out.

    Model (paper, eq. 1): after centring, ``a = tau * t_G + tau * p * t_P + noise`` with
    ``tau = +1`` for ``classes_[1]`` and ``-1`` otherwise, and ``p = +1`` for affirmative,
    ``-1`` for negated statements. ``t_G`` (general truth direction) and ``t_P``
    (polarity-sensitive direction, whose contribution flips under negation) are solved
    jointly by OLS of the activations on ``[tau, tau * p]``. The probe direction is
    ``t_G / ||t_G||``; a 1-D logistic regression (Platt) on the *raw* projection gives the
    scale and intercept, so ``decision_function(X) == X @ coef_ + intercept_`` on
    uncentred activations.

    ``fit(X, y, polarity=None, groups=None)``:

    * ``polarity``: 1 = affirmative, 0 = negated statement (bool also accepted). Both values
      must occur. If None, falls back to a mass-mean direction (difference of the centred
      class means), i.e. the OLS with the ``tau`` column only.
    * ``groups``: dataset/topic id per row; activations are centred per group (the paper's
      per-dataset centring), else globally. Centring only affects the direction estimate.

    Labels: whichever class is ``classes_[1]`` is the positive one (for deception, false
    statements may be labelled 1); ``tau`` and hence ``t_G`` follow it, so the probe is
    correct for whatever y is given. The paper's full TTPD also feeds a projection on a
    polarity direction into the final classifier; that is not done here (1-D read-out).

    Fitted: ``t_G_`` [d], ``t_P_`` [d] (None in the fallback), ``coef_``, ``intercept_``,
    ``direction_``, ``classes_``.
    """

    probe_tags = ProbeTags(fit_uses=("polarity",), unpaired_negatives=False)  # without polarity: t_G alone

    def fit(self, X, y, polarity=None, groups=None):
        X, y01 = self._validate_fit(X, y)
        X = X.astype(np.float64, copy=False)
        if groups is not None:
            g = check_groups(groups, X.shape[0])
            _, inv = np.unique(g, return_inverse=True)
            counts = np.bincount(inv).astype(np.float64)
            means = np.zeros((counts.size, X.shape[1]))
            np.add.at(means, inv, X)
            Xc = X - (means / counts[:, None])[inv]
        else:
            Xc = X - X.mean(axis=0)
        tau = 2.0 * y01 - 1.0
        self.t_P_ = None
        if polarity is None:
            self.t_G_ = Xc[y01 == 1].mean(axis=0) - Xc[y01 == 0].mean(axis=0)
        else:
            pol = check_groups(polarity, X.shape[0], name="polarity")
            if pol.dtype == bool:
                pol = pol.astype(np.int64)
            if not np.isin(pol, [0, 1]).all():
                raise ProbeInputError("polarity must contain only 1 (affirmative) and 0 (negated)")
            if np.unique(pol).size < 2:
                raise ProbeInputError(
                    "polarity has only one value; TTPD needs both affirmative (1) and negated (0) "
                    "statements to separate t_G from t_P (or pass polarity=None for mass-mean)")
            p = 2.0 * pol - 1.0
            design = np.column_stack([tau, tau * p])
            T, *_ = np.linalg.lstsq(design, Xc, rcond=None)
            self.t_G_, self.t_P_ = T[0], T[1]
        self._set_from_direction(self.t_G_, X, y01)
        return self
