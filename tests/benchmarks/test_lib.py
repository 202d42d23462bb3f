"""Unit tests of the suite's analysis functions (benchmarks.lib) on the tiny model: the parts whose
correctness a config run cannot show (pairs, replays of the Guard's policy, counting)."""

from __future__ import annotations

import pytest
import torch
from tiny import random_conditional_detector

from benchmarks.suite import BenchmarkConfigError, Config

H1 = "blocks.1.hook_resid_post"


def test_instruction_vector_pairs_differ_only_in_the_instruction():
    """The instruction-contrast vector of benchmarks/deception_instruction_vector.py is built from
    pairs that say the same thing after a dishonest vs an honest instruction (positive first)."""
    import benchmarks.lib.deception_vectors as mod
    pairs = mod.instructed_pairs()
    assert len(pairs) >= 100
    for lie, honest in pairs:
        assert lie[-1] == honest[-1] and lie[-1]["role"] == "assistant"
        assert lie[0]["content"] != honest[0]["content"]
        assert any(w in lie[0]["content"] for w in ("dishonest", "deceitful", "deceptive", "lies"))
        assert any(w in honest[0]["content"] for w in ("honest", "truthful", "sincere", "truth"))
    assert not set(mod.DEV_TOPICS) & set(mod.TOPICS[:30])  # chosen on topics the test never uses
    assert len(set(mod.CONFIRM_TOPICS)) == 90 and not set(mod.CONFIRM_TOPICS) & (set(mod.DEV_TOPICS) | set(mod.TOPICS))
    seen = {t.lower() for t in (*mod.DEV_TOPICS, *mod.TOPICS, *mod.CONFIRM_TOPICS)}
    assert len(set(mod.CONFIRM_TOPICS_2)) == 90 and not {t.lower() for t in mod.CONFIRM_TOPICS_2} & seen
    seen |= {t.lower() for t in mod.CONFIRM_TOPICS_2}
    assert len(set(mod.CONFIRM_TOPICS_3)) == 138 and not {t.lower() for t in mod.CONFIRM_TOPICS_3} & seen


def test_content_pairs_share_the_lie_prompt_and_differ_in_the_answer(tiny):
    """--pairs content: the model's answer to the lie prompt vs its answer to the honest twin, both
    after the lie prompt (positive first); prompt_last is refused when the config loads."""

    from detectors import Detector

    import benchmarks.lib.deception_vectors as mod
    det = Detector.from_linear("d", tiny, "blocks.1.hook_resid_post", torch.ones(tiny.d_model), threshold=0.0)
    pairs = mod.content_pairs(tiny, det, ["cat", "dog"])
    assert len(pairs) == 2 * len(mod.PROMPT_SETS)
    lies = [lie.format(t=t) for lie, _ in mod.PROMPT_SETS.values() for t in ("cat", "dog")]
    assert [a[0] for a, _ in pairs] == lies and all(a[0] == b[0] for a, b in pairs)
    declined = mod.content_pairs(tiny, det, ["cat", "dog"], decline=True)
    assert [d[1] for _, d in declined] == [mod.DECLINE + b[1] for _, b in pairs] and [a for a, _ in declined] == [a for a, _ in pairs]
    for pairs in ("content", "decline"):  # refused when the config loads, before any model
        with pytest.raises(BenchmarkConfigError, match="prompt_last is zero"):
            Config.load("deception_instruction_vector", overrides={"pairs": pairs})


def test_regenerate_benchmark_counts_what_the_guard_did(tiny, tmp_path):
    """The regenerate benchmark: the policy it deploys regenerates every flagged row under
    the vector, and its per-set summary counts regenerated, blocked and refusal-like rows."""
    from circuits.steering_vectors import build_caa
    from detectors import Detector
    from detectors.policy import Policy

    import benchmarks.lib.deception_regenerate as mod
    hook = "blocks.1.hook_resid_post"
    sv = build_caa(tiny, [("a cat sat", "the dog ran"), ("red hat", "big mat")], hook, select="all_mean")
    sv.save(tmp_path / "v")
    det = Detector.from_linear("deception", tiny, hook, torch.ones(tiny.d_model), threshold=-1e9)
    det.stream_threshold, det.stream_warmup = 1e9, 1
    pol = mod.regen_policy(str(tmp_path / "v"), 4.0)
    r = pol.resolve("deception", 0.0)
    assert r.regenerate and r.positions == "all" and r.corrector == f"vector:{tmp_path / 'v'}" and r.dose == 4.0
    prompts = ["hello world", "a b c"]
    got = mod.run_set(tiny, det, prompts, pol, None)
    plain = mod.run_set(tiny, det, prompts, Policy.default(), False)
    assert got["regenerated"] == 1.0 and got["blocked"] == 1.0  # flagged before and after (threshold -inf)
    assert plain["regenerated"] == 0.0 and plain["blocked"] == 0.0 and "outputs" not in mod.summary(got)
    assert got["responses"] != plain["responses"]


def test_regenerate_benchmark_replays_the_policy_on_the_corpus(tiny):
    """The deployed perplexity steers exactly the windows the policy would regenerate: none gives
    the plain perplexity, all gives the perplexity with the vector on every token."""
    from circuits.steering import ActivationAddition
    from detectors import Detector

    import benchmarks.lib.deception_regenerate as mod
    hook = "blocks.1.hook_resid_post"
    texts = ["a cat sat on the mat", "the dog ran far away today", "red hat big mat"]
    corr = [ActivationAddition(hook, torch.ones(tiny.d_model), alpha=3.0, positions="all")]
    plain, steered = mod.perplexity(tiny, texts), mod.perplexity(tiny, texts, corr)
    assert abs(plain - steered) > 1e-3
    assert mod.deployed_perplexity(tiny, texts, [False] * 3, corr) == pytest.approx(plain, rel=1e-6)
    assert mod.deployed_perplexity(tiny, texts, [True] * 3, corr) == pytest.approx(steered, rel=1e-6)
    one = mod.deployed_perplexity(tiny, texts, [True, False, False], corr)
    assert min(plain, steered) < one < max(plain, steered)
    det = Detector.from_linear("deception", tiny, hook, torch.ones(tiny.d_model), threshold=-1e9)
    det.stream_threshold, det.stream_warmup = 1e9, 1
    assert mod.regenerated_windows(tiny, det, texts) == [True] * 3
    det.threshold = 1e9
    assert mod.regenerated_windows(tiny, det, texts) == [False] * 3
    det.stream_threshold = -1e9  # flagged while generated, though not at the end
    assert mod.regenerated_windows(tiny, det, texts) == [True] * 3
    with pytest.raises(BenchmarkConfigError, match=r"confirm_sets = \[2, 3\]"):
        Config.load("deception_regenerate", overrides={"dev_topics": "120", "confirm_sets": [1, 2]})


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
    import benchmarks.lib.sycophancy_guard as mod
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
    import benchmarks.lib.sycophancy_rewind as mod
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
