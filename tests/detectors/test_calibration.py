"""Calibration that follows a detector to the user's distribution: `coalign calibrate` re-sets the
threshold on the user's benign rows without touching the weights, and scoring warns when a batch sits
far from the calibration set."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from detectors import Detector
from detectors.calibration import control_summary, drift_warning, recalibrate

HOOK = "blocks.1.hook_resid_post"
WORDS = "the a is not true false paris france rome italy sky blue green red yes no hello world cat dog".split()


def _chats(n, seed):
    rng = np.random.default_rng(seed)
    return [[{"role": "user", "content": " ".join(rng.choice(WORDS, 4))},
             {"role": "assistant", "content": " ".join(rng.choice(WORDS, 5))}] for _ in range(n)]


@pytest.fixture
def det(tiny):
    torch.manual_seed(0)
    d = Detector.from_linear("x", tiny, HOOK, torch.randn(16), threshold=0.0, fpr=0.05)
    d.metrics["control_summary"] = control_summary(d.score(tiny, _chats(60, 1)))
    return d


def test_recalibrate_sets_the_fpr_on_the_new_rows_and_keeps_the_weights(det, tiny, tmp_path):
    own = _chats(80, 2)
    new = recalibrate(det, tiny, own, fpr=0.05, confidence=None, cache_dir=tmp_path)
    assert torch.equal(new.weight, det.weight) and new.bias == det.bias and new.hooks == det.hooks
    s = det.score(tiny, own)
    assert np.mean(s > new.threshold) <= 0.05 + 1e-9
    assert np.mean(s > new.threshold) >= 0.05 - 2 / 80  # the plain quantile: not far stricter than asked
    assert new.metrics["recalibrated_on"]["previous_threshold"] == det.threshold
    assert new.stream_threshold is not None  # a mean read-out gets the Guard's statistic too
    assert det.threshold == 0.0  # the original is not modified


def test_calibrate_command_replaces_the_artifact_in_place(det, tiny, tmp_path, capsys):
    from tiny import tiny_hf_model, tiny_tokenizer

    from circuits import load_model
    from detectors.cli import main

    tiny_hf_model().save_pretrained(tmp_path / "m")
    tiny_tokenizer().save_pretrained(tmp_path / "m")
    model = load_model(tmp_path / "m")
    det = Detector.from_linear("x", model, HOOK, torch.randn(16, generator=torch.Generator().manual_seed(0)),
                               threshold=-50.0, fpr=0.05)
    det.save(tmp_path / "d")
    control = tmp_path / "mine.jsonl"
    control.write_text("".join(json.dumps({"messages": c, "label": 0}) + "\n" for c in _chats(40, 3)))
    assert main(["calibrate", str(tmp_path / "d"), "--control", str(control), "--model", str(tmp_path / "m"),
                 "--fpr", "0.1", "--confidence", "0"]) == 0
    back = Detector.load(tmp_path / "d", model)
    assert torch.equal(back.weight, det.weight) and back.threshold > -50.0 and back.fpr == 0.1
    assert np.mean(back.score(model, _chats(40, 3)) > back.threshold) <= 0.1 + 1e-9


def test_a_batch_far_above_the_threshold_warns(det, tiny):
    far = Detector.from_linear("x", tiny, HOOK, det.weight[0], threshold=-1e6, fpr=0.01)
    far.metrics["control_summary"] = det.metrics["control_summary"]
    with pytest.warns(RuntimeWarning, match="100% of these 30 items score above its threshold.*coalign calibrate"):
        far.score(tiny, _chats(30, 4))


def test_a_batch_like_the_control_set_does_not_warn(det, tiny):
    det.threshold = float(det.metrics["control_summary"]["q99"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        det.score(tiny, _chats(30, 5))


def test_small_batches_and_uncalibrated_detectors_say_nothing(det):
    assert drift_warning(det, np.full(5, 1e9)) is None
    det.metrics.pop("control_summary")
    assert drift_warning(det, np.full(50, 1e9)) is None


def test_the_guard_warns_once_when_its_responses_drift_and_again_after_they_recover(det, tiny):
    from detectors import Guard
    from detectors.guard_drift import DriftMonitor

    far = Detector.from_linear("x", tiny, HOOK, det.weight[0], threshold=-1e6, fpr=0.01)
    far.metrics["control_summary"] = det.metrics["control_summary"]
    prompts = [c[:1] for c in _chats(25, 6)]
    with pytest.warns(RuntimeWarning, match="Guard, over its last 20 responses:.*100% of these 20 items") as rec:
        Guard(tiny, [far]).generate(prompts, max_new_tokens=3)
    assert sum("Guard, over" in str(w.message) for w in rec) == 1  # once per turn, not once per response

    median = np.array([0.0, float(det.metrics["control_summary"]["q50"])])
    mon = DriftMonitor(["x"], [far])
    with pytest.warns(RuntimeWarning):
        said = [mon.observe("x", median) for _ in range(21)]
    assert [i for i, m in enumerate(said) if m] == [19]  # at the 20th response, then quiet while it drifts
    far.threshold = 1e6  # the same scores are now plausible: the window recovers ...
    assert mon.observe("x", median) is None and mon.drifting == {"x": False}
    far.threshold = -1e6  # ... and a new drift is told again
    with pytest.warns(RuntimeWarning):
        assert mon.observe("x", median) is not None
    token_level = Detector.from_linear("t", tiny, HOOK, det.weight[0], threshold=-1e6, select="last")
    token_level.metrics["control_summary"] = det.metrics["control_summary"]
    assert DriftMonitor(["t"], [token_level]).detectors == {}  # a token-level read-out has no response mean to judge
