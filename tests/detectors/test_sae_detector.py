"""The SAE-feature detector kind on the tiny model: it learns a planted lexical signal from SAE codes, its item
score is exactly the probe's score on pooled codes, it round-trips, refuses a missing or different SAE, and a
Guard scores it token by token."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
import torch
from sae_fixtures import HOOK, tiny_sae_setup

from circuits.errors import ArtifactError, InputError
from detectors import Detector
from detectors.guard import Guard
from detectors.sae_detector import SAEProbeDetector, train_sae_detector
from probe.metrics import auroc
from probe.sae_probe import pooled_codes

POS = "cat dog sat on mat cat dog".split()
NEG = "paris france rome italy sky blue".split()


def _chat(words, rng):
    return [{"role": "user", "content": "say something"},
            {"role": "assistant", "content": " ".join(rng.choice(words) for _ in range(8))}]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("saedet")
    model, sae, _ = tiny_sae_setup(root / "sae")
    rng = random.Random(0)
    rows = [{"messages": _chat(POS if i % 2 else NEG, rng), "label": i % 2} for i in range(80)]
    data = root / "planted.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    control = [_chat(NEG, rng) for _ in range(30)]
    det = train_sae_detector(model, sae, "planted", data=[str(data)], k=4, fpr=0.05, control=control, cache_dir=root / "cache")
    return model, sae, det, rows, root


def test_learns_the_planted_signal_and_scores_exactly_as_the_probe(trained):
    model, sae, det, rows, _ = trained
    items, y = [r["messages"] for r in rows], np.array([r["label"] for r in rows])
    s = det.score(model, items)
    assert auroc(y, s) > 0.9
    codes = pooled_codes(model, sae, items, select="response_each")
    direct = codes[:, det.features.numpy()] @ det.coef.double().numpy() + det.bias
    np.testing.assert_allclose(s, direct, atol=1e-4)  # mean of token scores == head on pooled codes
    assert det.metrics["control_fpr"] <= 0.1 and len(det.features) == 4


def test_round_trip_and_refusals(trained, tmp_path):
    model, sae, det, rows, root = trained
    det.save(tmp_path / "d")
    back = Detector.load(tmp_path / "d", model)
    assert isinstance(back, SAEProbeDetector) and back.id == det.id
    items = [r["messages"] for r in rows[:6]]
    np.testing.assert_array_equal(back.score(model, items), det.score(model, items))
    cfg = json.loads((tmp_path / "d" / "config.json").read_text())
    gone = tmp_path / "gone"
    shutil.copytree(tmp_path / "d", gone)
    cfg_gone = {**cfg, "sae": {**cfg["sae"], "path": str(tmp_path / "nowhere"), "name": "no/such-sae"}}
    (gone / "config.json").write_text(json.dumps(cfg_gone))
    with pytest.raises(ArtifactError):
        Detector.load(gone, model, strict=True)  # detector_id no longer matches, or the SAE cannot be found
    with pytest.raises(InputError, match="k must be"):
        train_sae_detector(model, sae, "planted", data=[str(root / "planted.jsonl")], k=0)


def test_guard_scores_the_sae_detector_per_token(trained):
    model, sae, det, rows, _ = trained
    guard = Guard(model, [det], scoring="token")
    out = guard.generate("say something", max_new_tokens=5, min_new_tokens=5)[0]
    s = out.scores[det.name]
    assert len(s) == 5 and np.isfinite(s).all()
    # offline: one forward over prompt + generated tokens; step t reads the position before token t
    prompt = list(guard._prepare(["say something"])[0].enc.ids)
    ids = torch.tensor([prompt + list(out.token_ids)])
    seen = {}
    with model.hooks([(HOOK, lambda act, hook: seen.__setitem__("a", act.detach()))]), torch.no_grad():
        model.hf_model(input_ids=ids)
    steps = seen["a"][0, len(prompt) - 1: len(prompt) - 1 + 5]
    np.testing.assert_allclose(s, det.score_tensor({HOOK: steps}).numpy(), atol=1e-4)


def test_cli_train_with_sae_writes_an_sae_detector(trained, tmp_path):
    from tiny import tiny_hf_model, tiny_tokenizer

    from detectors.cli import main

    model, sae, det, rows, root = trained
    model_dir = tmp_path / "tinymodel"
    tiny_hf_model().save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    control = tmp_path / "control.jsonl"
    control.write_text("\n".join(json.dumps({"prompt": "say something", "response": "paris sky blue"}) for _ in range(20)))
    rc = main(["train", "planted", "--data", str(root / "planted.jsonl"), "--sae", str(sae.path), "--sae-k", "4",
               "--control", str(control), "--fpr", "0.05", "--model", str(model_dir), "--out", str(tmp_path / "d"),
               "--json", str(tmp_path / "d.json")])
    assert rc == 0
    back = Detector.load(tmp_path / "d")
    assert isinstance(back, SAEProbeDetector) and back.probe_kind == "sae_l1_logistic_k4"
    assert json.loads((tmp_path / "d.json").read_text())["val_auroc"] > 0.9
