"""Every benchmark config runs ``--quick`` on a tiny random model through the suite's one entry
(:func:`benchmarks.suite.run_config`) and writes a complete record. The figures mean nothing on a
random model; the test checks that each analysis runs end to end and that its result has the shape
(and value ranges) its report promises. ``TINY`` shrinks sizes that the tiny model makes pointless."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from tiny import tiny_long_model

from benchmarks.suite import CONFIGS, Config, run_config

CONFIG_NAMES = sorted(p.stem for p in CONFIGS.glob("*.toml"))

#: per config: parameter overrides on top of its [quick] table (smaller, for a random 2-layer model)
H0, H1 = "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"
_CORRECTION = {"hook": H0, "det_hook": H1, "n_caa": 4, "n_val": 4, "n_train_pairs": 6, "n_windows": 2, "window_tokens": 16,
               "n_benign": 2, "n_lie": 2, "n_control": 20, "doses": [0, 1], "dec_doses": [0, 1]}
_SYC_GUARD = {"n_generate": 40, "n_windows": 2, "window_tokens": 16, "n_benign": 2}
_VECTOR = {"blocks": [1], "dev_topics": 3, "n_test": 3, "n_windows": 2, "window_tokens": 16, "n_benign": 3}
_REGEN = {"n_dev": 3, "n_test": 3, "n_windows": 2, "window_tokens": 16, "benign": 3}
TINY: dict[str, dict] = {
    "probes": {"max_rows": 40, "n_control": 10, "n_boot": 50, "hooks": [H0, H1]},
    "benign_negatives": {"n_alpaca": 6, "max_new_tokens": 8},
    "guard_stream_calibration": {"n": 6, "max_new_tokens": 8, "n_control": 20},
    "correction": _CORRECTION, "correction_mixture": _CORRECTION | {"detector": None},
    "correction_mixture_2": _CORRECTION | {"detector": None},
    "sycophancy_guard_correction": _SYC_GUARD, "sycophancy_rewind_correction": _SYC_GUARD,
    "deception_instruction_vector": _VECTOR, "deception_content_vector": _VECTOR, "deception_content_vector_2": _VECTOR,
    "deception_decline_vector": _VECTOR,
    "deception_by_source": {"in_recipe": ["instructed", "concealment"], "max_groups": 6, "n_alpaca": 4, "max_new_tokens": 8, "n_boot": 20,
                            "train": {"negatives": None, "n_control": 10}, "controls": {},
                            "sources": {"instructed": "recipe:deception/instructed",
                                        "concealment": "recipe:deception/concealment",
                                        "roleplay_1": "recipe:roleplay_lies"}},
    "sycophancy_by_source": {"max_groups": 6, "n_alpaca": 4, "max_new_tokens": 8, "n_boot": 20, "controls": {},
                             "train": {"n_control": 10}},
    "deception_regenerate": _REGEN, "deception_regenerate_always": _REGEN, "deception_regenerate_deployed": _REGEN,
    "deception_layers": {"layers": [0, 1], "mixes": ["1|1", "0,1|0,1"]},
    "deception_lofo": {"layers": [0, 1]},
    "roleplay_pair_errors_default": {"detector": "train:deception"},
    "sycophancy_caa_vector": {"pairs": 20, "hooks": [H0]},
    "sycophancy_conditional": {"rows": 60, "hooks": [H0, H1], "n_components": [8]},
    "sycophancy_detector_caa": {"hooks": [H1], "rows": 40},
    "sycophancy_letter_negatives": {"hook": H1, "n_negatives": 10, "n_control": 10, "rows": 80},
    "sycophancy_letter_steering": {"hooks": [H1], "n_generate": 60, "doses": [4]},
    "sycophancy_unseen_questions": {"hooks": [H1], "rows": 300}, "sycophancy_unseen_questions_elicit": {"hooks": [H1], "rows": 300},
    "truth_prompt_formats": {"hooks": [H0, H1]}, "truth_fewshot": {"hooks": [H0, H1]}, "truth_gemma": {"hooks": [H0, H1]},
    "truth_training_sets": {"hooks": [H0, H1]}, "truth_training_sets_gemma": {"hooks": [H0, H1]},
}
#: configs whose parameters name artifacts of the embedded model: the test builds tiny ones (see ``_tiny_artifacts``)
NEEDS_VECTOR = ("deception_regenerate", "deception_regenerate_always", "deception_regenerate_deployed")
NEEDS_SAE = ("sae_clamp_vs_addition",)
#: configs that read a trained organism zoo: run on the tiny organism base (its vocabulary covers the scenarios)
NEEDS_ZOO = ("alignment_faking",)


@pytest.fixture(scope="module")
def model():
    return tiny_long_model()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One activation/completion cache for the module: the configs train the same tiny detectors."""
    return tmp_path_factory.mktemp("cache")


def _tiny_vector(model, path) -> str:
    """A unit CAA steering vector of the tiny model (the configs name SmolLM2's)."""
    from circuits.steering_vectors import build_caa

    pairs = [("a cat sat", "the dog ran"), ("red hat", "big mat"), ("one two", "three four")]
    build_caa(model, pairs, H1, select="all_mean").save(path)
    return str(path)


def _tiny_sae_and_detector(model, tmp_path) -> dict:
    """A tiny SAE at H1 and a linear detector there that flags everything (a random model's detector flags
    nothing at a calibrated threshold, and the link needs flagged items); any latent may cost KL."""
    import random

    import torch
    from tiny import WORDS

    from circuits.sae_train import SAETrainSpec, train_sae
    from detectors import Detector

    rng = random.Random(0)
    corpus = [" ".join(rng.choice(WORDS) for _ in range(200)) for _ in range(30)]
    spec = SAETrainSpec(expansion=4, k=4, batch_size=256, ctx=32, dead_feature_window=10, holdout=0.2, lr=3e-3, steps=60)
    train_sae(model, H1, corpus, tmp_path / "sae", spec)
    w = torch.randn(model.d_model, generator=torch.Generator().manual_seed(3))
    Detector.from_linear("deception", model, H1, w, bias=0.0, threshold=-1e6).save(tmp_path / "det")
    return {"sae": str(tmp_path / "sae" / H1), "detector": str(tmp_path / "det"), "max_kl": 1e9, "n_windows": 2,
            "window_tokens": 16, "n_lie": 2, "n_dev": 4, "n_benign": 2, "max_new_tokens": 6}


def _tiny_zoo(tmp_path):
    """A tiny aligned/faker pair (3 LoRA steps) where the zoo script puts it, on the tiny organism base."""
    from organisms_tiny import organism_base

    from detectors.organisms.recipe import OrganismRecipe
    from detectors.organisms.train import train_organism

    base = organism_base()
    recipe = OrganismRecipe(rank=2, steps=3, batch_size=4, lr=1e-2, kl_weight=0.1, kl_batch=2)
    for role in ("aligned", "faker"):
        train_organism(base, role, tmp_path / "af" / "zoo" / "builtin-0" / role, recipe=recipe)
    return base, {"zoo": str(tmp_path / "af"), "n_windows": 2, "window_tokens": 16, "tau": 0.5}


def _finite_numbers(d):
    if isinstance(d, dict):
        for v in d.values():
            yield from _finite_numbers(v)
    elif isinstance(d, (int, float)) and not isinstance(d, bool):
        yield d


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_config_runs_quick_on_the_tiny_model(name, model, cache, tmp_path, monkeypatch, shared_datasets):
    monkeypatch.setenv("COALIGN_CACHE", str(cache))
    over = dict(TINY.get(name, {}))
    if name in NEEDS_VECTOR:
        over["vectors"] = [_tiny_vector(model, tmp_path / "vector")]
    if name in NEEDS_SAE:
        over |= _tiny_sae_and_detector(model, tmp_path)
    if name in NEEDS_ZOO:
        model, over = _tiny_zoo(tmp_path)
    cfg = Config.load(name, quick=True, overrides=over)
    if cfg.entry == "speed":
        pytest.skip("speed configs time SmolLM2 (pytest-benchmark); not run on the tiny model")
    res = run_config(cfg, out=tmp_path / "out", model=model, cache_dir=cache)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["name"] == name and saved["quick"] is True and saved["config"] == cfg.raw
    assert saved["model"] == {"id": model.model_id, "fingerprint": model.fingerprint, "n_layers": 2, "d_model": model.d_model}
    assert name in NEEDS_ZOO or model.model_id == "tiny-llama-long"
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


def _check_by_source(res):
    rows = res.data["rows"]
    assert {r["held_out"] for r in rows} == {"instructed", "concealment", "roleplay_1"}
    for r in rows:  # a held-out source is never in the training pool it is scored against
        assert 0.0 <= r["lo"] <= r["auroc"] <= r["hi"] <= 1.0 and 0.0 <= r["ceiling"] <= 1.0
        assert r["in_pool"] == (r["held_out"] in ("instructed", "concealment"))
    assert res.data["controls"] and all(0.0 <= c["fpr"] <= 1.0 for c in res.data["controls"])
    lofo = res.data["form_held_out_calibration"]  # one row per control form, each calibrated without that form
    assert [r["held-out form"] for r in lofo[1:]] == [c["control"] for c in res.data["controls"]]
    assert all(0.0 <= r["lo"] <= r["fpr"] <= r["hi"] <= 1.0 and 0.0 <= r["recall"] <= 1.0 for r in lofo[1:])


def _check_sae_clamp(res):
    link = res.data["link"]
    assert link["features"] and set(res.data["random_latents"]).isdisjoint(link["features"])
    for sets in res.data["sets"].values():  # every corrector, the clamps included, was applied to every row
        assert all(sets[c]["rows_corrected"] == 2 for c in ("sae_clamp", "sae_random", "addition@16"))
    assert set(res.figures["mean_drop_pct"]) == {"addition@16", "sae_clamp", "sae_random"}
    for sets in res.data["sets"].values():
        assert all(0.0 <= sets[c]["ci95"][0] <= sets[c]["flag_rate"] <= sets[c]["ci95"][1] and 0 < sets[c]["paired_p"] <= 1
                   for c in ("sae_clamp", "sae_random", "addition@16"))


def _check_alignment_faking(res):
    assert {r["role"] for r in res.data["validation"]} == {"aligned", "faker"}
    assert set(res.figures["unmasking_rate"]) >= {"noise", "learning_speed"}
    assert [c["role"] for c in res.data["capability_cost"]] == ["aligned", "faker"]
    assert all(c["perplexity"] > 0 and c["base_perplexity"] > 0 for c in res.data["capability_cost"])
    assert 0.0 <= res.figures["detector_heldout_auroc"] <= 1.0 and res.data["guard"]


CHECKS = {"probes": _check_probes, "alignment_faking": _check_alignment_faking, "deception_by_source": _check_by_source, "sae_clamp_vs_addition": _check_sae_clamp}


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
