"""Smoke test of benchmarks/deception_training_data.py on a tiny random Llama: every setup trains
through the public API and is scored on every evaluation set (the numbers mean nothing here)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from test_correction_script import _tiny_long_context

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "deception_training_data.py"


def test_every_setup_is_trained_and_scored(tmp_path, monkeypatch):
    monkeypatch.setenv("COALIGN_CACHE", str(tmp_path / "cache"))
    spec = importlib.util.spec_from_file_location("deception_training_data", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
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
    for name, parts in mod.MIXES.items():
        mix = r[name]
        assert tuple(mix["of"]) == parts
        assert mix["weight"] in mod.W_GRID and [row["weight"] for row in mix["selection"]] == mod.W_GRID
        # the chosen weight is the largest that keeps both held-out families at the floor (0 if none does)
        ok = [row["weight"] for row in mix["selection"] if min(row["instructed"], row["false_statement"]) >= mod.FLOOR]
        assert mix["weight"] == (max(ok) if ok else 0.0)
    held_out = mod.recipe_validation_sets()
    assert 0 < len(held_out["instructed"]) < len(mod.recipe("deception/instructed"))
