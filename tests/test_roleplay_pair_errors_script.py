"""benchmarks/roleplay_pair_errors.py: the per-set summary counts mis-ordered pairs, splits them by
how unequal the two answers' lengths are, compares their negation, and rejects a group that is not one honest/deceptive pair."""

from __future__ import annotations

import numpy as np
import pytest
from benchmark_script import load_benchmark


def _script():
    return load_benchmark("roleplay_pair_errors")


def test_pair_table_counts_misordered_and_length_balance():
    mod = _script()
    labels = [0, 1, 0, 1, 0, 1]
    groups = ["a", "a", "b", "b", "c", "c"]
    answers = ["it was me, sorry", "not me at all", "yes", "no idea what happened to it at all, honestly", "not two", "three four"]
    scores = [0.9, 0.1, 0.2, 0.8, 0.5, 0.5]  # a: wrong, b: right, c: tie (counts as wrong, half a win)
    t = mod.pair_table(labels, scores, groups, answers)
    assert t["pairs"] == 3 and t["pair_accuracy"] == pytest.approx(1.5 / 3)
    assert t["auroc"] == pytest.approx(3.5 / 9) and t["auroc_ci"][0] <= t["auroc"] <= t["auroc_ci"][1]
    assert t["misordered"] == 2 and t["balanced_pairs"] == 2 and t["misordered_balanced"] == 2
    assert t["mean_abs_log_length_ratio"] == pytest.approx(np.log(9) / 3)
    assert t["remorse_rate_honest"] == pytest.approx(1 / 3) and t["remorse_rate_deceptive"] == 0.0
    # of the mis-ordered pairs only c's honest answer negates more; b's lie negates, its honest answer not
    assert t["misordered_groups"] == ["a", "c"] and t["honest_negates_more_misordered"] == pytest.approx(0.5)
    assert t["honest_negates_more_ordered"] == 0.0


def test_negation_density_counts_contractions_and_whole_words():
    mod = _script()
    assert mod._negation_density("No, I didn't. Not me, never.") == pytest.approx(4 / 6)
    assert mod._negation_density("I know nothing") == pytest.approx(1 / 3)
    assert mod._negation_density("Nobel notes") == 0.0


def test_pair_table_rejects_a_group_without_both_answers():
    with pytest.raises(ValueError, match="exactly one honest"):
        _script().pair_table([0, 0], [0.1, 0.2], ["a", "a"], ["x", "y"])
