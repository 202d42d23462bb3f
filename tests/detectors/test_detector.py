"""Detector artifacts: exact round-trip, clear errors on corrupt files and model mismatches, training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tiny import planted_dataset as _planted_dataset
from tiny import tiny_model

from circuits import ArtifactError, HookNameError, InputError, ModelMismatchError
from detectors import Detector
from probe.datasets import Example, LabelledDataset
from probe.metrics import auroc

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture
def det(tiny):
    torch.manual_seed(0)
    return Detector.from_linear("deception", tiny, HOOK, torch.randn(16), bias=0.25, threshold=1.5, fpr=0.01)


def test_roundtrip_is_exact(det, tiny, tmp_path):
    det.metrics = {"val_auroc": 0.97}
    det.save(tmp_path / "d")
    back = Detector.load(tmp_path / "d", tiny)
    assert torch.equal(back.weight, det.weight)
    assert (back.bias, back.threshold, back.fpr, back.hooks, back.select) == (det.bias, det.threshold, det.fpr, det.hooks, det.select)
    assert back.id == det.id and back.metrics == det.metrics
    items = ["the cat sat on the mat", [{"role": "user", "content": "is it true"}, {"role": "assistant", "content": "yes"}]]
    np.testing.assert_array_equal(back.score(tiny, items), det.score(tiny, items))
    cfg = json.loads((tmp_path / "d" / "config.json").read_text())
    for key in ("schema_version", "library_version", "model_id", "model_fingerprint", "hooks", "select", "probe_kind",
                "threshold", "fpr", "data_hash", "metrics"):
        assert key in cfg


def test_score_is_linear_readout(det, tiny):
    from circuits import capture

    items = ["yes it is true", "no the sky is red"]
    acts = capture(tiny, items, HOOK, select=det.select)[HOOK]
    np.testing.assert_allclose(det.score(tiny, items), acts @ det.weight[0].numpy() + det.bias, rtol=1e-5, atol=1e-5)


def test_model_mismatch_errors(det, tmp_path):
    det.save(tmp_path / "d")
    with pytest.raises(ModelMismatchError, match="weights"):
        Detector.load(tmp_path / "d", tiny_model(seed=1))
    with pytest.raises(ModelMismatchError, match="d_model=16 .* d_model=32"):
        Detector.load(tmp_path / "d", tiny_model(d_model=32))
    with pytest.raises(HookNameError, match="out of range"):
        Detector.load(tmp_path / "d", tiny_model(n_layers=1), strict=False)
    assert Detector.load(tmp_path / "d", tiny_model(seed=1), strict=False).hooks == [HOOK]


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda d: (d / "config.json").write_text("{not json"), "config.json: not valid JSON"),
        (lambda d: (d / "weights.safetensors").write_bytes(b"\x00" * 10), "corrupt safetensors"),
        (lambda d: (d / "weights.safetensors").unlink(), "missing weights.safetensors"),
        (lambda d: _edit(d, lambda c: c.pop("threshold")), "missing field 'threshold'"),
        (lambda d: _edit(d, lambda c: c.update(hooks="blocks.1")), "field 'hooks' has type str"),
        (lambda d: _edit(d, lambda c: c.update(schema_version=99)), "schema_version 99"),
        (lambda d: _edit(d, lambda c: c.update(d_model=8)), r"shape \(1, 16\), expected \(1, 8\)"),
    ],
)
def test_corrupt_artifacts_name_the_problem(det, tmp_path, damage, match):
    det.save(tmp_path / "d")
    damage(tmp_path / "d")
    with pytest.raises(ArtifactError, match=match):
        Detector.load(tmp_path / "d")


def _edit(d, fn):
    cfg = json.loads((d / "config.json").read_text())
    fn(cfg)
    (d / "config.json").write_text(json.dumps(cfg))


def test_save_is_atomic_and_refuses_foreign_dirs(det, tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ArtifactError, match="not an artifact directory"):
        det.save(foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]  # no temporary left behind


def test_benign_negatives_that_cannot_apply_are_not_dropped_silently(tiny, tmp_path):
    with pytest.warns(RuntimeWarning, match="negatives='benign' is not used here.*select='last'"):
        Detector.train("planted", tiny, data=_planted_dataset(), select="last", negatives="benign", n_control=20, cache_dir=tmp_path)


def test_train_detector_on_planted_signal(tiny, tmp_path):
    from detectors.training import validation_indices

    data = _planted_dataset()
    det = Detector.train("planted", tiny, data=data, n_control=20, cache_dir=tmp_path)
    assert det.metrics["val_auroc"] > 0.95
    # validation_indices names the rows training held out (other detectors can be scored on them)
    va = validation_indices(data)
    assert det.metrics["val_n"] == len(va) and det.metrics["val_n_positive"] == int(data.labels[va].sum())
    assert det.metrics["val_auroc"] == pytest.approx(auroc(data.labels[va], det.score(tiny, data.subset(va).items)), abs=1e-6)
    assert det.metrics["n_negatives"] == 0  # "auto" adds the shipped benign negatives for deception only
    assert det.hooks[0] in tiny.hook_names
    assert det.metrics["control_fpr"] <= 0.05 + 1e-9
    det.save(tmp_path / "d")
    assert Detector.load(tmp_path / "d", tiny).id == det.id


def test_train_rejects_one_class_and_unknown_behaviour(tiny, tmp_path):
    one_class = LabelledDataset("x", [Example(item="the cat", label=1), Example(item="the dog", label=1)])
    with pytest.raises(InputError, match="dataset .x. has only label 1 .* both classes"):
        Detector.train("x", tiny, data=one_class, cache_dir=tmp_path)
    with pytest.raises(InputError, match="no built-in recipe for 'honesty'"):
        Detector.train("honesty", tiny, cache_dir=tmp_path)
    with pytest.raises(InputError, match="unknown dataset recipe 'nope'"):
        Detector.train("x", tiny, data=["recipe:nope"], cache_dir=tmp_path)


def test_training_data_mixes_recipes_and_files(tmp_path):
    from detectors.training import training_data
    from probe.datasets import recipe

    f = tmp_path / "more.jsonl"
    f.write_text('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "label": 1}\n')
    ds = training_data("deception", ["recipe:deception/concealment", f], 0)
    assert len(ds) == len(recipe("deception/concealment")) + 1


def test_conditional_detector_roundtrip_and_readout(tiny, tmp_path):
    from circuits import capture
    from detectors.conditional import ConditionalDetector
    from probe.probes import ConditionalProbe

    ds = _planted_dataset()
    P = capture(tiny, ds.items, HOOK, select="prompt_last")[HOOK]
    R = capture(tiny, ds.items, HOOK, select="response_mean")[HOOK]
    probe = ConditionalProbe(n_components=8).fit(np.hstack([P, R]), ds.labels)
    det = ConditionalDetector.from_probe(
        probe, P, behaviour="planted", hooks=[HOOK], threshold=0.0, fpr=0.01, select="response_mean",
        model_id=tiny.model_id, model_fingerprint=tiny.fingerprint, d_model=tiny.d_model, probe_kind="conditional",
    )
    np.testing.assert_allclose(det.score(tiny, ds.items), probe.decision_function(np.hstack([P, R])), atol=1e-4)
    det.save(tmp_path / "c")
    back = Detector.load(tmp_path / "c", tiny)
    assert isinstance(back, ConditionalDetector) and back.id == det.id
    assert all(torch.equal(back.parts[k], det.parts[k]) for k in det.parts) and back.c == det.c
    np.testing.assert_allclose(back.score(tiny, ds.items), det.score(tiny, ds.items), rtol=0, atol=1e-12)


def test_train_with_your_own_control_set(tiny, tmp_path):
    from probe.metrics import threshold_at_fpr

    data = _planted_dataset()
    control = LabelledDataset("mine", [Example(item=e.item, label=e.label, group=e.group) for e in data.examples[:20]])
    det = Detector.train("planted", tiny, data=data, control=control, cache_dir=tmp_path)
    negatives = [e.item for e in control.examples if e.label == 0]
    assert det.metrics["n_control"] == len(negatives) == 10
    assert det.threshold == pytest.approx(threshold_at_fpr(det.score(tiny, negatives), 0.01), abs=1e-6)
    loose = Detector.train("planted", tiny, data=data, control=control, cache_dir=tmp_path, fpr=0.2, confidence=None)
    ctrl = loose.score(tiny, negatives)
    assert loose.threshold == pytest.approx(threshold_at_fpr(ctrl, 0.2, None), abs=1e-6)
    assert np.sum(ctrl > loose.threshold + 1e-4) == 2 and loose.metrics["threshold_confidence"] is None  # floor(0.2 * 10)
    only_pos = LabelledDataset("pos", [e for e in control.examples if e.label == 1])
    with pytest.raises(InputError, match="no label-0"):
        Detector.train("planted", tiny, data=data, control=only_pos, cache_dir=tmp_path)


def _chat(user: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


def _nuisance_sets():
    """Training positives say "false" *and* open with a greeting; benign chats that merely open
    with the greeting are what a deployed detector then mistakes for the behaviour."""
    greet = "hello you hello you"
    subjects = "cat dog sky paris rome mat world france italy".split()
    nums = "one two three".split()
    ex = []
    for i, s in enumerate(subjects * 4):
        ex.append(Example(item=_chat(f"is the {s} red", f"{greet} that is false {nums[i % 3]}"), label=1, group=f"g{i}"))
        ex.append(Example(item=_chat(f"is the {s} red", f"that is true {nums[i % 3]}"), label=0, group=f"g{i}"))
    train = LabelledDataset("nuisance", ex)
    # benign chats of one distribution: some trained on as negatives, the others kept for calibration
    benign = [_chat(f"answer {a}", f"{greet} {a} and {b}") for a in "four five six seven".split() for b in "eight nine ten yes".split()]
    negatives, control = benign[::2], benign[1::2]
    plain_lies = [_chat(f"is the {s} blue", f"that is false {nums[i % 3]}") for i, s in enumerate(subjects)]
    return train, negatives, control, plain_lies


def test_benign_negatives_stop_a_nuisance_feature_from_setting_the_threshold(tiny, tmp_path):
    train, negatives, control, plain_lies = _nuisance_sets()
    kw = dict(data=train, layer=HOOK, control=control, cache_dir=tmp_path, confidence=None)
    plain = Detector.train("planted", tiny, negatives=None, **kw)
    hardened = Detector.train("planted", tiny, negatives=negatives, **kw)
    assert plain.metrics["n_negatives"] == 0 and hardened.metrics["n_negatives"] == len(negatives)
    assert hardened.metrics["n_train"] == plain.metrics["n_train"] + len(negatives)
    assert hardened.metrics["val_n"] == plain.metrics["val_n"]  # negatives never reach validation
    assert hardened.data_hash != plain.data_hash
    recall = {name: float(np.mean(d.score(tiny, plain_lies) > d.threshold)) for name, d in (("plain", plain), ("hardened", hardened))}
    assert recall["hardened"] >= 0.8 and recall["plain"] <= 0.5, recall


def test_negatives_defaults_and_errors(tiny, tmp_path):
    from detectors.training import training_negatives

    train, negatives, _, _ = _nuisance_sets()
    statements = LabelledDataset("s", [Example(item="the cat is red", label=1), Example(item="the cat is blue", label=0)])
    # the shipped benign set applies to chat detectors read over the response by a probe that takes unpaired rows
    assert training_negatives(tiny, "benign", statements, "last", "logistic", tmp_path) is None
    assert training_negatives(tiny, "benign", train, "response_mean", "lat", tmp_path) is None
    assert training_negatives(tiny, None, train, "response_mean", "logistic", tmp_path) is None
    shipped = training_negatives(tiny, "benign", train, "response_mean", "logistic", tmp_path)
    assert len(shipped) == 200 and set(shipped.labels.tolist()) == {0}
    with pytest.raises(InputError, match="method 'lat' cannot take extra negatives"):
        training_negatives(tiny, negatives, train, "response_mean", "lat", tmp_path)
    with pytest.raises(InputError, match="negatives='benign.jsonl'.*no such file"):
        training_negatives(tiny, "benign.jsonl", train, "response_mean", "logistic", tmp_path)
    only_pos = LabelledDataset("pos", [Example(item=negatives[0], label=1)])
    with pytest.raises(InputError, match="negatives set 'pos' has no label-0"):
        training_negatives(tiny, only_pos, train, "response_mean", "logistic", tmp_path)


def test_conditional_detector_read_before_the_answer_matches_the_guard(tiny, tmp_path):
    """``context_select="last"`` with ``select="last"``: the detector reads the position whose output
    is the next token; a Guard binds it at prefill and its step-0 score is the offline score."""
    from detectors.conditional import ConditionalDetector
    from detectors.guard import Guard

    det = Detector.train("planted", tiny, data=_planted_dataset(), method="conditional", select="last", context_select="last",
                         layer=HOOK, n_control=20, cache_dir=tmp_path, n_components=4)
    assert isinstance(det, ConditionalDetector) and det.context_select == "last" and det.select == "last"
    det.save(tmp_path / "pre")
    back = Detector.load(tmp_path / "pre", tiny)
    assert back.context_select == "last" and back.id == det.id
    items = [[{"role": "user", "content": f"is the {s} red"}, {"role": "assistant", "content": "that is"}] for s in ("cat", "sky", "rome")]
    offline = det.score(tiny, items)
    outs = Guard(tiny, [det]).generate(items, max_new_tokens=1)
    assert np.allclose([o.scores["planted"][0] for o in outs], offline, atol=1e-4)


def test_train_command_select_and_context_select(tmp_path):
    from circuits import load_model
    from detectors.cli import main
    from tiny import tiny_hf_model, tiny_tokenizer

    tiny_hf_model().save_pretrained(tmp_path / "m")
    tiny_tokenizer().save_pretrained(tmp_path / "m")
    model = load_model(tmp_path / "m")
    data, control = tmp_path / "data.jsonl", tmp_path / "control.jsonl"
    data.write_text("".join(json.dumps({"messages": e.item, "label": e.label}) + "\n" for e in _planted_dataset()))
    control.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"say {w}"}, {"role": "assistant", "content": w}],
                                            "label": 0}) + "\n" for w in "one two three four five six".split()))
    args = ["train", "planted", "--out", str(tmp_path / "pre"), "--model", str(tmp_path / "m"), "--data", str(data),
            "--method", "conditional", "--layer", HOOK, "--control", str(control), "--negatives", "none"]
    assert main([*args, "--select", "last", "--context-select", "last"]) == 0
    det = Detector.load(tmp_path / "pre", model)
    assert (det.select, det.context_select, det.hooks) == ("last", "last", [HOOK])
    assert main([*args, "--select", "nope"]) != 0  # an unknown selection is reported, not trained


def test_train_mixture_flag_refuses_what_it_fixes(capsys):
    """`coalign train --mixture` builds the deception mixture from fixed recipes: other behaviours and
    the options it fixes are refused with a message naming them, before any model is loaded."""
    from detectors.cli import main

    for extra, named in ((["deception", "--data", "x.jsonl"], "--data"), (["deception", "--negatives", "none"], "--negatives"),
                         (["sycophancy"], "behaviour 'sycophancy'"), (["deception", "--method", "lat"], "--method")):
        with pytest.raises(SystemExit, match=named):
            main(["train", *extra, "--mixture", "--out", "unused"])


def test_explain_splits_the_item_score_over_its_tokens(tiny, tmp_path):
    from tiny import random_conditional_detector

    g = torch.Generator().manual_seed(5)
    det = Detector.from_linear("x", tiny, [HOOK, "blocks.0.hook_resid_post"], torch.randn(2, tiny.d_model, generator=g), bias=0.3)
    items = [[{"role": "user", "content": "is the cat red"}, {"role": "assistant", "content": "the sky is false one"}],
             "the dog sat on the mat"]
    parts = det.explain(tiny, items)
    np.testing.assert_allclose([np.mean([s for _, s in p]) for p in parts], det.score(tiny, items), atol=1e-5)
    assert [t.strip() for t, _ in parts[0]] == ["the", "sky", "is", "false", "one"]  # the response's tokens only
    assert len(parts[1]) == 6  # plain text: every token
    with pytest.raises(InputError, match="explain splits a mean read-out"):
        random_conditional_detector(tiny, HOOK, seed=1)[0].explain(tiny, items)
    with pytest.raises(InputError, match="explain splits a mean read-out"):
        Detector.from_linear("y", tiny, HOOK, torch.ones(tiny.d_model), select="last").explain(tiny, items)


def test_cli_scan_explain_lists_the_top_tokens(tmp_path, capsys):
    from circuits import load_model
    from detectors.cli import main
    from tiny import tiny_hf_model, tiny_tokenizer

    tiny_hf_model().save_pretrained(tmp_path / "m")
    tiny_tokenizer().save_pretrained(tmp_path / "m")
    model = load_model(tmp_path / "m")
    g = torch.Generator().manual_seed(6)
    Detector.from_linear("x", model, HOOK, torch.randn(model.d_model, generator=g)).save(tmp_path / "d")
    out = tmp_path / "scan.json"
    assert main(["scan", str(tmp_path / "d"), "--model", str(tmp_path / "m"), "--prompt", "is the cat red",
                 "--response", "the sky is false one", "--explain", "2", "--json", str(out)]) == 0
    row = json.loads(out.read_text())[0]
    scores = [s for _, s in row["tokens"]]
    assert np.mean(scores) == pytest.approx(row["score"], abs=1e-5)
    best = max(range(5), key=lambda k: scores[k])
    assert row["top tokens"].startswith(f"{row['tokens'][best][0].strip()}@{best} ")
    assert row["top tokens"].count("@") == 2
    assert "top tokens" in capsys.readouterr().out


def test_cli_eval_reports_pair_accuracy_for_grouped_chats(tmp_path):
    """`coalign eval` adds the within-pair accuracy when rows share a group, and leaves it out when none do."""
    from circuits import load_model
    from detectors.cli import main
    from probe.metrics import pair_accuracy
    from tiny import tiny_hf_model, tiny_tokenizer

    tiny_hf_model().save_pretrained(tmp_path / "m")
    tiny_tokenizer().save_pretrained(tmp_path / "m")
    model = load_model(tmp_path / "m")
    g = torch.Generator().manual_seed(7)
    Detector.from_linear("x", model, HOOK, torch.randn(model.d_model, generator=g)).save(tmp_path / "d")
    words = "red blue green cat dog sky sun one two three".split()
    rows = [{"messages": [{"role": "user", "content": f"is the {w} ok"}, {"role": "assistant", "content": f"{a} {w}"}],
             "label": lab, "group": f"q{k}"} for k, w in enumerate(words) for lab, a in ((0, "yes the"), (1, "no a"))]
    grouped, loose = tmp_path / "grouped.jsonl", tmp_path / "loose.jsonl"
    grouped.write_text("".join(json.dumps(r) + "\n" for r in rows))
    loose.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "group"}) + "\n" for r in rows))
    out = tmp_path / "eval.json"
    assert main(["eval", str(tmp_path / "d"), "--model", str(tmp_path / "m"), "--data", str(grouped), "--json", str(out)]) == 0
    rep = json.loads(out.read_text())
    scores = Detector.load(tmp_path / "d", model).score(model, [r["messages"] for r in rows])
    labels = [r["label"] for r in rows]
    want = np.mean([scores[2 * k + 1] > scores[2 * k] for k in range(len(words))])
    assert rep["n_pairs"] == len(words) and rep["pair_accuracy"] == pytest.approx(want)
    assert rep["pair_accuracy"] == pytest.approx(pair_accuracy(labels, scores, [r["group"] for r in rows])[0])
    assert main(["eval", str(tmp_path / "d"), "--model", str(tmp_path / "m"), "--data", str(loose), "--json", str(out)]) == 0
    assert "pair_accuracy" not in json.loads(out.read_text())
