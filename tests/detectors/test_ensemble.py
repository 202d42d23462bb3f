"""Combining detectors: the folded read-out equals the weighted sum of standardised scores, the
threshold holds its FPR on the control set, the artifact round-trips, bad combinations are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import tiny_model

from circuits import InputError, ModelMismatchError
from detectors import ConditionalDetector, Detector

H0, H1 = "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"
CONTROL = [[{"role": "user", "content": f"say {a}"}, {"role": "assistant", "content": f"{a} {b} the mat"}]
           for a in "one two three four five six seven eight".split() for b in "cat dog sky red".split()]
ITEMS = ["the cat sat on the mat", [{"role": "user", "content": "is it true"}, {"role": "assistant", "content": "yes it is"}]]


def _dets(tiny, select="response_mean"):
    g = torch.Generator().manual_seed(0)
    a = Detector.from_linear("deception", tiny, H0, torch.randn(16, generator=g), bias=0.3, fpr=0.05, select=select, name="a")
    b = Detector.from_linear("deception", tiny, [H0, H1], torch.randn(2, 16, generator=g), bias=-1.0, fpr=0.05,
                             select=select, name="b")
    return a, b


def test_combined_score_is_weighted_sum_of_standardised_scores(tiny, tmp_path):
    a, b = _dets(tiny)
    both = Detector.combine([a, b], tiny, weights=[3, 1], control=CONTROL, cache_dir=tmp_path, confidence=None)
    assert both.hooks == [H0, H1] and both.probe_kind == "ensemble" and both.name == "a+b" and both.behaviour == "deception"
    ca, cb = a.score(tiny, CONTROL), b.score(tiny, CONTROL)
    want = 0.75 * (a.score(tiny, ITEMS) - ca.mean()) / ca.std() + 0.25 * (b.score(tiny, ITEMS) - cb.mean()) / cb.std()
    np.testing.assert_allclose(both.score(tiny, ITEMS), want, rtol=1e-4, atol=1e-4)
    comps = both.metrics["components"]
    assert [c["weight"] for c in comps] == [0.75, 0.25] and [c["id"] for c in comps] == [a.id, b.id]
    # standardised on the control set: its combined scores have mean 0; the threshold keeps the FPR
    ctrl = both.score(tiny, CONTROL)
    assert abs(ctrl.mean()) < 1e-4
    assert np.mean(ctrl > both.threshold) <= 0.05 and both.metrics["control_fpr"] == np.mean(ctrl > both.threshold)
    assert both.stream_threshold is not None
    both.save(tmp_path / "both")
    back = Detector.load(tmp_path / "both", tiny)
    assert back.id == both.id and torch.equal(back.weight, both.weight)
    np.testing.assert_array_equal(back.score(tiny, ITEMS), both.score(tiny, ITEMS))


def test_default_weights_are_equal_and_threshold_is_conservative(tiny, tmp_path):
    a, b = _dets(tiny)
    both = Detector.combine([a, b], tiny, control=CONTROL, cache_dir=tmp_path)
    assert [c["weight"] for c in both.metrics["components"]] == [0.5, 0.5]
    b.name = "a"
    assert Detector.combine([a, b], tiny, control=CONTROL, cache_dir=tmp_path).name == "a_mixture"
    assert both.threshold == pytest.approx(both.score(tiny, CONTROL).max(), abs=1e-6)  # 32 controls at 5%, 95% bound


def test_combine_refuses_bad_combinations(tiny, tmp_path):
    a, b = _dets(tiny)
    kw = dict(control=CONTROL, cache_dir=tmp_path)
    with pytest.raises(InputError, match="at least two"):
        Detector.combine([a], tiny, **kw)
    with pytest.raises(InputError, match="2 weights for 3"):
        Detector.combine([a, b, a], tiny, weights=[1, 1], **kw)
    with pytest.raises(InputError, match="non-negative"):
        Detector.combine([a, b], tiny, weights=[1, -1], **kw)
    _, last = _dets(tiny, select="last")
    with pytest.raises(InputError, match="token selections"):
        Detector.combine([a, last], tiny, **kw)
    flat = Detector.from_linear("x", tiny, H0, torch.zeros(16), fpr=0.05)
    with pytest.raises(InputError, match="same score to every control item"):
        Detector.combine([a, flat], tiny, **kw)
    other = tiny_model(seed=1)
    foreign = Detector.from_linear("x", other, H0, torch.ones(16), fpr=0.05)
    with pytest.raises(ModelMismatchError, match="weights"):
        Detector.combine([a, foreign], tiny, **kw)
    cond = ConditionalDetector.__new__(ConditionalDetector)
    cond.__dict__.update(a.__dict__)
    with pytest.raises(InputError, match="prompt-conditioned"):
        Detector.combine([a, cond], tiny, **kw)


def test_combine_command(tmp_path):
    import json

    from circuits import load_model
    from detectors.cli import main
    from tiny import tiny_hf_model, tiny_tokenizer

    tiny_hf_model().save_pretrained(tmp_path / "m")
    tiny_tokenizer().save_pretrained(tmp_path / "m")
    model = load_model(tmp_path / "m")
    a, b = _dets(model)
    a.save(tmp_path / "a")
    b.save(tmp_path / "b")
    control = tmp_path / "control.jsonl"
    control.write_text("".join(json.dumps({"messages": c, "label": 0}) + "\n" for c in CONTROL))
    args = ["combine", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "ab"), "--model", str(tmp_path / "m"),
            "--control", str(control)]
    assert main([*args, "--weights", "2,2", "--json", str(tmp_path / "ab.json")]) == 0
    both = Detector.load(tmp_path / "ab", model)
    assert [c["weight"] for c in both.metrics["components"]] == [0.5, 0.5]
    assert json.loads((tmp_path / "ab.json").read_text())["id"] == both.id
    assert main([*args, "--weights", "1,x"]) == 2
    assert main([*args, "--weights", "1"]) == 2
