"""The SAE-feature probe: finds a planted latent, chooses latents on the training rows only, works
with sklearn's model selection, and pools codes over the judged tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GridSearchCV

from probe.probes.base import ProbeInputError
from probe.sae_probe import K_GRID, SAEFeatureProbe, pooled_codes


def _codes(n=400, d=256, planted=17, seed=0):
    rng = np.random.default_rng(seed)
    X = np.maximum(rng.normal(size=(n, d)) - 1.5, 0)  # sparse, non-negative like SAE codes
    y = rng.integers(0, 2, n)
    X[:, planted] = np.maximum(rng.normal(size=n) + 2.0 * y - 0.5, 0)
    return X, y


def test_finds_the_planted_latent_and_generalises():
    X, y = _codes()
    p = SAEFeatureProbe(k=1).fit(X[:300], y[:300])
    assert p.features_.tolist() == [17] and p.coef_[0] > 0
    assert roc_auc_score(y[300:], p.decision_function(X[300:])) > 0.85
    assert np.allclose(p.predict_proba(X[300:])[:, 1], 1 / (1 + np.exp(-p.decision_function(X[300:]))))


def test_latents_are_chosen_on_the_training_rows_only():
    X, y = _codes()
    X_leak = X.copy()
    X_leak[300:, 99] = 10.0 * y[300:]  # a latent that separates only the test rows
    p = SAEFeatureProbe(k=4).fit(X_leak[:300], y[:300])
    assert 99 not in p.features_ and 17 in p.features_


def test_sklearn_model_selection_over_k():
    X, y = _codes()
    gs = GridSearchCV(SAEFeatureProbe(), {"k": list(K_GRID)}, cv=3, scoring="roc_auc").fit(X, y)
    assert gs.best_params_["k"] in K_GRID and gs.best_score_ > 0.8
    assert clone(SAEFeatureProbe(k=4)).get_params()["k"] == 4


def test_bad_input():
    X, y = _codes(n=20, d=8, planted=3)
    with pytest.raises(ProbeInputError, match="k=64"):
        SAEFeatureProbe(k=64).fit(X, y)
    with pytest.raises(ProbeInputError, match="two classes"):
        SAEFeatureProbe(k=1).fit(X, np.zeros(20))
    p = SAEFeatureProbe(k=2).fit(X, y)
    with pytest.raises(ProbeInputError, match="latents"):
        p.decision_function(X[:, :4])


def test_pooled_codes_average_the_response_tokens(tmp_path):
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata
    from tiny import tiny_model

    from circuits import capture
    from circuits.sae import load_sae

    model = tiny_model()
    s = StandardSAE(StandardSAEConfig(d_in=16, d_sae=32, metadata=SAEMetadata(hook_name="blocks.1.hook_resid_post")))
    s.save_model(str(tmp_path / "s"))
    sae = load_sae(tmp_path / "s", model)
    items = [("is the sky blue", "yes the sky is blue"), ("hello", "hello world")]
    codes = pooled_codes(model, sae, items)
    acts = capture(model, items, sae.hook, select="response_each")
    for i in range(2):
        want = sae.encode(torch.from_numpy(acts[sae.hook][acts.index == i])).mean(0).numpy()
        assert np.allclose(codes[i], want, atol=1e-6)
