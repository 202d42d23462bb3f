"""Every benchmark config runs ``--quick`` on a tiny random model through the suite's one entry
(:func:`benchmarks.suite.run_config`) and writes a complete record. The figures mean nothing on a
random model; the test checks that each analysis runs end to end and that its result has the shape
(and value ranges) its report promises. ``TINY`` shrinks sizes that the tiny model makes pointless."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from benchmarks.suite import CONFIGS, Config, run_config

CONFIG_NAMES = sorted(p.stem for p in CONFIGS.glob("*.toml"))

#: per config: parameter overrides on top of its [quick] table (smaller, for a random 2-layer model)
TINY: dict[str, dict] = {
    "probes": {"max_rows": 40, "n_control": 10, "n_boot": 50, "hooks": ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]},
}


def tiny_long_context():
    """The tiny test model with a context long enough for the recipes' chats."""
    from tiny import tiny_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    from circuits import from_hf

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=16, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=2048, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    return from_hf(LlamaForCausalLM(cfg).eval(), tiny_tokenizer(), model_id="tiny-llama-long")


@pytest.fixture(scope="module")
def model():
    return tiny_long_context()


def _finite_numbers(d):
    if isinstance(d, dict):
        for v in d.values():
            yield from _finite_numbers(v)
    elif isinstance(d, (int, float)) and not isinstance(d, bool):
        yield d


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_config_runs_quick_on_the_tiny_model(name, model, tmp_path, monkeypatch, shared_datasets):
    monkeypatch.setenv("COALIGN_CACHE", str(tmp_path / "cache"))
    cfg = Config.load(name, quick=True, overrides=TINY.get(name))
    if cfg.entry == "speed":
        pytest.skip("speed configs time SmolLM2 (pytest-benchmark); not run on the tiny model")
    res = run_config(cfg, out=tmp_path / "out", model=model, cache_dir=tmp_path / "cache")
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["name"] == name and saved["quick"] is True and saved["config"] == cfg.raw
    assert saved["model"] == {"id": "tiny-llama-long", "fingerprint": model.fingerprint, "n_layers": 2, "d_model": 16}
    assert saved["git"]["revision"] is None or len(saved["git"]["revision"]) == 40
    assert res.figures and all(math.isfinite(v) for v in _finite_numbers(res.figures))
    report = (tmp_path / "out" / "report.md").read_text()
    assert model.fingerprint in report and "## Headline figures" in report
    for plot in res.plots:
        assert (tmp_path / "out" / plot).read_bytes()[:4] == b"\x89PNG", plot
    CHECKS.get(name, lambda r: None)(res)


def _check_probes(res):
    s = res.data
    assert {"truth", "deception", "sycophancy"} <= set(s["suites"])
    for key in ("deception_val_auroc", "deception_roleplay_auroc", "sycophancy_caa_auroc"):
        assert 0.0 <= res.figures[key] <= 1.0
        lo, hi = s[key]["ci95"]
        assert lo <= s[key]["auroc"] <= hi


CHECKS = {"probes": _check_probes}


def test_unknown_parameter_and_missing_file_fail_before_any_model(tmp_path, monkeypatch):
    from benchmarks.suite import BenchmarkConfigError

    with pytest.raises(BenchmarkConfigError, match="unknown parameter.*'?bogus"):
        Config.load("probes", overrides={"bogus": 1})
    bad = tmp_path / "x.toml"
    bad.write_text('analysis = "nope"\n')
    with pytest.raises(BenchmarkConfigError, match="unknown analysis 'nope'"):
        Config.load(bad)
    bad.write_text('analysis = "benign_negatives"\n[params]\nseed_tasks = "{datasets}/no/such.jsonl"\n')
    with pytest.raises(BenchmarkConfigError, match="parameter 'seed_tasks'.*no/such.jsonl not found"):
        Config.load(bad)
    monkeypatch.setenv("COALIGN_SHARED", str(tmp_path))
    assert Config.load("probes").datasets == tmp_path / "datasets"
