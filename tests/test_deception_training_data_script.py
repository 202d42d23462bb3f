"""Smoke test of benchmarks/deception_training_data.py on a tiny random Llama: every setup trains
through the public API and is scored on every evaluation set (the numbers mean nothing here)."""

from __future__ import annotations

import json

from benchmark_script import load_benchmark
from test_correction_script import _tiny_long_context


def test_every_setup_is_trained_and_scored(tmp_path, monkeypatch):
    monkeypatch.setenv("COALIGN_CACHE", str(tmp_path / "cache"))
    mod = load_benchmark("deception_training_data")
    out_file = tmp_path / "r.json"
    res = mod.main(["--out", str(out_file)], model=_tiny_long_context())
    assert json.loads(out_file.read_text())["results"].keys() == res["results"].keys() == {*mod.SETUPS, *mod.MIXES}
    for setup, row in res["results"].items():
        assert set(row["eval"]) == set(mod.EVAL_SETS)
        for name, ev in row["eval"].items():
            assert 0.0 <= ev["auroc"] <= 1.0 and 0.0 <= ev["auroc_ci"][0] <= ev["auroc_ci"][1] <= 1.0
            assert ev["n"] == len(mod.recipe(name)) and ev["n_positive"] == ev["n"] // 2
    r = res["results"]
    assert r["concealment"]["n_train"] < r["recipe_no_negatives"]["n_train"]  # one family, not three
    assert r["concealment"]["n_negatives"] == 0 < r["concealment_negatives"]["n_negatives"]
    assert r["concealment"]["n_train"] < r["concealment_all"]["n_train"]  # the second part is added
    assert r["concealment_all"]["n_train"] < r["concealment_3parts"]["n_train"]  # and the third
    for name, parts in mod.MIXES.items():
        mix = r[name]
        assert tuple(mix["of"]) == parts
        assert mix["weight"] in mod.W_GRID and [row["weight"] for row in mix["selection"]] == mod.W_GRID
        # the chosen weight is the largest that keeps both held-out families at the floor (0 if none does)
        ok = [row["weight"] for row in mix["selection"] if min(row["instructed"], row["false_statement"]) >= mod.FLOOR]
        assert mix["weight"] == (max(ok) if ok else 0.0)
    held_out = mod.recipe_validation_sets()
    assert 0 < len(held_out["instructed"]) < len(mod.recipe("deception/instructed"))


def test_train_deception_mixture_is_the_benchmarks_rule(tmp_path, monkeypatch):
    """The library's one-call mixture (``coalign train deception --mixture``) folds the default and
    the concealment detectors with the weight its rule picks from held-out instructed pairs."""
    import numpy as np
    import pytest

    from circuits.errors import InputError
    from detectors import Detector
    from detectors.deception_mixture import (
        FLOOR,
        WEIGHT_GRID,
        held_out_families,
        train_deception_mixture,
    )

    monkeypatch.setenv("COALIGN_CACHE", str(tmp_path / "cache"))
    model = _tiny_long_context()
    mix = train_deception_mixture(model, n_control=40)
    m = mix.metrics
    assert mix.probe_kind == "ensemble" and mix.behaviour == "deception" and mix.name == "deception_mixture"
    assert [r["weight"] for r in m["mixture_selection"]] == list(WEIGHT_GRID)
    ok = [r["weight"] for r in m["mixture_selection"] if min(r["instructed"], r["false_statement"]) >= FLOOR]
    assert m["mixture_weight"] == (max(ok) if ok else 0.0)
    parts = m["components"]
    assert [round(p["weight"], 6) for p in parts] == [round(1 - m["mixture_weight"], 6), round(m["mixture_weight"], 6)]
    # the same as training both parts by hand and combining them with that weight
    base = Detector.train("deception", model, n_control=40)
    conc = Detector.train("deception", model, data=["recipe:deception/concealment", "recipe:deception/concealment_2"],
                          negatives=None, n_control=40)
    by_hand = Detector.combine([base, conc], model, weights=[1 - m["mixture_weight"], m["mixture_weight"]], n_control=40)
    items = held_out_families()["instructed"].items[:8]
    np.testing.assert_allclose(mix.score(model, items), by_hand.score(model, items), rtol=1e-5, atol=1e-5)
    assert mix.threshold == pytest.approx(by_hand.threshold)
    mix.save(tmp_path / "mix")
    assert Detector.load(tmp_path / "mix", model).metrics["mixture_weight"] == m["mixture_weight"]
    with pytest.raises(InputError, match="'data' is fixed"):
        train_deception_mixture(model, data=["x.jsonl"])
