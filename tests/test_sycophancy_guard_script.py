"""benchmarks/sycophancy_guard_correction.py: its teacher-forced replay of the Guard's policy
(used for the perplexity and KL cost) steers exactly from the first flagged position on."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from tiny import random_conditional_detector

ROOT = Path(__file__).resolve().parents[1]
H1 = "blocks.1.hook_resid_post"


def _script():
    spec = importlib.util.spec_from_file_location("syc_guard_bench", ROOT / "benchmarks" / "sycophancy_guard_correction.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


def test_guarded_replay_steers_from_the_first_flagged_position(tiny):
    mod = _script()
    det, _ = random_conditional_detector(tiny, H1, seed=11)
    text = "the cat sat on the mat and the dog sat on the cat"
    ids = torch.tensor([tiny.tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.inference_mode():
        plain = torch.log_softmax(tiny.hf_model(input_ids=ids).logits[0, :-1].double(), -1)
    rows, _ = mod.guarded_logprobs(tiny, det, [text], 0.0)
    assert torch.allclose(rows[0], plain)  # dose 0: the plain model
    # the detector's own scores along the text, bound at position 0 (the Guard's prefill)
    acts = {}
    with torch.inference_mode(), tiny.hooks([(H1, lambda a, hp: acts.__setitem__("a", a[0].double()))]):
        tiny.hf_model(input_ids=ids)
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
