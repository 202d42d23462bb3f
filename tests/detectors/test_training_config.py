"""Recorded training configs: validated before any forward pass, stored in the artifact, and replayed
into exactly the same weights."""

from __future__ import annotations

import json
import time

import pytest
import torch

from circuits import InputError, load_model
from detectors import Detector
from detectors.cli import main
from detectors.train_config import TrainingConfig
from detectors.training import retrain

HOOK = "blocks.1.hook_resid_post"


def _write_planted(path):
    rows = []
    for i, s in enumerate("cat dog sky paris rome mat world".split() * 6):
        for label, word in ((1, "false"), (0, "true")):
            rows.append({"messages": [{"role": "user", "content": f"is the {s} {['red', 'blue', 'green'][i % 3]}"},
                                      {"role": "assistant", "content": f"that is {word} {['one', 'two', 'three'][i % 3]}"}],
                         "label": label, "group": f"g{i}"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize("field,value,named", [
    ("method", "bogus", "unknown probe"), ("fpr", 1.5, "fpr"), ("fpr", float("nan"), "fpr"),
    ("fpr", 0.0, "fpr"), ("confidence", -0.5, "confidence"), ("test_fraction", 1.0, "test_fraction"),
    ("n_control", 0, "n_control"), ("select", "middle", "select"), ("layer", "blocks 3", "layer"),
    ("data", ["/nonexistent/data.jsonl"], "no such file"), ("control", ["recipe:nope"], "unknown dataset recipe"),
    ("negatives", ["/nonexistent.jsonl"], "no such file"), ("seed", 1.5, "seed"),
])
def test_bad_configs_fail_fast_naming_the_field(field, value, named):
    t0 = time.perf_counter()
    with pytest.raises(InputError, match=named):
        TrainingConfig("deception", **{field: value}).validate()
    assert time.perf_counter() - t0 < 1.0


def test_bad_method_fails_before_the_capture_pass(tiny, monkeypatch):
    import detectors.training as training

    monkeypatch.setattr(training, "_activations", lambda *a, **k: pytest.fail("captured before validating"))
    with pytest.raises(InputError, match="bogus"):
        Detector.train("x", tiny, data=["recipe:deception/concealment"], method="bogus")


def test_config_round_trips_through_json(tmp_path):
    f = tmp_path / "d.jsonl"
    _write_planted(f)
    cfg = TrainingConfig("planted", data=[str(f)], method="mass_mean", layer=[HOOK], fpr=0.05, seed=3,
                         control=[str(f)], negatives=None, probe_params={})
    back = TrainingConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.replayable


def test_retraining_from_the_artifact_gives_identical_weights(tmp_path):
    """Train on the tiny model from files via the CLI, then `coalign train --from` the artifact."""
    from tiny import tiny_hf_model, tiny_tokenizer

    tiny_hf_model().save_pretrained(tmp_path / "m")
    tiny_tokenizer().save_pretrained(tmp_path / "m")
    data, control = tmp_path / "data.jsonl", tmp_path / "control.jsonl"
    _write_planted(data)
    control.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"say {w}"},
                                                        {"role": "assistant", "content": w}], "label": 0}) + "\n"
                               for w in "one two three four five six seven eight".split()))
    common = ["--model", str(tmp_path / "m")]
    assert main(["train", "planted", "--out", str(tmp_path / "a"), "--data", str(data), "--control", str(control),
                 "--negatives", "none", "--layer", "auto", "--fpr", "0.2", *common]) == 0
    assert main(["train", "--from", str(tmp_path / "a"), "--out", str(tmp_path / "b"), *common]) == 0
    model = load_model(tmp_path / "m")
    a, b = Detector.load(tmp_path / "a", model), Detector.load(tmp_path / "b", model)
    assert torch.equal(a.weight, b.weight) and a.bias == b.bias and a.threshold == b.threshold
    assert a.hooks == b.hooks and a.data_hash == b.data_hash and a.id == b.id
    assert a.training_config == b.training_config and a.training_config["data"] == [str(data)]
    # and from Python
    c = retrain(tmp_path / "a", model, cache_dir=tmp_path / "cache")
    assert torch.equal(c.weight, a.weight) and c.threshold == a.threshold


def test_in_memory_data_is_recorded_as_not_replayable(tiny, tmp_path):
    from probe.datasets import Example, LabelledDataset

    ex = [Example(item=[{"role": "user", "content": f"is the {s} red"}, {"role": "assistant", "content": w}],
                  label=lab, group=f"g{i}") for i, s in enumerate("cat dog sky rome mat".split() * 3)
          for lab, w in ((1, "false"), (0, "true"))]
    det = Detector.train("x", tiny, data=LabelledDataset("mine", ex), n_control=10, cache_dir=tmp_path, negatives=None)
    assert det.training_config["replayable"] is False and det.training_config["data"] == {"in_memory": "mine"}
    det.save(tmp_path / "d")
    with pytest.raises(InputError, match="in-memory"):
        retrain(tmp_path / "d", tiny)
