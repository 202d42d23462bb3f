"""RepE Linear Artificial Tomography (Zou et al. 2023): PCA of activation differences."""

from __future__ import annotations

from numbers import Integral

import numpy as np
from sklearn.utils import check_random_state

from .base import BaseProbe, ProbeInputError, check_groups, pair_rows, small_lapack
from .tags import ProbeTags


class LATProbe(BaseProbe):
    """Direction = first principal component of (positive - negative) activation differences.

    ``fit(X, y, groups=None)``:

    * ``groups`` given: pair ids, each group holding exactly one positive and one negative
      row (contrast pairs); differences are taken positive - negative within each pair.
      ``paired`` is then ignored.
    * ``groups=None, paired=True``: positives and negatives are shuffled (``random_state``)
      and paired at random; ``min(n_pos, n_neg)`` differences.
    * ``groups=None, paired=False``: RepE's unsupervised variant: differences of random
      pairs of *any* two rows; labels are used only to orient the component.

    The PCA is *uncentred* (SVD of the raw differences), which is what RepE's random
    flipping of pair order followed by centring amounts to, and keeps the mean difference
    (the concept direction) in the spectrum. The first component is oriented so positives
    project higher and Platt-scaled into ``coef_``/``intercept_``.

    Fitted: ``components_`` [n_components, d] (first row oriented), ``explained_variance_ratio_``,
    ``coef_``, ``intercept_``, ``direction_``, ``classes_``.
    """

    probe_tags = ProbeTags(fit_uses=("groups",), unpaired_negatives=False)  # without pairs: random differences

    def __init__(self, n_components=1, paired=True, random_state=0):
        self.n_components = n_components
        self.paired = paired
        self.random_state = random_state

    def fit(self, X, y, groups=None):
        X, y01 = self._validate_fit(X, y)
        X = X.astype(np.float64, copy=False)
        rng = check_random_state(self.random_state)
        if groups is not None:
            g = check_groups(groups, X.shape[0])
            pos, neg = pair_rows(g, y01 == 1, what="positive")
        elif self.paired:
            pos = rng.permutation(np.flatnonzero(y01 == 1))
            neg = rng.permutation(np.flatnonzero(y01 == 0))
            m = min(pos.size, neg.size)
            pos, neg = pos[:m], neg[:m]
        else:
            perm = rng.permutation(X.shape[0])
            m = X.shape[0] // 2
            if m == 0:
                raise ProbeInputError("LATProbe needs at least 2 rows to form a difference")
            pos, neg = perm[:m], perm[m : 2 * m]
        D = X[pos] - X[neg]
        k = self.n_components
        if not isinstance(k, Integral) or isinstance(k, bool) or not 1 <= k <= min(D.shape):
            raise ProbeInputError(
                f"n_components must be an int in [1, {min(D.shape)}] (pairs x features); got {k!r}")
        gram = D.T @ D
        with small_lapack():  # uncentred PCA; eigh of [d, d] is cheaper than an SVD of D
            evals, evecs = np.linalg.eigh(gram)
        order = np.argsort(evals)[::-1][:k]
        vt = evecs[:, order].T
        self.explained_variance_ratio_ = evals[order] / max(float(evals.sum()), 1e-300)
        self._set_from_direction(vt[0], X, y01)
        comps = vt[:k].copy()
        if comps[0] @ self.coef_ < 0:
            comps[0] = -comps[0]
        self.components_ = comps
        return self
