"""Detection metrics and control-set threshold calibration."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from probe.metrics import (
    accuracy,
    auroc,
    bootstrap_auroc_ci,
    calibration_report,
    fpr_at_threshold,
    recall_at_fpr,
    threshold_at_fpr,
)


def test_auroc_matches_sklearn_including_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.standard_normal(500) + y, 1)  # rounding makes ties
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s))
    assert auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)


def test_auroc_one_class_and_bad_inputs():
    with pytest.raises(ValueError, match="only one class"):
        auroc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="inconsistent shapes"):
        auroc([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="binary 0/1"):
        auroc([0, 1, 2], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="NaN or inf"):
        auroc([0, 1], [0.1, np.nan])


def test_threshold_at_fpr_holds_on_fresh_controls():
    rng = np.random.default_rng(0)
    controls = rng.standard_normal(10_000)
    t = threshold_at_fpr(controls, fpr=0.01)
    assert (controls > t).sum() <= 100
    fresh = rng.standard_normal(200_000)
    assert 0.005 <= fpr_at_threshold(fresh, t) <= 0.01
    # the plain empirical quantile sits right at the target, so fresh data exceed it ~half the time
    t_emp = threshold_at_fpr(controls, fpr=0.01, confidence=None)
    assert (controls > t_emp).sum() == 100 and t_emp < t


def test_threshold_at_fpr_small_n_and_ties():
    s = np.arange(100.0)
    assert (s > threshold_at_fpr(s, 0.01, confidence=None)).sum() == 1
    assert (s > threshold_at_fpr(s, 0.01)).sum() == 0  # too few controls for the 95% bound: max
    assert threshold_at_fpr(s, 0.0) == 99.0
    ties = np.r_[np.zeros(95), np.ones(5)]
    t = threshold_at_fpr(ties, 0.03, confidence=None)  # 3 allowed above, but 5 tie at the top
    assert t == 1.0 and fpr_at_threshold(ties, t) == 0.0
    with pytest.raises(ValueError, match="fpr must be in"):
        threshold_at_fpr(s, 1.0)
    with pytest.raises(ValueError, match="empty"):
        threshold_at_fpr([], 0.01)


def test_recall_at_fpr_hand_example():
    neg = np.arange(100.0)  # fpr=0.01 -> threshold 98: only the control at 99 is above
    pos = np.array([50.0, 98.0, 98.5, 99.5, 120.0])  # 98.0 is not strictly above
    y = np.r_[np.zeros(100, int), np.ones(5, int)]
    assert recall_at_fpr(y, np.r_[neg, pos], fpr=0.01) == pytest.approx(3 / 5)
    assert recall_at_fpr(y, np.r_[neg, pos], fpr=0.0) == pytest.approx(2 / 5)  # threshold 99


def test_accuracy_fpr_and_report():
    y = np.array([0, 0, 0, 1, 1])
    s = np.array([-1.0, 0.0, 2.0, 0.5, 3.0])
    assert accuracy(y, s) == pytest.approx(4 / 5)  # 0.0 is not > 0: predicted negative
    assert accuracy(y, s, threshold=-2.0) == pytest.approx(2 / 5)  # all flagged
    assert fpr_at_threshold([1.0, 2.0, 3.0], 2.0) == pytest.approx(1 / 3)
    rep = calibration_report(y, s, threshold=0.0)
    assert rep == {
        "auroc": pytest.approx(roc_auc_score(y, s)),
        "accuracy": pytest.approx(0.8),
        "recall_at_threshold": 1.0,
        "fpr_at_threshold": pytest.approx(1 / 3),
        "n": 5,
        "n_positive": 2,
    }


def test_bootstrap_auroc_ci():
    rng = np.random.default_rng(1)
    y = np.r_[np.zeros(300, int), np.ones(300, int)]
    s = rng.standard_normal(600) + y
    low, high = bootstrap_auroc_ci(y, s, n_boot=500, seed=0)
    point = auroc(y, s)
    assert low < point < high and 0.02 < high - low < 0.12
    assert (low, high) == bootstrap_auroc_ci(y, s, n_boot=500, seed=0)
    assert bootstrap_auroc_ci(y, y + 0.0, n_boot=50) == (1.0, 1.0)
    with pytest.raises(ValueError, match="only one class"):
        bootstrap_auroc_ci(np.ones(5, int), np.arange(5.0))


def test_pair_accuracy_hand_example_ties_and_no_pairs():
    from probe.metrics import pair_accuracy

    y = [0, 1, 0, 1, 0, 1, 1, 0]
    s = [0.1, 0.9, 0.5, 0.2, 0.3, 0.3, 5.0, -5.0]
    groups = ["a", "a", "b", "b", "c", "c", None, None]  # ungrouped rows never form a pair
    # a: win, b: loss, c: tie -> 1.5 / 3; an offset on a whole group changes nothing
    assert pair_accuracy(y, s, groups) == (pytest.approx(0.5), 3)
    assert pair_accuracy(y, np.asarray(s) + np.array([9, 9, 0, 0, -4, -4, 0, 0]), groups) == (pytest.approx(0.5), 3)
    # a group with two positives and one negative gives two pairs
    assert pair_accuracy([1, 1, 0], [2.0, 0.0, 1.0], ["g", "g", "g"]) == (pytest.approx(0.5), 2)
    acc, n = pair_accuracy([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4], ["a", "b", "c", "d"])
    assert n == 0 and np.isnan(acc)
    with pytest.raises(ValueError, match="inconsistent shapes"):
        pair_accuracy([0, 1], [0.1, 0.2], ["a"])


def test_wilson_interval_brackets_the_proportion_and_matches_a_known_value():
    from probe.metrics import wilson

    lo, hi = wilson(1, 100)  # the textbook value for 1/100: 0.0018-0.0545
    assert abs(lo - 0.0018) < 1e-4 and abs(hi - 0.0545) < 1e-4
    assert wilson(0, 20)[0] == 0.0 and wilson(20, 20)[1] == 1.0
    assert all(v != v for v in wilson(0, 0))
