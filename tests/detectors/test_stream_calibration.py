"""What the Guard's policy compares: the running mean of token scores against a threshold
calibrated for it on control responses (mean detectors), or each token's score (the rest)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from circuits.errors import ArtifactError, InputError
from detectors.detector import Detector
from detectors.guard import Guard
from detectors.policy import Policy
from probe.metrics import running_mean_peak
from test_guard import H0, H1, PROMPTS, lin, scripted

WORDS = "the cat sat on a mat and dog ran to big red hat".split()


def chats(n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        q = " ".join(rng.choice(WORDS, size=rng.integers(2, 6)))
        a = " ".join(rng.choice(WORDS, size=rng.integers(3, 12)))
        out.append([{"role": "user", "content": q}, {"role": "assistant", "content": a}])
    return out


def test_running_mean_peak():
    assert running_mean_peak([0.0, 10.0, 0.0, 0.0]) == 5.0
    assert running_mean_peak([0.0, 10.0, 0.0, 0.0], warmup=3) == pytest.approx(10 / 3)
    assert running_mean_peak([4.0], warmup=5) == 4.0  # shorter than the warm-up: the whole mean
    with pytest.raises(ValueError, match="at least one"):
        running_mean_peak([])
    with pytest.raises(ValueError, match="warmup"):
        running_mean_peak([1.0], warmup=0)


def test_token_scores_average_to_the_item_score(tiny):
    det = lin(tiny, "d", H1, bias=0.2)
    items = chats(9)
    per_token = det.token_scores(tiny, items)
    assert [len(s) > 0 for s in per_token] == [True] * len(items)
    # row 0 is the last prompt token (it predicts the first response token); the rest is the response
    assert np.allclose([s[1:].mean() for s in per_token], det.score(tiny, items), atol=1e-5)


def test_token_scores_read_the_positions_the_guard_reads(tiny):
    # test_guard checks that Guard step t reads position (prompt length - 1 + t) of a manual
    # forward; here the offline token scores must read the same positions
    from circuits.inputs import encode

    det = Detector.from_linear("ab", tiny, [H0, H1], torch.randn(2, 16, generator=torch.Generator().manual_seed(2)), bias=-0.1)
    items = chats(4, seed=3)
    per_token = det.token_scores(tiny, items)
    for item, got in zip(items, per_token):
        e = encode(tiny.tokenizer, [item], tiny.n_ctx)[0]
        acts = {}
        with tiny.hooks([(h, lambda a, hp: acts.__setitem__(hp.name, a[0].detach().clone())) for h in (H0, H1)]):
            tiny.forward(torch.tensor([list(e.ids)]))
        pos = torch.arange(e.prompt_end - 1, len(e.ids))
        assert np.allclose(got, det.score_tensor({h: acts[h][pos] for h in det.hooks}).numpy(), atol=1e-5)


def test_calibrate_stream_bounds_the_running_mean_on_controls(tiny):
    det = lin(tiny, "d", H1, seed=5)
    det.fpr = 0.05
    control = chats(200, seed=1)
    thr = det.calibrate_stream(tiny, control, warmup=3)
    assert det.stream_threshold == thr and det.stream_warmup == 3 and det.streams_mean
    per_token = det.token_scores(tiny, control)
    peaks = np.array([running_mean_peak(s[1:], 3) for s in per_token])
    assert len(peaks) == 200 and np.mean(peaks > thr) <= 0.05
    assert det.metrics["stream_control_fpr"] == pytest.approx(np.mean(peaks > thr))
    # the peak of a running mean is never below the final mean (the item score), so neither is its threshold
    means = np.array([s[1:].mean() for s in per_token])
    assert thr >= np.quantile(means, 0.95)


def test_calibrate_stream_needs_a_mean_selection(tiny):
    det = Detector.from_linear("d", tiny, H1, torch.ones(16), select="last")
    with pytest.raises(InputError, match="mean selections"):
        det.calibrate_stream(tiny, chats(3))
    assert not det.streams_mean


def test_stream_calibration_round_trips(tiny, tmp_path):
    det = lin(tiny, "d", H1)
    det.stream_threshold, det.stream_warmup = 0.123456789, 6
    det.save(tmp_path / "d")
    back = Detector.load(tmp_path / "d", tiny)
    assert back.stream_threshold == det.stream_threshold and back.stream_warmup == 6
    cfg = json.loads((tmp_path / "d" / "config.json").read_text())
    cfg["stream_warmup"] = "six"
    (tmp_path / "d" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ArtifactError, match="stream_warmup"):
        Detector.load(tmp_path / "d", tiny)


def _block_policy():
    return Policy.from_dict({"on_detector_error": "fail_closed", "detectors": {"d": {"block_above": "threshold"}}})


def test_guard_acts_on_the_running_mean_after_warmup(tiny):
    script = [50.0, 3.0, -1.0, -1.0, -1.0, 6.0, 5.0, 5.0, 5.0]
    det = scripted(tiny, "d", lambda t: script[t], threshold=100.0)
    det.stream_threshold, det.stream_warmup = 1.0, 2
    out = Guard(tiny, [det], policy=_block_policy()).generate(PROMPTS[0], max_new_tokens=9, min_new_tokens=9)[0]
    # step 0 (last prompt token) is not in the mean; means of steps 1.. are 3, 1, .33, 0, 1.2:
    # step 1's 3 > 1 is inside the warm-up, step 2's mean is not above 1
    assert out.blocked and out.actions[-1].kind == "block" and out.actions[-1].token == 5
    assert np.allclose(out.scores["d"], script[:6])
    assert np.isnan(out.policy_scores["d"][:2]).all()
    assert np.allclose(out.policy_scores["d"][2:], (np.cumsum(script[1:6]) / np.arange(1, 6))[1:])
    assert out.actions[-1].score == pytest.approx(1.2)


def test_guard_token_scoring_uses_the_item_threshold(tiny):
    det = scripted(tiny, "d", lambda t: 50.0, threshold=100.0)
    det.stream_threshold, det.stream_warmup = 1.0, 1
    out = Guard(tiny, [det], policy=_block_policy(), scoring="token").generate(PROMPTS[0], max_new_tokens=4, min_new_tokens=4)[0]
    assert not out.blocked and np.allclose(out.policy_scores["d"], 50.0)
    with pytest.raises(InputError, match="scoring"):
        Guard(tiny, [det], scoring="mean")


def test_correction_restarts_the_running_mean(tiny):
    det = scripted(tiny, "d", lambda t: 2.0 if t >= 2 else -1.0, seed=4)
    det.stream_threshold, det.stream_warmup = 0.0, 1
    pol = Policy.from_dict({"detectors": {"d": {"correct_above": 1.0, "patience": 50, "dose": 1.0}}})
    out = Guard(tiny, [det], policy=pol).generate(PROMPTS[0], max_new_tokens=10, min_new_tokens=10)[0]
    # running means from step 1: -1, .5, 1, 1.25 -> corrected at step 4; step 5 is averaged on its own
    correct = [a for a in out.actions if a.kind == "correct"]
    assert [a.token for a in correct] == [4]
    assert out.policy_scores["d"][5] == pytest.approx(2.0)


def test_monitor_actions_respect_the_warmup(tiny):
    det = lin(tiny, "d", H0, bias=10.0)  # every token far above
    det.stream_threshold, det.stream_warmup = 0.0, 3
    out = Guard(tiny, [det]).generate(PROMPTS[1], max_new_tokens=5, min_new_tokens=5)[0]
    assert [(a.kind, a.token) for a in out.actions] == [("monitor", 3)]  # 3 response tokens after step 0


def test_conditional_token_scores_average_to_its_item_score(tiny):
    from detectors.conditional import TENSORS, ConditionalDetector

    g = torch.Generator().manual_seed(3)
    k, d = 4, 16
    shapes = {"pca_p": (k, d), "mean_p": (d,), "scale_p": (k,), "W": (k, k), "u": (k,), "pca_r": (k, d), "mean_r": (d,), "scale_r": (k,)}
    parts = {n: torch.randn(*shapes[n], generator=g) for n in TENSORS}
    parts["scale_p"], parts["scale_r"] = parts["scale_p"].abs() + 0.5, parts["scale_r"].abs() + 0.5
    cond = ConditionalDetector.from_linear("cond", tiny, H1, torch.randn(16, generator=g), parts=parts, c=0.2)
    items = chats(6, seed=4)
    per_token = cond.token_scores(tiny, items)
    assert np.allclose([s[1:].mean() for s in per_token], cond.score(tiny, items), atol=1e-5)
    cond.fpr = 0.1
    assert cond.calibrate_stream(tiny, items, warmup=2) == cond.stream_threshold


def test_a_response_ending_inside_the_warmup_is_judged_on_its_mean(tiny):
    det = scripted(tiny, "d", lambda t: [0.0, 5.0, 1.0, 0.0, 0.0, 0.0][t], threshold=100.0)
    det.stream_threshold, det.stream_warmup = 2.5, 4
    guard = Guard(tiny, [det], policy=_block_policy())
    eos = int(guard._eos[0])
    width = []

    def end_at_step_2(ids, logits):  # the response ends with its second token (step 2)
        width.append(ids.shape[1]) if not width else None
        if ids.shape[1] - width[0] == 2:
            logits = torch.full_like(logits, float("-inf"))
            logits[:, eos] = 0.0
        return logits

    out = guard.generate(PROMPTS[0], max_new_tokens=6, logits_processor=end_at_step_2)[0]
    # two response tokens (steps 1, 2), mean 3 > 2.5: blocked before the end-of-turn token
    assert out.blocked and [(a.kind, a.token) for a in out.actions if a.kind == "block"] == [("block", 2)]
    assert out.policy_scores["d"][2] == pytest.approx(3.0) and len(out.token_ids) == 2
    det.calls = 0
    det.stream_threshold = 3.5  # thresholds are read when a Guard is built
    guard = Guard(tiny, [det], policy=_block_policy())
    width.clear()
    out = guard.generate(PROMPTS[0], max_new_tokens=6, logits_processor=end_at_step_2)[0]
    assert not out.blocked and out.finish_reason == "eos" and out.token_ids[-1] == eos
