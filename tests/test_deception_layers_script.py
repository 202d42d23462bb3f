"""benchmarks/deception_layers.py on a tiny random Llama: per-layer detectors at the fixed layer,
multi-layer sides folded over their hooks, the mixture weight by the shipped rule (numbers mean nothing here)."""

from __future__ import annotations

import json

import pytest
from benchmark_script import load_benchmark
from tiny import tiny_long_model as _tiny_long_context


def _script():
    return load_benchmark("deception_layers")


def test_layers_and_multi_layer_mixtures(tmp_path, monkeypatch):
    monkeypatch.setenv("COALIGN_CACHE", str(tmp_path / "cache"))
    mod = _script()
    out_file = tmp_path / "r.json"
    res = mod.main(["--out", str(out_file), "--layers", "0,1", "--mixes", "1|1;0,1|0,1"], model=_tiny_long_context())
    assert json.loads(out_file.read_text())["mixtures"].keys() == res["mixtures"].keys() == {"1|1", "0,1|0,1"}
    assert set(res["per_layer"]) == {"base@0", "concealment@0", "base@1", "concealment@1"}
    want = {"instructed", "false_statement", *mod.ROLEPLAY}
    for row in [*res["per_layer"].values(), *res["mixtures"].values()]:
        assert set(row["auroc"]) == want and all(0.0 <= v <= 1.0 for v in row["auroc"].values())
    assert res["per_layer"]["base@1"]["hook"] == "blocks.1.hook_resid_post"
    assert res["mixtures"]["1|1"]["hooks"] == ["blocks.1.hook_resid_post"]
    assert sorted(res["mixtures"]["0,1|0,1"]["hooks"]) == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    for mix in res["mixtures"].values():
        ok = [r["weight"] for r in mix["selection"] if min(r["instructed"], r["false_statement"]) >= 0.95]
        assert mix["weight"] == (max(ok) if ok else 0.0)


def test_a_mixture_layer_that_is_not_trained_is_refused():
    with pytest.raises(SystemExit, match=r"layers \[3\]"):
        _script().main(["--layers", "0,1", "--mixes", "1|3"], model=object())
