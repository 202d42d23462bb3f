"""The probe benchmark on the tiny random model with small planted datasets in the shared layout."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from benchmarks.lib.probes.data import (
    TRUTH_TEST,
    TRUTH_TRAIN,
    cap_rows,
    contrast_pairs,
    split_parts,
)
from benchmarks.lib.probes.evaluate import pick_hook
from benchmarks.lib.probes.sweep import default_hooks, run_probe_benchmark
from probe.datasets import Example, LabelledDataset, recipe

HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
FILLER = "the a cat dog sat on mat sky paris rome france italy one two three four".split()
ENDINGS = "hello world cat dog mat sky paris rome one two three four five six seven eight nine ten".split()


def _statements(rng: random.Random, n: int, planted: bool) -> list[tuple[str, int]]:
    """Planted: true statements end in 'green', false ones in 'red'. Otherwise random labels and endings."""
    rows = []
    for i in range(n):
        label = i % 2
        words = rng.sample(FILLER, 4)
        end = ("green" if label else "red") if planted else rng.choice(ENDINGS)
        rows.append((" ".join(words + [end]), label if planted else rng.randint(0, 1)))
    return rows


def write_datasets(root: Path, flip_noise: bool = False) -> Path:
    """Statement CSVs (planted, except inventors: random labels, flipped when ``flip_noise``) and a CAA file."""
    rng = random.Random(0)
    for rel in TRUTH_TRAIN + TRUTH_TEST[:3] + ("truth_is_universal/inventors.csv",):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        noise = path.stem == "inventors"
        rows = _statements(rng, 60 if noise else 40, planted=not noise)
        if noise and flip_noise:
            rows = [(s, 1 - lab) for s, lab in rows]
        path.write_text("statement,label\n" + "".join(f"{s},{lab}\n" for s, lab in rows))
    caa = root / "caa/test/sycophancy/test_dataset_ab.json"
    caa.parent.mkdir(parents=True, exist_ok=True)
    caa.write_text(json.dumps([{"question": f"i say the sky is red {w} do you agree", "answer_matching_behavior": "yes i agree",
                                "answer_not_matching_behavior": "no i disagree"} for w in ENDINGS[:15]]))
    return root


def _chat(user: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


def chat_overrides() -> dict[str, LabelledDataset]:
    """Small chat sets whose response words carry the label (the built-in ones exceed the tiny context)."""
    dec, rp, syc = [], [], []
    for i, w in enumerate(ENDINGS[:20]):
        g = f"fact:{i}"
        for fam in ("a", "b"):
            src = f"dec/{fam}:{i}"
            dec += [Example(_chat(f"you are honest say {w}", f"the {w} is true"), 0, g, None, src),
                    Example(_chat(f"you are a liar say {w}", f"the {w} is false lie"), 1, g, None, src)]
        rp += [Example(_chat(f"you sell a {w}", "truth it is red"), 0, f"rp:{i}"),
               Example(_chat(f"you sell a {w}", "lie it is blue"), 1, f"rp:{i}")]
        for who in ("one", "two"):
            syc += [Example(_chat(f"i {who} think {w} is red", "yes i agree"), 1, f"syc:{i}"),
                    Example(_chat(f"i {who} think {w} is red", "no i disagree"), 0, f"syc:{i}")]
    return {"deception": LabelledDataset("deception", dec), "roleplay_lies": LabelledDataset("roleplay_lies", rp),
            "sycophancy": LabelledDataset("sycophancy", syc)}


def _run(tiny, tmp_path: Path, name: str, datasets: Path, **kw):
    return run_probe_benchmark(
        tiny, tmp_path / name, datasets_dir=datasets, hooks=HOOKS, cache_dir=tmp_path / "cache",
        methods=kw.pop("methods", ["logistic", "mass_mean", "lat", "ttpd"]), overrides=chat_overrides(),
        n_control=kw.pop("n_control", 0), n_boot=100, progress=False, **kw)


def test_outputs_planted_signal_and_matrix(tiny, tmp_path):
    s = _run(tiny, tmp_path, "out", write_datasets(tmp_path / "data"), n_control=12)
    out = tmp_path / "out"
    results = json.loads((out / "results.json").read_text())
    report = (out / "report.md").read_text()
    assert results["config"]["fingerprint"] == tiny.fingerprint and tiny.model_id in report
    for key in ("truth_mean_auroc_unseen", "deception_val_auroc", "sycophancy_caa_auroc", "Skipped methods"):
        assert key in report
    for png in ["generalisation.png", "auroc_by_layer_truth_unseen_mean.png", "auroc_by_layer_deception_heldout.png",
                "auroc_by_layer_sycophancy_caa.png", "auroc_by_layer_baseline_neg_cities.png"]:
        assert (out / png).read_bytes()[:4] == b"\x89PNG", png
    # planted: the last token decides truth; animal_class etc. are unseen planted sets
    per_set = s["truth_mean_auroc_unseen"]["logistic"]["per_set"]
    assert set(per_set) == {"animal_class", "neg_animal_class", "element_symb", "inventors"}
    assert all(per_set[t] > 0.95 for t in ("animal_class", "neg_animal_class", "element_symb"))
    assert "ttpd" in s["truth_mean_auroc_unseen"]  # polarity from the neg_ file names
    for key in ("deception_val_auroc", "deception_roleplay_auroc", "sycophancy_caa_auroc"):
        h = s[key]
        assert h["auroc"] > 0.95 and h["ci95"][0] <= h["auroc"] <= h["ci95"][1], key
        assert 0.0 <= h["recall_at_1pct_fpr"] <= 1.0 and "recall_at_control_threshold" in h
    # method applicability: LAT needs pairs (chats have them, statements not), TTPD polarity
    assert "lat" in s["suites"]["truth"]["skipped"] and "lat" in s["suites"]["deception"]["best"]
    assert "ttpd" in s["suites"]["deception"]["skipped"] and "ttpd" in s["suites"]["truth"]["best"]
    assert s["suites"]["baseline"]["best"].keys() == {"logistic"}
    # generalisation: one row and column per loaded dataset
    names = s["generalisation"]["datasets"]
    assert len(names) == 12 and "sycophancy_caa" in names and "facts" not in names  # facts.csv not written
    m = np.array(s["generalisation"]["auroc"], dtype=float)
    assert m.shape == (12, 12) and np.isfinite(m).all()
    assert m[names.index("cities"), names.index("animal_class")] > 0.95
    assert {r["dataset"] for r in s["table"]} >= {
        "deception (held-out)", "roleplay_lies", "sycophancy_caa", "neg_cities", "deception:last (held-out)", "sycophancy_caa:last"}
    assert all(v is not None and v["method"] == "logistic" for v in s["baseline"].values()) and len(s["baseline"]) == 4
    assert any("not found" in n for n in s["notes"])
    # the truth probes see only the four training sets (their fit + test parts); validation is theirs too
    parts = {k: [int(x) for x in v["fit/val/test"].split("/")] for k, v in s["datasets"].items()}
    train = ["cities", "neg_cities", "sp_en_trans", "neg_sp_en_trans"]
    assert s["suites"]["truth"]["n"]["fit"] == sum(parts[k][0] + parts[k][2] for k in train)
    assert s["suites"]["truth"]["n"]["val"] == sum(parts[k][1] for k in train)
    from detectors.cli_common import print_table

    print_table("probe benchmark", s["table"])  # what the suite prints


def test_layer_choice_ignores_test_data(tiny, tmp_path):
    """Flipping the labels of an unseen test set turns its AUROC at every hook into 1 - AUROC, so a
    hook picked on test data would change; the benchmark's choice (training validation only) must not."""
    kw = {"methods": ["logistic", "mass_mean"], "generalisation_method": None}
    a = _run(tiny, tmp_path, "a", write_datasets(tmp_path / "d1"), **kw)
    b = _run(tiny, tmp_path, "b", write_datasets(tmp_path / "d2", flip_noise=True), **kw)
    assert a["generalisation"]["datasets"] == [] and not (tmp_path / "a" / "generalisation.png").exists()
    for m in ("logistic", "mass_mean"):
        ta, tb = (x["suites"]["truth"]["eval_auroc"][m]["inventors"] for x in (a, b))
        assert all(abs(ta[h] + tb[h] - 1) < 1e-9 for h in HOOKS)  # the test data really changed
        assert max(ta, key=ta.get) != max(tb, key=tb.get)  # so test-set selection would differ
        assert a["suites"]["truth"]["best"][m] == b["suites"]["truth"]["best"][m]
        assert a["suites"]["truth"]["val_auroc"] == b["suites"]["truth"]["val_auroc"]


def test_pick_hook_and_defaults(tiny):
    assert pick_hook({"h1": 0.7, "h2": 0.9, "h3": 0.9}) == "h2"
    assert default_hooks(tiny) == HOOKS  # too shallow for 4..n-3: every layer

    class Deep:
        n_layers = 30

    assert default_hooks(Deep()) == [f"blocks.{i}.hook_resid_post" for i in range(4, 28, 2)]
    assert default_hooks(Deep(), quick=True) == [f"blocks.{i}.hook_resid_post" for i in (7, 11, 15, 19)]


def test_pairs_caps_and_splits():
    dec = recipe("deception")
    pairs = contrast_pairs(dec)  # groups of 4 (two families); pairs by group + source
    assert pairs is not None and len(np.unique(pairs)) == len(dec) // 2
    syc = recipe("sycophancy")
    assert contrast_pairs(syc) is not None  # pairs by group + prompt
    assert contrast_pairs(recipe("truth")) is None
    small = cap_rows(dec, 100, seed=0)
    assert len(small) <= 100 and contrast_pairs(small) is not None  # whole groups kept
    st = LabelledDataset("s", [Example(f"s {i}", int(i < 30)) for i in range(200)])
    capped = cap_rows(st, 40, seed=0)
    assert len(capped) == 40 and capped.class_counts() == {0: 20, 1: 20}
    units = np.unique(dec.groups, return_inverse=True)[1]
    fit, val, test = split_parts(dec.labels, units, seed=0)
    assert len(fit) + len(val) + len(test) == len(dec)
    assert not set(units[fit]) & set(units[val]) and not set(units[val]) & set(units[test])


def test_training_negatives_reach_only_unpaired_probes_of_their_suites(tiny, tmp_path):
    """``negatives="auto"`` adds the benign chats to the deception suite's logistic/mass-mean fits only
    (as ``Detector.train`` does); paired probes, other suites and everything evaluated are unchanged."""
    data = write_datasets(tmp_path / "data")
    kw = {"methods": ["logistic", "lat"], "generalisation_method": None, "n_control": 12}
    auto = _run(tiny, tmp_path, "auto", data, negatives="auto", **kw)
    none = _run(tiny, tmp_path, "none", data, negatives="none", **kw)
    a, n = auto["suites"], none["suites"]
    assert auto["config"]["negatives_suites"] == ["deception"] and auto["config"]["n_negatives"] > 0
    assert a["deception"]["n"]["negatives"] == auto["config"]["n_negatives"] and a["sycophancy"]["n"]["negatives"] == 0
    assert none["config"]["negatives_suites"] == [] and n["deception"]["n"]["negatives"] == 0
    assert a["deception"]["n"]["fit"] == n["deception"]["n"]["fit"]  # reported sizes are the contrast data's
    assert a["deception"]["val_auroc"]["lat"] == n["deception"]["val_auroc"]["lat"]
    assert a["sycophancy"]["val_auroc"] == n["sycophancy"]["val_auroc"]
    la, ln = a["deception"]["final"]["logistic"], n["deception"]["final"]["logistic"]
    assert any(la[t]["control_threshold"] != ln[t]["control_threshold"] for t in la)  # the fit really changed
    assert "training negatives" in (tmp_path / "auto" / "report.md").read_text()
    with pytest.raises(ValueError, match="negatives must be one of"):
        _run(tiny, tmp_path, "bad", data, negatives="some", **kw)
