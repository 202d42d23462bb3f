"""benchmarks/sycophancy_guard_correction.py and sycophancy_rewind_correction.py: their
teacher-forced replays of the Guard's policy (used for the perplexity and KL cost) steer exactly
where the Guard would."""

from __future__ import annotations

import torch
from benchmark_script import load_benchmark
from tiny import random_conditional_detector

H1 = "blocks.1.hook_resid_post"


def _script(name: str = "sycophancy_guard_correction"):
    return load_benchmark(name)


def _text_and_detector(tiny):
    """A random conditional detector, a text, its ids, the plain model's log-probs and the
    detector hook's activations along it."""
    det, _ = random_conditional_detector(tiny, H1, seed=11)
    text = "the cat sat on the mat and the dog sat on the cat"
    ids = torch.tensor([tiny.tokenizer(text, add_special_tokens=False)["input_ids"]])
    acts = {}
    with torch.inference_mode(), tiny.hooks([(H1, lambda a, hp: acts.__setitem__("a", a[0].double()))]):
        plain = torch.log_softmax(tiny.hf_model(input_ids=ids).logits[0, :-1].double(), -1)
    return det, text, ids, plain, acts


def test_guarded_replay_steers_from_the_first_flagged_position(tiny):
    mod = _script()
    det, text, ids, plain, acts = _text_and_detector(tiny)
    rows, _ = mod.guarded_logprobs(tiny, det, [text], 0.0)
    assert torch.allclose(rows[0], plain)  # dose 0: the plain model
    # the detector's own scores along the text, bound at position 0 (the Guard's prefill)
    w, b = det.readout(acts["a"][:1])
    s = acts["a"][:-1] @ w[0] + b[0]
    top = torch.topk(s, 2).values
    thr, k = float(top.mean()), int(s.argmax())  # only position k is above the threshold
    assert k > 0
    rows, started = mod.guarded_logprobs(tiny, det, [text], 40.0, threshold=thr)
    assert started == [True]
    assert torch.allclose(rows[0][:k], plain[:k])  # before the flag: untouched
    assert not torch.allclose(rows[0][k], plain[k])  # the flagged position's own output is steered (immediate)
    none, started = mod.guarded_logprobs(tiny, det, [text], 40.0, threshold=float(s.max()) + 1)
    assert started == [False] and torch.allclose(none[0], plain)


def test_rewind_replay_steers_only_the_position_that_chose_the_flagged_token(tiny):
    mod = _script("sycophancy_rewind_correction")
    det, text, ids, plain, acts = _text_and_detector(tiny)
    rows, _ = mod.rewind_logprobs(tiny, det, [text], 0.0)
    assert torch.allclose(rows[0], plain)
    w, b = det.readout(acts["a"][:1])
    s = acts["a"][1:] @ w[0] + b[0]  # token p's score at its own position p (p >= 1)
    thr = float(torch.topk(s, 2).values.mean())
    p = int(s.argmax()) + 1  # the only flagged token
    rows, started = mod.rewind_logprobs(tiny, det, [text], 40.0, threshold=thr)
    assert started == [True]
    assert torch.allclose(rows[0][: p - 1], plain[: p - 1])  # before the position that chose it: untouched
    taken = int(ids[0, p])
    top = torch.topk(plain[p - 1], 2).indices.tolist()
    instead = top[0] if top[0] != taken else top[1]
    gap = lambda r: float(r[p - 1, taken] - r[p - 1, instead])  # noqa: E731
    more, _ = mod.rewind_logprobs(tiny, det, [text], 400.0, threshold=thr)
    # where it was chosen, the flagged token falls behind the runner-up, more so at a higher dose
    assert gap(more[0]) < gap(rows[0]) < gap(plain)
    none, started = mod.rewind_logprobs(tiny, det, [text], 40.0, threshold=float(s.max()) + 1)
    assert started == [False] and torch.allclose(none[0], plain)
