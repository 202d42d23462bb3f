"""benchmarks/truth_training_sets.py: leave-one-topic-out must leave a topic's negated,
conjoined and disjoined sets out with it, and no test set may be in its own training list."""

from __future__ import annotations

from pathlib import Path

from benchmark_script import load_benchmark


def _script():
    return load_benchmark("truth_training_sets")


def test_topic_groups_variants_of_a_set():
    t = _script().topic
    assert t("x/neg_cities.csv") == t("x/cities_conj.csv") == t("x/cities.csv") == "cities"
    assert t("x/neg_facts.csv") == "facts" != t("x/counterfact_true_false.csv")
    assert t("x/larger_than.csv") == "larger_than"


def test_leave_one_topic_out_never_trains_on_the_test_topic():
    mod = _script()
    everything = mod.TRUTH_TRAIN + mod.TRUTH_TEST + mod.EXTRA
    for k in mod.TRUTH_TEST:
        train = [r for r in everything if mod.topic(r) != mod.topic(k)]
        assert k not in train and not any(Path(r).stem.removeprefix("neg_") == Path(k).stem.removeprefix("neg_") for r in train)
