"""Conditional (bilinear) probe: the response read-out depends on the prompt's state.

Some behaviours are a relation between the context and the answer, not a property of the
answer alone: an answer is sycophantic when it sides with the view the *user* stated. A linear
probe on the response cannot compute that agreement unless the model already does; measured on
SmolLM2 it stays near 0.70 AUROC on CAA sycophancy. This probe scores

    s(p, r) = a(p)^T W b(r) + u . b(r) + c,     a = whiten(PCA_k(p)),  b = whiten(PCA_k(r))

with ``p`` the prompt's last-token activation and ``r`` the response activation, fitted by L2
logistic regression on the k*k interaction features. For a fixed prompt it is linear in ``r``
(:meth:`ConditionalProbe.readout`), so a guard computes the prompt's read-out once at prefill
and scores every generated token with one dot product, like any linear detector.
"""

from __future__ import annotations

import einops
import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression

from .base import BaseProbe, ProbeInputError
from .tags import ProbeTags


class ConditionalProbe(BaseProbe):
    """Bilinear probe on ``X = [prompt_acts | response_acts]`` (``[n, 2*d]``).

    Parameters
    ----------
    n_components : int
        PCA dimensions kept for each side (the interaction has ``n_components**2`` weights).
    C : float
        Inverse L2 strength of the logistic fit.
    max_iter : int
        lbfgs iteration cap.

    Fitted attributes: ``pca_p_``, ``pca_r_`` (sklearn PCA), ``scale_p_``, ``scale_r_``,
    ``W_`` [k, k], ``u_`` [k], ``c_``, ``classes_``, ``n_features_in_``.
    """

    probe_tags = ProbeTags(readout="bilinear")

    def __init__(self, n_components=96, C=0.1, max_iter=3000):
        self.n_components = n_components
        self.C = C
        self.max_iter = max_iter

    def _halves(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if X.shape[1] % 2:
            raise ProbeInputError(f"ConditionalProbe expects [prompt | response] features of even width, got {X.shape[1]}")
        d = X.shape[1] // 2
        return X[:, :d].astype(np.float64), X[:, d:].astype(np.float64)

    def _sides(self, P: np.ndarray, R: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.pca_p_.transform(P) / self.scale_p_, self.pca_r_.transform(R) / self.scale_r_

    @staticmethod
    def _features(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        # every prompt-feature x response-feature product, flattened row-major as W is indexed
        return np.hstack([einops.einsum(a, b, "n i, n j -> n i j").reshape(len(a), -1), b])

    def fit(self, X, y):
        X, y01 = self._validate_fit(X, y)
        P, R = self._halves(X)
        k = int(min(self.n_components, len(X) - 1, P.shape[1]))
        self.pca_p_, self.pca_r_ = PCA(k, random_state=0).fit(P), PCA(k, random_state=0).fit(R)
        self.scale_p_ = self.pca_p_.transform(P).std(0) + 1e-6
        self.scale_r_ = self.pca_r_.transform(R).std(0) + 1e-6
        a, b = self._sides(P, R)
        lr = LogisticRegression(C=self.C, max_iter=self.max_iter).fit(self._features(a, b), y01)
        w = lr.coef_[0]
        self.W_, self.u_, self.c_ = w[: k * k].reshape(k, k), w[k * k :], float(lr.intercept_[0])
        return self

    def decision_function(self, X) -> np.ndarray:
        X = self._check_X(X, reset=False)
        a, b = self._sides(*self._halves(X))
        return np.einsum("ni,ij,nj->n", a, self.W_, b) + b @ self.u_ + self.c_

    def readout(self, prompt_acts) -> tuple[np.ndarray, np.ndarray]:
        """Per-prompt linear read-out: ``(w [n, d], bias [n])`` with ``s = r @ w[i] + bias[i]``."""
        P = np.atleast_2d(np.asarray(prompt_acts, dtype=np.float64))
        a = self.pca_p_.transform(P) / self.scale_p_
        g = (a @ self.W_ + self.u_) / self.scale_r_  # [n, k], in whitened-PCA units of r
        w = g @ self.pca_r_.components_  # back to activation space
        return w, self.c_ - w @ self.pca_r_.mean_
