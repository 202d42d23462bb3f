"""Shared machinery for coalign's linear probes: input validation, orientation, Platt scaling.

Every single-layer probe ends up as an *affine* read-out on raw activations::

    decision_function(X) == X @ coef_ + intercept_            (coef_: float64 [d])

so that downstream code can fold it into one ``w·x + b`` inside a forward hook.
``direction_`` is ``coef_ / ||coef_||`` as float32 (larger projection = ``classes_[1]``),
``predict_proba`` is ``sigmoid(decision_function)``. Probes whose raw score is not a
log-odds (mass-mean, LAT, TTPD) get a 1-D Platt scaling fitted on the training scores.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.special import expit, log_expit
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_array, check_is_fitted, column_or_1d, validate_data
from threadpoolctl import threadpool_limits

from circuits.errors import InputError

from .tags import ProbeTags, with_probe_tags

#: inverse L2 strength of the 1-D Platt fit on standardised scores (weak; only stops
#: the slope from diverging on separable data)
PLATT_C = 100.0


def small_lapack():
    """Context: run d x d factorisations (eigh, Cholesky solves) on one BLAS thread.

    For d ~ 576 one thread takes milliseconds, while multi-threaded OpenBLAS LAPACK on
    oversubscribed cores (other processes, a model forward) was measured 10-100x slower.
    """
    return threadpool_limits(limits=1, user_api="blas")


class ProbeInputError(InputError):
    """Bad input to a probe (shape, emptiness, NaN/inf, labels, feature count, pairing)."""


def as_float_array(X, name: str = "X", *, allow_nd: bool = False) -> np.ndarray:
    """Dense float32/float64 array (float32 kept, everything else -> float64); no shape checks."""
    if sp.issparse(X):
        raise TypeError(f"{name} is a sparse matrix; probes need dense activations ({name}.toarray())")
    if X is None:
        raise ProbeInputError(f"{name} is None; expected an array [n_samples, n_features]")
    return check_array(X, dtype=[np.float64, np.float32], ensure_2d=False, allow_nd=True,
                       ensure_all_finite=False, ensure_min_samples=0, ensure_min_features=0,
                       input_name=name)


def check_finite_2d(X: np.ndarray, name: str = "X") -> None:
    """Raise :class:`ProbeInputError` unless X is a non-empty, finite 2-D array."""
    if X.ndim != 2:
        raise ProbeInputError(
            f"{name} must be 2-D [n_samples, n_features]; got a {X.ndim}-D array of shape "
            f"{X.shape}. Reshape your data: x.reshape(1, -1) for a single sample")
    if X.shape[0] == 0:
        raise ProbeInputError(f"{name} is empty: 0 samples (shape={X.shape})")
    if X.shape[1] == 0:
        raise ProbeInputError(
            f"{name} has 0 feature(s) (shape={X.shape}) while a minimum of 1 is required.")
    bad = ~np.isfinite(X)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        kind = "NaN" if np.isnan(X[bad]).any() else "inf"
        raise ProbeInputError(
            f"{name} contains NaN or inf values ({kind} first seen in row {rows[0]}; "
            f"{rows.size} bad rows); probes need finite activations")


def check_groups(groups, n: int, name: str = "groups") -> np.ndarray:
    """1-D array of group ids with one entry per row of X."""
    g = np.asarray(groups)
    if g.ndim != 1 or g.shape[0] != n:
        raise ProbeInputError(f"{name} must be 1-D with one entry per row of X ({n}); got shape {g.shape}")
    return g


def pair_rows(groups: np.ndarray, first: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (a, b) of each group's two rows, where ``first[a]`` is True, ``first[b]`` False.

    Every group must hold exactly two rows, one with ``first`` True and one False; the error
    names the first offending group. Pairs come out in order of first appearance.
    """
    uniq, first_idx, inv, counts = np.unique(groups, return_index=True, return_inverse=True,
                                             return_counts=True)
    n_first = np.bincount(inv, weights=first.astype(float), minlength=uniq.size)
    bad = np.flatnonzero((counts != 2) | (n_first != 1))
    if bad.size:
        g = bad[np.argmin(first_idx[bad])]
        raise ProbeInputError(
            f"group {uniq[g].tolist()!r} has {counts[g]} rows ({int(n_first[g])} {what}); every group must "
            f"pair exactly one {what} row with one other row")
    order = np.argsort(first_idx, kind="stable")
    a = np.empty(uniq.size, dtype=np.intp)
    b = np.empty(uniq.size, dtype=np.intp)
    rows = np.arange(groups.shape[0])
    a[inv[first]] = rows[first]
    b[inv[~first]] = rows[~first]
    return a[order], b[order]


def platt(scores: np.ndarray, y01: np.ndarray) -> tuple[float, float]:
    """1-D Platt scaling: (a, b) such that sigmoid(a * score + b) ~ P(y = 1 | score)."""
    s = np.asarray(scores, dtype=np.float64)
    m, sd = s.mean(), s.std()
    sd = sd if sd > 1e-12 * max(1.0, abs(m)) else 1.0
    lr = LogisticRegression(C=PLATT_C).fit(((s - m) / sd)[:, None], y01)
    a = float(lr.coef_[0, 0]) / sd
    return a, float(lr.intercept_[0]) - a * m


class BaseProbe(ClassifierMixin, BaseEstimator):
    """Binary linear probe. Subclasses implement ``fit`` with the helpers below and declare what it
    needs in ``probe_tags`` (see :mod:`probe.probes.tags`)."""

    probe_tags = ProbeTags()

    # ---- validation -------------------------------------------------------------------
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        return with_probe_tags(tags, type(self).probe_tags)

    def _check_X(self, X, *, reset: bool) -> np.ndarray:
        if not reset:
            check_is_fitted(self, "classes_")
        Xa = as_float_array(X)
        check_finite_2d(Xa)
        if not reset:
            expected = self.n_features_in_
            if Xa.shape[1] != expected:
                raise ProbeInputError(
                    f"X has {Xa.shape[1]} features, but {type(self).__name__} is expecting "
                    f"{expected} features as input (expected {expected} features, got {Xa.shape[1]})")
        # bookkeeping only (n_features_in_, feature_names_in_); everything was checked above
        validate_data(self, X, reset=reset, dtype=[np.float64, np.float32])
        return Xa

    def _check_y(self, y, n: int, *, required: bool = True) -> np.ndarray | None:
        """Validate binary labels; sets ``classes_``. Returns y as 0/1 (1 = classes_[1])."""
        if y is None:
            if required:
                raise ProbeInputError(
                    f"{type(self).__name__} requires y to be passed, but the target y is None "
                    "(binary labels, 1 = behaviour present)")
            return None
        y = column_or_1d(np.asarray(y), warn=True)
        if y.shape[0] != n:
            raise ProbeInputError(
                f"X and y have inconsistent numbers of samples: X has {n} rows, y has {y.shape[0]}")
        if y.dtype.kind in "fc" and not np.isfinite(y).all():
            raise ProbeInputError("y contains NaN or inf; labels must be two finite classes")
        check_classification_targets(y)
        classes = np.unique(y)
        if classes.size < 2:
            raise ProbeInputError(
                f"y contains only one class ({classes[0]!r}); a probe needs both classes "
                "(positive and negative examples) to fit")
        y_type = type_of_target(y, input_name="y", raise_unknown=True)
        if y_type != "binary":
            raise ProbeInputError(
                f"Only binary classification is supported. The type of the target is {y_type} "
                f"(classes {classes.tolist()})")
        self.classes_ = classes
        return (y == classes[1]).astype(np.int64)

    def _validate_fit(self, X, y, *, y_required: bool = True):
        Xa = self._check_X(X, reset=True)
        return Xa, self._check_y(y, Xa.shape[0], required=y_required)

    # ---- learned read-out -------------------------------------------------------------
    def _set_affine(self, coef, intercept) -> None:
        coef = np.asarray(coef, dtype=np.float64).ravel()
        self.coef_ = coef
        self.intercept_ = float(intercept)
        norm = np.linalg.norm(coef)
        self.direction_ = (coef / norm if norm > 0 else coef).astype(np.float32)

    def _set_from_direction(self, w, X: np.ndarray, y01: np.ndarray) -> None:
        """Orient ``w`` so that positives project higher, then Platt-scale it into coef_/intercept_."""
        w = np.asarray(w, dtype=np.float64).ravel()
        w = w / (np.linalg.norm(w) or 1.0)
        s = X @ w
        if s[y01 == 1].mean() < s[y01 == 0].mean():
            w, s = -w, -s
        a, b = platt(s, y01)
        if a <= 0:  # degenerate (classes indistinguishable along w): keep the orientation
            a = 1e-12
        self._set_affine(a * w, b)

    # ---- inference --------------------------------------------------------------------
    def decision_function(self, X) -> np.ndarray:
        """Log-odds of ``classes_[1]``: exactly ``X @ coef_ + intercept_``."""
        X = self._check_X(X, reset=False)
        return X.astype(np.float64, copy=False) @ self.coef_ + self.intercept_

    def predict_proba(self, X) -> np.ndarray:
        """[n, 2]: ``sigmoid(-decision)``, ``sigmoid(decision)`` for ``classes_[0]``, ``classes_[1]``."""
        d = self.decision_function(X)
        return np.column_stack([expit(-d), expit(d)])

    def predict_log_proba(self, X) -> np.ndarray:
        d = self.decision_function(X)
        return np.column_stack([log_expit(-d), log_expit(d)])

    def predict(self, X) -> np.ndarray:
        d = self.decision_function(X)
        return self.classes_[(d > 0).astype(np.intp)]
