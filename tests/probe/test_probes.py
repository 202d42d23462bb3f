"""Probe estimators on synthetic activations with planted directions (no model needed)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit
from sklearn.base import clone
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator

from probe.probes import (
    PROBES,
    CCSProbe,
    EnsembleProbe,
    LATProbe,
    LogisticProbe,
    MassMeanProbe,
    ProbeInputError,
    TTPDProbe,
    make_probe,
)

D = 64


def cos(a, b) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def planted():
    """Anisotropic Gaussian (eigenvalues 0.1..10, random basis); y = 1[x·v > 0].

    The class-mean difference is ∝ Σv, not v, so plain mass-mean is pulled off v and the
    covariance adjustment (LDA) is needed to get it back.
    """
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.standard_normal((D, D)))
    A = Q * np.sqrt(np.logspace(-1, 1, D))
    v = rng.standard_normal(D)
    v /= np.linalg.norm(v)

    def draw(n):
        X = rng.standard_normal((n, D)) @ A.T
        return X.astype(np.float32), (X @ v > 0).astype(int)

    X, y = draw(2000)
    Xt, yt = draw(2000)
    return dict(X=X, y=y, Xt=Xt, yt=yt, v=v, Sigma=A @ A.T)


@pytest.fixture(scope="module")
def contrast_pairs():
    """RepE-style pairs sharing an anisotropic context: pos = c + 3v + e, neg = c - 3v + e'."""
    rng = np.random.default_rng(1)
    Q, _ = np.linalg.qr(rng.standard_normal((D, D)))
    A = Q * np.sqrt(np.logspace(-1, 1, D))
    v = rng.standard_normal(D)
    v /= np.linalg.norm(v)
    n = 1000
    c = rng.standard_normal((n, D)) @ A.T
    pos = c + 3 * v + 0.3 * rng.standard_normal((n, D))
    neg = c - 3 * v + 0.3 * rng.standard_normal((n, D))
    X = np.concatenate([pos, neg]).astype(np.float32)
    y = np.r_[np.ones(n), np.zeros(n)].astype(int)
    g = np.r_[np.arange(n), np.arange(n)]
    perm = rng.permutation(2 * n)
    X, y, g = X[perm], y[perm], g[perm]
    train = g < 700
    return dict(X=X[train], y=y[train], g=g[train], Xt=X[~train], yt=y[~train], v=v)


def ccs_pairs(rng, v, yes, n=500, m=2.0, d=32):
    """Burns-style contrast pairs: half 1 = "yes" answer, half 0 = "no"; truth t = ±1 moves
    the "yes" half along +m t v and the "no" half along -m t v; y = 1 for the true half."""
    c = rng.standard_normal((n, d))
    t = rng.integers(0, 2, n) * 2 - 1
    x1 = c + yes / 2 + m * t[:, None] * v + 0.5 * rng.standard_normal((n, d))
    x0 = c - yes / 2 - m * t[:, None] * v + 0.5 * rng.standard_normal((n, d))
    X = np.empty((2 * n, d), np.float32)
    X[0::2], X[1::2] = x0, x1
    y = np.empty(2 * n, int)
    y[0::2], y[1::2] = t == -1, t == 1
    return X, y, np.repeat(np.arange(n), 2), np.tile([0, 1], n)


@pytest.fixture(scope="module")
def ccs_data():
    rng = np.random.default_rng(2)
    d = 32
    v = rng.standard_normal(d)
    v /= np.linalg.norm(v)
    yes = rng.standard_normal(d)
    yes *= 3 / np.linalg.norm(yes)
    train = ccs_pairs(rng, v, yes)
    test = ccs_pairs(rng, v, yes)
    return dict(train=train, test=test, v=v)


@pytest.fixture(scope="module")
def statements():
    """Truth-is-Universal setup: a = topic + tau t_G + tau p t_P + noise, |t_P| = 2|t_G|."""
    rng = np.random.default_rng(3)
    tG = rng.standard_normal(D)
    tG *= 3 / np.linalg.norm(tG)
    tP = rng.standard_normal(D)
    tP -= (tP @ tG) / (tG @ tG) * tG
    tP *= 6 / np.linalg.norm(tP)
    topics = 0.5 * rng.standard_normal((4, D))

    def draw(n, affirmative: bool):
        truth = rng.integers(0, 2, n)
        tau, p = 2 * truth - 1, (1 if affirmative else -1)
        topic = rng.integers(0, 4, n)
        X = topics[topic] + tau[:, None] * tG + (tau * p)[:, None] * tP + rng.standard_normal((n, D))
        return X.astype(np.float32), truth, topic

    return dict(aff=draw(1000, True), neg=draw(1000, False), aff_t=draw(1000, True),
                neg_t=draw(1000, False), tG=tG, tP=tP)


# ---- recovery of planted directions ---------------------------------------------------


def test_logistic_recovers_planted_direction(planted):
    p = LogisticProbe().fit(planted["X"], planted["y"])
    assert cos(p.direction_, planted["v"]) > 0.95
    assert roc_auc_score(planted["yt"], p.decision_function(planted["Xt"])) > 0.98


def test_mass_mean_needs_covariance_adjustment_on_anisotropic_noise(planted):
    X, y, Xt, yt, v, S = (planted[k] for k in ("X", "y", "Xt", "yt", "v", "Sigma"))
    plain = MassMeanProbe().fit(X, y)
    assert cos(plain.direction_, S @ v) > 0.95  # it finds the mean difference, ∝ Σv
    assert cos(plain.direction_, v) < 0.8
    for shrinkage in ("auto", 0.05, None):
        lda = MassMeanProbe(covariance_adjusted=True, shrinkage=shrinkage).fit(X, y)
        assert cos(lda.direction_, v) > 0.95, shrinkage
        assert roc_auc_score(yt, lda.decision_function(Xt)) > 0.98
    assert 0.0 <= lda.shrinkage_ <= 1.0
    assert roc_auc_score(yt, plain.decision_function(Xt)) < 0.95
    # Platt step: training probabilities average to the base rate
    assert abs(plain.predict_proba(X)[:, 1].mean() - y.mean()) < 0.01


def test_lat_on_contrast_pairs(contrast_pairs):
    cp = contrast_pairs
    p = LATProbe(n_components=3).fit(cp["X"], cp["y"], groups=cp["g"])
    assert cos(p.direction_, cp["v"]) > 0.99
    assert roc_auc_score(cp["yt"], p.decision_function(cp["Xt"])) > 0.98
    assert p.components_.shape == (3, D) and np.all(np.diff(p.explained_variance_ratio_) <= 0)
    assert cos(p.components_[0], p.direction_) > 0.999
    # without pair ids: random positive/negative pairing still finds it here
    q = LATProbe(random_state=0).fit(cp["X"], cp["y"])
    assert cos(q.direction_, cp["v"]) > 0.95


def test_lat_rejects_bad_pairs(contrast_pairs):
    cp = contrast_pairs
    g = cp["g"].copy()
    first_pos = np.flatnonzero(cp["y"] == 1)[0]
    g[first_pos] = 10_000  # lone row in its own group
    with pytest.raises(ProbeInputError, match="group 10000 has 1 rows"):
        LATProbe().fit(cp["X"], cp["y"], groups=g)
    with pytest.raises(ProbeInputError, match="groups must be 1-D with one entry per row"):
        LATProbe().fit(cp["X"], cp["y"], groups=cp["g"][:-1])


def test_ttpd_generalises_across_negation_where_logistic_fails(statements):
    st = statements
    (Xa, ya, ga), (Xn, yn, gn) = st["aff"], st["neg"]
    (Xta, yta, _), (Xtn, ytn, _) = st["aff_t"], st["neg_t"]

    lr = LogisticProbe().fit(Xa, ya)  # affirmative statements only
    assert roc_auc_score(yta, lr.decision_function(Xta)) > 0.99
    assert roc_auc_score(ytn, lr.decision_function(Xtn)) < 0.5  # polarity flips it

    X, y = np.concatenate([Xa, Xn]), np.r_[ya, yn]
    pol, groups = np.r_[np.ones(len(ya), int), np.zeros(len(yn), int)], np.r_[ga, gn]
    t = TTPDProbe().fit(X, y, polarity=pol, groups=groups)
    assert cos(t.direction_, st["tG"]) > 0.98
    assert cos(t.t_P_, st["tP"]) > 0.98
    assert roc_auc_score(ytn, t.decision_function(Xtn)) > 0.95
    assert roc_auc_score(yta, t.decision_function(Xta)) > 0.95

    # the caller may call "false" the positive class (deception = 1): everything flips
    f = TTPDProbe().fit(X, 1 - y, polarity=pol, groups=groups)
    assert cos(f.direction_, -st["tG"]) > 0.98
    assert roc_auc_score(1 - ytn, f.decision_function(Xtn)) > 0.95

    fallback = TTPDProbe().fit(X, y)  # no polarity: mass-mean of centred activations
    assert fallback.t_P_ is None and cos(fallback.direction_, st["tG"]) > 0.95

    with pytest.raises(ProbeInputError, match="polarity has only one value"):
        TTPDProbe().fit(Xa, ya, polarity=np.ones(len(ya), int))


def test_ccs_recovers_direction_unsupervised_up_to_sign(ccs_data):
    X, y, g, c = ccs_data["train"]
    Xt, yt, _, _ = ccs_data["test"]
    v = ccs_data["v"]
    p = CCSProbe(n_tries=5).fit(X, groups=g, contrast=c)  # no labels at all
    assert abs(cos(p.direction_, v)) > 0.9
    assert max(roc_auc_score(yt, s) for s in (p.decision_function(Xt), -p.decision_function(Xt))) > 0.97
    assert list(p.classes_) == [0, 1] and p.losses_.shape == (5,)

    # y only orients the sign: same |direction|, now pointing at the positive class
    q = CCSProbe(n_tries=5).fit(X, y, groups=g, contrast=c)
    assert cos(q.direction_, v) > 0.9
    assert abs(cos(q.direction_, p.direction_)) > 0.999
    assert roc_auc_score(yt, q.decision_function(Xt)) > 0.97
    r = CCSProbe(n_tries=5).fit(X, 1 - y, groups=g, contrast=c)
    assert cos(r.direction_, q.direction_) < -0.999

    # rows in any order: pairs are found from groups
    perm = np.random.default_rng(0).permutation(len(y))
    s = CCSProbe(n_tries=5).fit(X[perm], y[perm], groups=g[perm], contrast=c[perm])
    assert cos(s.direction_, v) > 0.9


def test_ccs_pairs_listed_in_label_order():
    """(true, false) pairs in a fixed order, as a dataset of honest/deceptive completions has
    them: with contrast omitted the halves are randomised and CCS works; using the label order
    as the contrast would let the per-half normalisation erase the signal (and warns)."""
    rng = np.random.default_rng(4)
    d, n = 32, 500
    v = rng.standard_normal(d)
    v /= np.linalg.norm(v)
    ctx = 2 * rng.standard_normal((n, d))
    X = np.empty((2 * n, d), np.float32)
    X[0::2] = ctx + 1.5 * v + 0.3 * rng.standard_normal((n, d))
    X[1::2] = ctx - 1.5 * v + 0.3 * rng.standard_normal((n, d))
    y, g = np.tile([1, 0], n), np.repeat(np.arange(n), 2)
    assert abs(cos(CCSProbe(n_tries=5).fit(X, groups=g).direction_, v)) > 0.9
    assert cos(CCSProbe(n_tries=5).fit(X, y, groups=g).direction_, v) > 0.9
    with pytest.warns(UserWarning, match="each contrast half holds a single label"):
        bad = CCSProbe(n_tries=2, n_epochs=200).fit(X, y, groups=g, contrast=np.tile([0, 1], n))
    assert abs(cos(bad.direction_, v)) < 0.5


def test_ccs_requires_pairs(ccs_data):
    X, y, g, _ = ccs_data["train"]
    with pytest.raises(ProbeInputError, match="needs contrast pairs"):
        CCSProbe().fit(X, y)
    g3 = g.copy()
    g3[2] = g3[0]  # group 0 now has three rows
    with pytest.raises(ProbeInputError, match="group 0 has 3 rows"):
        CCSProbe(n_epochs=1).fit(X, groups=g3)


def test_ensemble_over_layers(planted):
    """Three "layers" = independent noisy views of the same activations: averaging the
    standardised layer scores beats every single layer."""
    rng = np.random.default_rng(5)
    X, y, Xt, yt = planted["X"], planted["y"], planted["Xt"], planted["yt"]

    def views(Z):
        return np.stack([Z + 0.5 * rng.standard_normal(Z.shape).astype(np.float32) for _ in range(3)], axis=1)

    X3, Xt3 = views(X), views(Xt)
    e = EnsembleProbe().fit(X3, y)
    assert len(e.estimators_) == 3 and e.coefs_.shape == (3, D)
    auc = roc_auc_score(yt, e.decision_function(Xt3))
    per_layer = [roc_auc_score(yt, est.decision_function(Xt3[:, k])) for k, est in enumerate(e.estimators_)]
    assert auc > 0.97 and auc > max(per_layer) + 0.01
    folded = sum(e.weights_[k] * (Xt3[:, k] @ e.coefs_[k]) for k in range(3)) + e.intercept_
    assert np.allclose(e.decision_function(Xt3), folded)
    assert np.allclose(e.decision_function(Xt3), Xt3.reshape(len(yt), -1) @ e.coef_ + e.intercept_)
    assert all(cos(d, planted["v"]) > 0.9 for d in e.directions_)
    # flat [n, k*d] input with n_blocks gives the same model
    f = EnsembleProbe(base_estimator=LogisticProbe(), n_blocks=3).fit(X3.reshape(len(y), -1), y)
    assert np.allclose(f.decision_function(Xt3.reshape(len(yt), -1)), e.decision_function(Xt3))
    with pytest.raises(ProbeInputError, match="expected X of shape"):
        e.decision_function(Xt3.reshape(len(yt), 6, D // 2))
    with pytest.raises(ProbeInputError, match="needs n_blocks"):
        EnsembleProbe().fit(X, y)


# ---- contracts shared by every probe ----------------------------------------------------


def fitted_probes(planted, contrast_pairs, ccs_data, statements):
    X, y = planted["X"], planted["y"]
    Xc, yc, gc, cc = ccs_data["train"]
    (Xa, ya, _), (Xn, yn, _) = statements["aff"], statements["neg"]
    pol = np.r_[np.ones(len(ya), int), np.zeros(len(yn), int)]
    return {
        "logistic": (LogisticProbe().fit(X, y), X),
        "logistic_noint": (LogisticProbe(fit_intercept=False).fit(X, y), X),
        "logistic_raw": (LogisticProbe(standardize=False).fit(X, y), X),
        "mass_mean": (MassMeanProbe().fit(X, y), X),
        "mass_mean_cov": (MassMeanProbe(covariance_adjusted=True).fit(X, y), X),
        "lat": (LATProbe().fit(contrast_pairs["X"], contrast_pairs["y"], groups=contrast_pairs["g"]),
                contrast_pairs["X"]),
        "ccs": (CCSProbe(n_tries=2, n_epochs=300).fit(Xc, yc, groups=gc, contrast=cc), Xc),
        "ttpd": (TTPDProbe().fit(np.r_[Xa, Xn], np.r_[ya, yn], polarity=pol), np.r_[Xa, Xn]),
    }


def test_affine_contract_and_outputs(planted, contrast_pairs, ccs_data, statements):
    for name, (p, X) in fitted_probes(planted, contrast_pairs, ccs_data, statements).items():
        dec = p.decision_function(X)
        assert np.allclose(dec, X @ p.coef_ + p.intercept_, rtol=1e-6, atol=1e-6), name
        assert p.coef_.shape == (X.shape[1],) and isinstance(p.intercept_, float), name
        assert p.direction_.dtype == np.float32 and np.isclose(np.linalg.norm(p.direction_), 1.0), name
        assert cos(p.direction_, p.coef_) > 0.9999, name  # larger projection = positive class
        proba = p.predict_proba(X)
        assert np.allclose(proba[:, 1], expit(dec)) and np.allclose(proba.sum(1), 1.0), name
        assert np.array_equal(p.predict(X), p.classes_[(dec > 0).astype(int)]), name
        if name == "logistic_noint":
            assert p.intercept_ == 0.0


def test_string_labels_positive_is_classes_1(planted):
    X, y, v = planted["X"], planted["y"], planted["v"]
    labels = np.where(y == 1, "yes", "no")  # classes_ = ["no", "yes"]
    for p in (LogisticProbe(), MassMeanProbe(covariance_adjusted=True), LATProbe(), TTPDProbe()):
        p.fit(X, labels)
        assert list(p.classes_) == ["no", "yes"]
        assert cos(p.direction_, v) > 0.3  # oriented towards "yes"
        assert set(p.predict(X[:50])) <= {"no", "yes"}
        assert p.score(X, labels) > 0.7  # LAT without pairs is weak on this data (see above)


# ---- sklearn compatibility --------------------------------------------------------------


def test_clone_gridsearch_pipeline(planted):
    X, y = planted["X"][:600], planted["y"][:600]
    p = LogisticProbe(C=0.3)
    c = clone(p)
    assert c.get_params() == p.get_params() and not hasattr(c, "coef_")
    gs = GridSearchCV(LogisticProbe(), {"C": [0.1, 1.0]}, cv=3).fit(X, y)
    assert gs.best_params_["C"] in (0.1, 1.0) and gs.best_score_ > 0.9
    pipe = make_pipeline(StandardScaler(), MassMeanProbe(covariance_adjusted=True)).fit(X, y)
    assert pipe.score(X, y) > 0.9
    e = clone(EnsembleProbe(base_estimator=MassMeanProbe()))
    assert isinstance(e.base_estimator, MassMeanProbe)


@pytest.mark.parametrize("est", [LogisticProbe(), MassMeanProbe(covariance_adjusted=True)], ids=repr)
def test_sklearn_check_estimator(est):
    # every applicable check must pass (on_fail raises); none is marked as an expected failure
    results = check_estimator(est, on_skip=None)
    skipped = {r["check_name"] for r in results if r["status"] == "skipped"}
    assert skipped <= {"check_array_api_input"}  # needs SCIPY_ARRAY_API=1 in the environment
    assert sum(r["status"] == "passed" for r in results) >= 50


def test_registry():
    assert set(PROBES) == {"logistic", "mass_mean", "mass_mean_cov", "lat", "ccs", "ttpd", "conditional"}
    assert make_probe("mass_mean_cov").covariance_adjusted is True
    assert make_probe("logistic", C=0.5).C == 0.5
    with pytest.raises(ValueError, match="unknown probe 'svm'.*valid names: ccs, conditional, lat, logistic"):
        make_probe("svm")


# ---- input validation ---------------------------------------------------------------------

SUPERVISED = [LogisticProbe, MassMeanProbe, LATProbe, TTPDProbe]


@pytest.mark.parametrize("cls", SUPERVISED, ids=lambda c: c.__name__)
def test_bad_inputs_raise_clear_errors(cls):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 8)).astype(np.float32)
    y = np.r_[np.zeros(20, int), np.ones(20, int)]
    with pytest.raises(ProbeInputError, match="only one class"):
        cls().fit(X, np.ones(40, int))
    with pytest.raises(ProbeInputError, match="X is empty"):
        cls().fit(np.empty((0, 8), np.float32), [])
    with pytest.raises(ProbeInputError, match="X has 40 rows, y has 39"):
        cls().fit(X, y[:-1])
    with pytest.raises(ProbeInputError, match="must be 2-D"):
        cls().fit(X[:, 0], y)
    Xnan = X.copy()
    Xnan[3, 2] = np.nan
    with pytest.raises(ProbeInputError, match="NaN or inf.*row 3"):
        cls().fit(Xnan, y)
    with pytest.raises(ProbeInputError, match="Only binary classification"):
        cls().fit(X, np.arange(40) % 3)
    p = cls().fit(X, y)
    with pytest.raises(ProbeInputError, match="expected 8 features, got 5"):
        p.predict(X[:, :5])
    with pytest.raises(ProbeInputError, match="NaN"):
        p.decision_function(Xnan)


def test_wrong_feature_count_message_at_model_size():
    rng = np.random.default_rng(0)
    p = LogisticProbe().fit(rng.standard_normal((50, 576)), np.arange(50) % 2)
    with pytest.raises(ValueError, match="expected 576 features, got 512"):
        p.decision_function(rng.standard_normal((3, 512)))


def test_conditional_probe_recovers_a_relation_linear_probes_cannot():
    """Label = agreement between a 'prompt' stance and a 'response' stance (an XOR of two signs)."""
    from probe.probes import ConditionalProbe, LogisticProbe
    from probe.metrics import auroc

    rng = np.random.default_rng(0)
    n, d = 3000, 12
    P, R = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    u, v = rng.normal(size=d), rng.normal(size=d)
    y = ((P @ u) * (R @ v) > 0).astype(int)
    X = np.hstack([P, R])
    tr, te = slice(0, 2000), slice(2000, None)
    cond = ConditionalProbe(n_components=d, C=1.0).fit(X[tr], y[tr])
    assert auroc(y[te], cond.decision_function(X[te])) > 0.9
    assert auroc(y[te], LogisticProbe().fit(X[tr], y[tr]).decision_function(X[te])) < 0.6
    # for a fixed prompt the score is linear in the response: the guard relies on this
    w, b = cond.readout(P[te])
    np.testing.assert_allclose((R[te] * w).sum(1) + b, cond.decision_function(X[te]), atol=1e-9)


def test_activation_set_append_keeps_pairs_apart():
    from probe.activation_set import ActivationSet

    a = ActivationSet({"h": np.ones((4, 2), np.float32)}, np.array([1, 0, 1, 0]), np.array([0, 0, 1, 1]), None, "last")
    b = ActivationSet({"h": np.zeros((2, 2), np.float32)}, np.array([0, 0]), None, None, "last")
    c = a.append(b)
    assert c.X["h"].shape == (6, 2) and c.y.tolist() == [1, 0, 1, 0, 0, 0]
    assert c.groups.tolist() == [0, 0, 1, 1, -1, -1] and c.polarity is None
    assert "groups" not in c.fit_params()  # unpaired rows switch pair-based fitting off
    assert a.append(a).groups.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    with pytest.raises(ValueError, match="hooks"):
        a.append(ActivationSet({"g": np.zeros((1, 2))}, np.array([0]), None, None, "last"))
