"""Contrast-Consistent Search (Burns et al. 2022): an unsupervised probe on contrast pairs."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.utils import check_random_state

from .base import BaseProbe, ProbeInputError, check_groups, pair_rows
from .tags import ProbeTags


class CCSProbe(BaseProbe):
    """CCS probe ``p(x) = sigmoid(w·x + b)`` trained without labels on contrast pairs.

    ``fit(X, y=None, *, groups, contrast=None)``:

    * ``groups`` (required): pair ids; every group holds exactly two rows, the two halves of
      a contrast pair (e.g. the same question answered "Yes" and "No").
    * ``contrast``: 0/1 per row saying which half (prompt template, e.g. answer "Yes" vs
      "No") the row is; each pair needs one of each. Pass it whenever rows come from two
      templates: the per-half normalisation below is what stops CCS from simply reading the
      template. If None, the two rows of each pair are assigned to halves *at random*
      (``random_state``), which is right when pairs are e.g. (honest, deceptive) completions
      listed in a fixed order: halves that coincide with the label would have the label
      signal removed by the per-half normalisation (a warning is raised if y shows that).
    * ``y`` (optional): per-row labels, used **only to orient the sign** (CCS is
      sign-ambiguous: ``p`` and ``1 - p`` have the same loss). With y, the sign is chosen so
      rows labelled ``classes_[1]`` score higher on average; without y the sign is whatever
      the optimisation found and ``classes_`` is ``[0, 1]``.

    Training follows the paper: each half is normalised separately (centred on its own mean
    and, with ``var_normalize``, divided by its own per-feature std) so the probe cannot
    read the answer token itself; the loss is
    ``mean((p(x0) - (1 - p(x1)))^2) + mean(min(p(x0), p(x1))^2)`` (consistency + confidence),
    minimised full-batch with AdamW (``lr``, ``weight_decay``) for ``n_epochs`` steps from
    ``n_tries`` random inits (trained together, independently); the lowest loss wins.

    Predict-time normalisation: a single row has no known half, so the read-out uses the
    *pooled* training normalisation: centre at the mean of all training rows (midpoint of the
    two half means) and scale by the pooled within-half std ``sqrt((sd0^2 + sd1^2) / 2)``.
    That is folded into ``coef_``/``intercept_`` so ``decision_function(X) == X @ coef_ +
    intercept_`` on raw rows. The decision is the CCS logit itself: no Platt scaling (that
    would need labels), so ``predict_proba`` is CCS's own credence.

    Fitted: ``coef_``, ``intercept_``, ``direction_``, ``classes_``, ``loss_`` (best final
    loss), ``losses_`` [n_tries], ``sign_flipped_`` (True if y flipped the found sign).
    """

    probe_tags = ProbeTags(fit_uses=("groups",), requires=("groups",), unpaired_negatives=False)

    def __init__(self, n_epochs=1000, lr=1e-3, n_tries=10, weight_decay=0.01, var_normalize=True,
                 random_state=0):
        self.n_epochs = n_epochs
        self.lr = lr
        self.n_tries = n_tries
        self.weight_decay = weight_decay
        self.var_normalize = var_normalize
        self.random_state = random_state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = False
        return tags

    def fit(self, X, y=None, *, groups=None, contrast=None):
        X, y01 = self._validate_fit(X, y, y_required=False)
        if y01 is None:
            self.classes_ = np.array([0, 1])
        if groups is None:
            raise ProbeInputError(
                "CCSProbe needs contrast pairs: pass groups=<pair id per row> (two rows per group)")
        g = check_groups(groups, X.shape[0])
        rng = check_random_state(self.random_state)
        if contrast is None:
            _, first_idx, inv = np.unique(g, return_index=True, return_inverse=True)
            first = first_idx[inv] == np.arange(g.shape[0])
            half0 = first ^ (rng.random_sample(first_idx.size) < 0.5)[inv]
        else:
            c = check_groups(contrast, X.shape[0], name="contrast")
            if not np.isin(c, [0, 1]).all():
                raise ProbeInputError("contrast must contain only 0/1 (which half of its pair a row is)")
            half0 = c == 0
        i0, i1 = pair_rows(g, half0, what="contrast-0")
        if y01 is not None and np.unique(y01[i0]).size == 1 and np.unique(y01[i1]).size == 1:
            warnings.warn("CCSProbe: each contrast half holds a single label, so the per-half "
                          "normalisation removes the label signal; contrast should mark the prompt "
                          "template, not the label (or pass contrast=None for random halves)",
                          UserWarning, stacklevel=2)
        X = X.astype(np.float64, copy=False)
        X0, X1 = X[i0], X[i1]
        mu0, mu1 = X0.mean(axis=0), X1.mean(axis=0)
        if self.var_normalize:
            sd0, sd1 = X0.std(axis=0), X1.std(axis=0)
            sd0[sd0 < 1e-12], sd1[sd1 < 1e-12] = 1.0, 1.0
        else:
            sd0 = sd1 = np.ones(X.shape[1])
        w, b = self._train((X0 - mu0) / sd0, (X1 - mu1) / sd1, rng)
        sd_pool = np.sqrt((sd0**2 + sd1**2) / 2.0)
        coef = w / sd_pool
        intercept = b - float(coef @ ((mu0 + mu1) / 2.0))
        self.sign_flipped_ = False
        if y01 is not None:
            s = X @ coef
            if s[y01 == 1].mean() < s[y01 == 0].mean():
                coef, intercept, self.sign_flipped_ = -coef, -intercept, True
        self._set_affine(coef, intercept)
        return self

    def _train(self, Z0: np.ndarray, Z1: np.ndarray, rng) -> tuple[np.ndarray, float]:
        if int(self.n_tries) < 1 or int(self.n_epochs) < 1:
            raise ProbeInputError(f"n_tries and n_epochs must be >= 1; got {self.n_tries}, {self.n_epochs}")
        d, T = Z0.shape[1], int(self.n_tries)
        gen = torch.Generator().manual_seed(int(rng.randint(2**31 - 1)))
        bound = 1.0 / np.sqrt(d)  # nn.Linear's default init, one column per try
        W = ((torch.rand(d, T, generator=gen, dtype=torch.float32) * 2 - 1) * bound).requires_grad_()
        B = ((torch.rand(T, generator=gen, dtype=torch.float32) * 2 - 1) * bound).requires_grad_()
        a0 = torch.from_numpy(Z0.astype(np.float32))
        a1 = torch.from_numpy(Z1.astype(np.float32))
        opt = torch.optim.AdamW([W, B], lr=self.lr, weight_decay=self.weight_decay)

        def losses():
            p0, p1 = torch.sigmoid(a0 @ W + B), torch.sigmoid(a1 @ W + B)
            return ((p0 - (1 - p1)) ** 2).mean(0) + (torch.minimum(p0, p1) ** 2).mean(0)

        # Thousands of tiny steps: one intra-op thread is fastest, and multi-threaded torch on
        # busy cores was measured ~50x slower. Process-global, so restored afterwards.
        n_threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for _ in range(int(self.n_epochs)):
                opt.zero_grad()
                losses().sum().backward()  # tries are independent: Adam(W) is elementwise
                opt.step()
        finally:
            torch.set_num_threads(n_threads)
        with torch.no_grad():
            final = losses().numpy()
        best = int(np.argmin(final))
        self.losses_, self.loss_ = final.astype(np.float64), float(final[best])
        return W.detach()[:, best].numpy().astype(np.float64), float(B.detach()[best])
