"""The Guard on the tiny model: scoring inside the forward pass, policy tiers, escalation, red
lines, failure handling, cleanup and resource use."""

from __future__ import annotations

import gc
import json
import math
import tracemalloc

import numpy as np
import pytest
import torch
from tiny import random_conditional_detector

from circuits.errors import InputError
from circuits.generation import complete
from circuits.inputs import encode
from circuits.steering import ActivationAddition
from detectors.audit import AuditLog
from detectors.detector import Detector
from detectors.guard import DetectorFailure, EscalationContext, Guard
from detectors.policy import Policy, PolicyError
from detectors.router import Router

H0, H1 = "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"
PROMPTS = ["hello world", "the cat sat on the mat and the dog sat"]



def n_hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.hf_model.modules())


def lin(model, name, hook=H1, bias=0.0, threshold=0.0, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return Detector.from_linear(name, model, hook, torch.randn(model.d_model, generator=g) * scale, bias=bias, threshold=threshold)


class Scripted(Detector):
    """A detector whose score at step t is ``script(t)`` (a number, or one per row); ``fail_at``
    makes it raise at that step."""

    def score_tensor(self, acts):
        a = next(iter(acts.values()))
        t = self.calls
        self.calls += 1
        if t == getattr(self, "fail_at", None):
            raise RuntimeError(f"scripted failure at step {t}")
        v = self.script(t)
        if isinstance(v, (int, float)):
            return torch.full((a.shape[0],), float(v))
        return torch.tensor(v, dtype=torch.float32)


def scripted(model, name, script, hook=H1, threshold=0.0, seed=1, fail_at=None):
    d = lin(model, name, hook, threshold=threshold, seed=seed)
    d.__class__ = Scripted
    d.script, d.calls, d.fail_at = script, 0, fail_at
    return d


def policy(**detectors):
    return Policy.from_dict({"on_detector_error": "fail_closed", "detectors": detectors})


def hf_greedy(model, items, max_new_tokens):
    """Reference: transformers' generate on the same left-padded batch."""
    enc = encode(model.tokenizer, [[{"role": "user", "content": p}] for p in items], model.n_ctx)
    width = max(len(e.ids) for e in enc)
    ids = torch.zeros(len(enc), width, dtype=torch.long)
    mask = torch.zeros(len(enc), width, dtype=torch.long)
    for r, e in enumerate(enc):
        ids[r, width - len(e.ids):] = torch.tensor(e.ids)
        mask[r, width - len(e.ids):] = 1
    out = model.hf_model.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0)
    rows = []
    for r in range(len(enc)):
        gen = out[r, width:].tolist()
        if 3 in gen:
            gen = gen[: gen.index(3) + 1]
        rows.append(gen)
    return rows


# --------------------------------------------------------------------------------------------
# scoring
# --------------------------------------------------------------------------------------------
def test_greedy_tokens_match_hf_generate(tiny):
    guard = Guard(tiny, [lin(tiny, "a"), lin(tiny, "b", H0, seed=1)])
    outs = guard.generate(PROMPTS, max_new_tokens=10)
    ref = hf_greedy(tiny, sorted(PROMPTS, key=len), 10)
    by_len = sorted(range(2), key=lambda i: len(PROMPTS[i]))
    for k, i in enumerate(by_len):
        assert outs[i].token_ids == ref[k]
    single = guard.generate(PROMPTS[0], max_new_tokens=10)[0]
    assert single.token_ids == hf_greedy(tiny, PROMPTS[:1], 10)[0]


def test_scores_are_the_detector_read_at_each_step(tiny):
    dets = [lin(tiny, "a", H1, bias=0.3), lin(tiny, "b", H0, seed=1), Detector.from_linear("ab", tiny, [H0, H1], torch.randn(2, 16), bias=-0.1)]
    guard = Guard(tiny, dets)
    out = guard.generate(PROMPTS[1], max_new_tokens=6)[0]
    enc = encode(tiny.tokenizer, [[{"role": "user", "content": PROMPTS[1]}]], tiny.n_ctx)[0]
    full = torch.tensor([list(enc.ids) + out.token_ids])
    acts = {}
    with tiny.hooks([(h, lambda a, hp: acts.__setitem__(hp.name, a[0].detach().clone())) for h in (H0, H1)]):
        tiny.forward(full)
    n = len(out.token_ids)
    pos = torch.arange(len(enc.ids) - 1, len(enc.ids) - 1 + n)  # step t reads the position before token t
    for d in dets:
        expected = d.score_tensor({h: acts[h][pos] for h in d.hooks}).numpy()
        assert out.scores[d.name].shape == (n,)
        assert np.allclose(out.scores[d.name], expected, atol=1e-5)


def test_one_hook_per_distinct_hook_name(tiny):
    dets = [lin(tiny, "a", H1), lin(tiny, "b", H1, seed=1), lin(tiny, "c", H0, seed=2)]
    guard = Guard(tiny, dets)
    n0 = n_hooks(tiny)
    seen = []  # hooks exist only while a step runs: count them from inside one (the logits processor)
    it = guard.stream("hello world", max_new_tokens=4, logits_processor=lambda ids, s: seen.append(n_hooks(tiny)) or s)
    next(it)
    assert seen == [n0 + 2]  # H0 and H1, not one per detector
    assert n_hooks(tiny) == n0  # none while the stream is paused
    list(it)
    assert n_hooks(tiny) == n0 and seen == [n0 + 2] * 4


def test_monitor_only_policy(tiny):
    guard = Guard(tiny, [lin(tiny, "a", threshold=-100.0)])
    out = guard.generate("hello world", max_new_tokens=5)[0]
    assert not out.blocked and out.text == out.generated_text
    assert [a.kind for a in out.actions] == ["monitor"]  # one rising edge at token 0
    assert out.actions[0].token == 0 and out.correctors == []


def test_input_validation(tiny):
    d = lin(tiny, "a")
    with pytest.raises(InputError, match="unique"):
        Guard(tiny, [d, lin(tiny, "a", seed=3)])
    with pytest.raises(InputError):
        Guard(tiny, [])
    with pytest.raises(InputError):
        Guard(object(), [d])  # type: ignore[arg-type]
    guard = Guard(tiny, [d])
    with pytest.raises(InputError):
        guard.generate([], max_new_tokens=3)
    with pytest.raises(InputError):
        guard.generate("hi", max_new_tokens=0)
    with pytest.raises(InputError, match="chat must be"):
        Guard(tiny, [d], chat="yes")


def test_complete_wraps_plain_strings_as_the_guard_does(tiny):
    def decoded(rows):
        return [tiny.tokenizer.decode(r, skip_special_tokens=True).strip() for r in rows]

    wrapped = decoded(hf_greedy(tiny, PROMPTS, 6))
    assert complete(tiny, PROMPTS, max_new_tokens=6) == wrapped
    assert complete(tiny, PROMPTS, max_new_tokens=6, chat=True) == wrapped
    chats = [[{"role": "user", "content": p}] for p in PROMPTS]
    assert complete(tiny, chats, max_new_tokens=6, chat=False) == wrapped
    raw = complete(tiny, PROMPTS, max_new_tokens=6, chat=False)
    assert raw != wrapped  # raw text continues the string; no chat turn around it
    with pytest.raises(InputError, match="chat must be"):
        complete(tiny, PROMPTS, chat="yes")


# --------------------------------------------------------------------------------------------
# block, correct, escalate
# --------------------------------------------------------------------------------------------
def test_block_at_first_token(tiny):
    guard = Guard(tiny, [lin(tiny, "bad", bias=5.0, scale=1e-4)], policy=policy(bad={"block_above": 1.0}))
    outs = guard.generate(PROMPTS, max_new_tokens=6)
    for o in outs:
        assert o.blocked and o.blocked_by == "bad" and o.finish_reason == "blocked"
        assert o.text == guard.policy.refusal and o.token_ids == [] and o.generated_text == ""
        assert o.scores["bad"].shape == (1,)
        assert [a.kind for a in o.actions if a.kind != "monitor"] == ["block"]


def test_block_midway_keeps_earlier_tokens_out_of_the_text(tiny):
    det = scripted(tiny, "bad", lambda t: 3.0 if t >= 3 else -1.0)
    guard = Guard(tiny, [det], policy=policy(bad={"block_above": 2.0}))
    ref = Guard(tiny, [lin(tiny, "x")]).generate("hello world", max_new_tokens=8)[0]
    out = guard.generate("hello world", max_new_tokens=8)[0]
    assert out.blocked and out.token_ids == ref.token_ids[:3]
    assert out.text == guard.policy.refusal and out.generated_text == tiny.tokenizer.decode(ref.token_ids[:3], skip_special_tokens=True)
    assert len(out.scores["bad"]) == 4  # three tokens + the step that blocked
    blocks = [a for a in out.actions if a.kind == "block"]
    assert blocks[0].token == 3 and blocks[0].score == 3.0


def test_correct_only_the_flagged_row_then_move_up(tiny):
    # row 0 flagged from step 2 on and never clears; row 1 never flagged
    det = scripted(tiny, "syc", lambda t: [2.0 if t >= 2 else -1.0, -1.0], seed=4)
    pol = policy(syc={"correct_above": 1.0, "patience": 3, "dose": 40.0})
    guard = Guard(tiny, [det], policy=pol)
    ref = Guard(tiny, [lin(tiny, "x")]).generate(PROMPTS, max_new_tokens=12, batch_size=2)
    n0 = n_hooks(tiny)
    outs = guard.generate(PROMPTS, max_new_tokens=12, batch_size=2)
    assert n_hooks(tiny) == n0
    # batch rows are sorted by prompt length: PROMPTS[0] is row 0
    o0, o1 = outs
    kinds = [(a.kind, a.token) for a in o0.actions if a.kind != "monitor"]
    assert kinds == [("correct", 2), ("move_up", 5), ("block", 5)]
    assert o0.correctors[0]["corrector"] == "addition" and o0.correctors[0]["from_token"] == 3
    assert o0.token_ids[:3] == ref[0].token_ids[:3]
    assert o1.token_ids == ref[1].token_ids and not o1.blocked and o1.correctors == []


def test_correction_changes_the_generation(tiny):
    det = lin(tiny, "syc", H0, bias=5.0, scale=1.0)
    guard = Guard(tiny, [det], policy=policy(syc={"correct_above": 1.0, "patience": 100, "dose": 80.0}))
    base = Guard(tiny, [lin(tiny, "x")]).generate("hello world", max_new_tokens=10)[0]
    out = guard.generate("hello world", max_new_tokens=10)[0]
    assert [a.kind for a in out.actions if a.kind != "monitor"] == ["correct"]
    assert out.token_ids[0] == base.token_ids[0]  # token 0 was sampled before the correction
    assert out.token_ids != base.token_ids
    # correct=False records the flag but does not steer
    off = guard.generate("hello world", max_new_tokens=10, correct=False)[0]
    assert off.token_ids == base.token_ids
    assert [(a.kind, a.detail.get("applied")) for a in off.actions if a.kind != "monitor"] == [("correct", False)]
    # correct=True steers every row from the first generated token on: the last prompt token's
    # output (which picks token 0) is steered too, exactly as a plain generate under the corrector
    fdet = lin(tiny, "syc", H0, scale=1.0)
    forced = Guard(tiny, [fdet], policy=policy(syc={"dose": 80.0})).generate("hello world", max_new_tokens=10, correct=True)[0]
    acts = [a for a in forced.actions if a.kind != "monitor"]
    assert acts[0].kind == "correct" and acts[0].detail["forced"] and acts[0].token == 0
    ids = torch.tensor([encode(tiny.tokenizer, ["hello world"], tiny.n_ctx)[0].ids])
    with ActivationAddition(H0, -fdet.direction, alpha=80.0, positions="response").apply(tiny):
        ref = tiny.hf_model.generate(ids, max_new_tokens=10, do_sample=False, pad_token_id=0)[0, ids.shape[1]:]
    assert forced.token_ids == ref.tolist()[: len(forced.token_ids)]
    assert forced.token_ids[0] != base.token_ids[0]  # the first token is corrected, not only later ones
    # positions = "all": a forced correction also steers the prompt, as CAA does
    forced_all = Guard(tiny, [fdet], policy=policy(syc={"dose": 80.0, "positions": "all"})).generate("hello world", max_new_tokens=10, correct=True)[0]
    with ActivationAddition(H0, -fdet.direction, alpha=80.0, positions="all").apply(tiny):
        ref_all = tiny.hf_model.generate(ids, max_new_tokens=10, do_sample=False, pad_token_id=0)[0, ids.shape[1]:]
    assert forced_all.token_ids == ref_all.tolist()[: len(forced_all.token_ids)]
    assert [a.detail["positions"] for a in forced_all.actions if a.kind == "correct"] == ["all"]


def test_steering_lowers_the_detector_reading_downstream(tiny):
    """The addition of -dose * direction at H0 lowers a detector reading H0's direction at H1."""
    d0 = lin(tiny, "probe", H0, seed=7)
    out_plain = logits_free_scores(tiny, d0, 0.0)
    out_steer = logits_free_scores(tiny, d0, 30.0)
    assert out_steer < out_plain


def logits_free_scores(model, det, dose):
    from circuits.steering import logits_with

    reader = Detector.from_linear("r", model, det.hooks[0], det.weight[0])
    acts = []
    steer = ActivationAddition(det.hooks[0], -det.direction, alpha=dose)
    with steer.apply(model):
        with model.hooks([(det.hooks[0], lambda a, h: acts.append(a.detach().clone()))]):
            logits_with(model, ["the cat sat on the mat"])
    return float(reader.score_tensor({det.hooks[0]: acts[0]}).mean())


class Human:
    """A scripted person: returns the decisions in order and records the contexts."""

    def __init__(self, *decisions):
        self.decisions = list(decisions)
        self.contexts: list[EscalationContext] = []

    def __call__(self, ctx):
        self.contexts.append(ctx)
        return self.decisions.pop(0)


def test_escalation_allow_correct_block(tiny):
    pol = policy(syc={"escalate_above": 1.0, "correct_above": 5.0})
    script = lambda t: 2.0 if t >= 2 else 0.0  # noqa: E731
    human = Human("allow")
    out = Guard(tiny, [scripted(tiny, "syc", script)], policy=pol, on_escalate=human).generate("hello world", max_new_tokens=6)[0]
    assert len(human.contexts) == 1  # allowed once; not asked again for the same flag
    ctx = human.contexts[0]
    assert ctx.detector == "syc" and ctx.score == 2.0 and ctx.token_index == 2 and ctx.threshold == 1.0
    assert ctx.prompt == "hello world" and "hello world" in ctx.prompt_text and not ctx.red_line
    assert ctx.text == out.generated_text[: len(ctx.text)] and ctx.text
    assert not out.blocked and [d.decision for d in out.decisions] == ["allow"]

    human = Human("block")
    out = Guard(tiny, [scripted(tiny, "syc", script)], policy=pol, on_escalate=human).generate("hello world", max_new_tokens=6)[0]
    assert out.blocked and out.blocked_by == "syc" and out.decisions[0].decision == "block" and out.decisions[0].by == "callback"

    human = Human("correct")
    out = Guard(tiny, [scripted(tiny, "syc", script)], policy=pol, on_escalate=human).generate("hello world", max_new_tokens=6)[0]
    assert not out.blocked and [a.kind for a in out.actions if a.kind != "monitor"] == ["escalate", "correct"]
    assert out.correctors and out.correctors[0]["from_token"] == 3


def test_escalation_without_callback_fails_closed(tiny):
    pol = policy(syc={"escalate_above": 1.0})
    out = Guard(tiny, [scripted(tiny, "syc", lambda t: 2.0)], policy=pol).generate("hello world", max_new_tokens=4)[0]
    assert out.blocked and out.decisions[0].by == "default"


def test_red_line_block_survives_a_human_allow(tiny):
    pol = Policy.from_dict({
        "red_lines": ["dec"],
        "detectors": {"dec": {"escalate_above": 1.0, "block_above": 2.5}},
    })
    human = Human("allow", "allow", "allow")
    det = scripted(tiny, "dec", lambda t: {1: 1.5, 2: 1.5, 3: 3.0}.get(t, 0.0))
    out = Guard(tiny, [det], policy=pol, on_escalate=human).generate("hello world", max_new_tokens=8)[0]
    assert human.contexts[0].red_line
    assert [d.decision for d in out.decisions] == ["allow"]
    assert out.blocked and out.blocked_by == "dec"
    block = [a for a in out.actions if a.kind == "block"][0]
    assert block.token == 3 and block.detail["red_line"]


def test_red_line_cannot_be_relaxed_at_run_time(tiny, tmp_path):
    pol = Policy.from_dict({"red_lines": ["dec"], "detectors": {"dec": {"block_above": 1.0}}})
    guard = Guard(tiny, [lin(tiny, "dec", bias=5.0, scale=1e-4)], policy=pol)
    with pytest.raises(PolicyError, match="'dec'"):
        guard.policy = Policy.from_dict({"detectors": {"dec": {"block_above": 1.0}}})  # drops the red line
    with pytest.raises(PolicyError, match="'dec'"):
        guard.policy = guard.policy.merge(Policy.from_dict({"red_lines": ["dec"], "detectors": {"dec": {"block_above": 99.0}}}))
    with pytest.raises(PolicyError, match="'dec'"):
        guard.policy.update("dec", block_above="off")
    later = tmp_path / "later.yaml"
    later.write_text("detectors:\n  dec:\n    block_above: 50\n")
    with pytest.raises(PolicyError, match="'dec'"):
        guard.load_policy(later)
    assert guard.generate("hello world", max_new_tokens=3)[0].blocked  # still blocks
    # tightening at run time is allowed
    guard.policy = guard.policy.update("dec", block_above=0.5)
    assert guard.policy.resolve("dec", 0.0).block == 0.5
    # a red line naming a detector the Guard does not have is refused
    with pytest.raises(PolicyError, match="no detector"):
        Guard(tiny, [lin(tiny, "other")], policy=pol)


# --------------------------------------------------------------------------------------------
# failures leave no hooks and a complete record
# --------------------------------------------------------------------------------------------
def test_detector_failure_fail_closed(tiny, tmp_path):
    log = AuditLog(tmp_path / "a.jsonl")
    n0 = n_hooks(tiny)
    guard = Guard(tiny, [lin(tiny, "ok"), scripted(tiny, "flaky", lambda t: 0.0, fail_at=2)], policy=policy(), audit=log)
    outs = guard.generate(PROMPTS, max_new_tokens=6, batch_size=2)
    assert n_hooks(tiny) == n0
    for o in outs:
        assert o.blocked and o.blocked_by is None and len(o.token_ids) == 2
        assert o.errors[0]["detector"] == "flaky" and "scripted failure" in o.errors[0]["error"]
        assert math.isnan(o.scores["flaky"][2])
    recs = list(log.records())
    assert len(recs) == 2 and all(r["blocked"] and r["detector_errors"] for r in recs)


def test_detector_failure_fail_open(tiny):
    pol = Policy.from_dict({"on_detector_error": "fail_open"})
    guard = Guard(tiny, [lin(tiny, "ok"), scripted(tiny, "flaky", lambda t: 0.0, fail_at=1)], policy=pol)
    out = guard.generate("hello world", max_new_tokens=5)[0]
    assert not out.blocked and len(out.token_ids) == 5
    assert [a.kind for a in out.actions if a.kind != "monitor"] == ["detector_error"]
    assert math.isnan(out.scores["flaky"][1]) and np.isfinite(out.scores["ok"]).all()


def test_red_line_detector_always_fails_closed(tiny):
    pol = Policy.from_dict({"on_detector_error": "fail_open", "red_lines": ["flaky"]})
    guard = Guard(tiny, [scripted(tiny, "flaky", lambda t: -1.0, fail_at=1)], policy=pol)
    assert guard.generate("hello world", max_new_tokens=5)[0].blocked


def test_detector_failure_raise(tiny, tmp_path):
    log = AuditLog(tmp_path / "a.jsonl")
    n0 = n_hooks(tiny)
    pol = Policy.from_dict({"on_detector_error": "raise"})
    guard = Guard(tiny, [scripted(tiny, "flaky", lambda t: 0.0, fail_at=2)], policy=pol, audit=log)
    with pytest.raises(DetectorFailure, match="flaky"):
        guard.generate("hello world", max_new_tokens=6)
    assert n_hooks(tiny) == n0
    rec = list(log.records())[-1]
    assert rec["error"]["type"] == "DetectorFailure" and rec["finish_reason"] == "error"


class Boom(ActivationAddition):
    def _edit(self, act, scale):
        raise RuntimeError("corrector exploded")


def test_corrector_exception_cleans_up(tiny, tmp_path):
    router = Router()
    router.register("boom", lambda det, dose, model, state: Boom(det.hooks[0], det.direction, dose, "generated", state))
    log = AuditLog(tmp_path / "a.jsonl")
    det = scripted(tiny, "syc", lambda t: 2.0 if t >= 1 else 0.0)
    guard = Guard(tiny, [det], policy=policy(syc={"correct_above": 1.0, "corrector": "boom"}), router=router, audit=log)
    n0 = n_hooks(tiny)
    with pytest.raises(RuntimeError, match="corrector exploded"):
        guard.generate(PROMPTS, max_new_tokens=6, batch_size=2)
    assert n_hooks(tiny) == n0
    recs = list(log.records())
    assert len(recs) == 2
    for r in recs:
        assert r["error"] == {"type": "RuntimeError", "message": "corrector exploded"}
        assert [a["kind"] for a in r["actions"] if a["kind"] != "monitor"] == ["correct"]
        assert r["correctors"][0]["corrector"] == "boom"
        assert len(r["scores"]["per_token"]["syc"]) == 2  # steps 0 and 1 completed before step 2 raised


@pytest.mark.parametrize("exc", [RuntimeError("callback broke"), KeyboardInterrupt()])
def test_callback_exception_cleans_up(tiny, tmp_path, exc):
    def human(ctx):
        raise exc

    log = AuditLog(tmp_path / "a.jsonl")
    guard = Guard(tiny, [scripted(tiny, "syc", lambda t: 2.0 if t >= 2 else 0.0)], policy=policy(syc={"escalate_above": 1.0}), on_escalate=human, audit=log)
    n0 = n_hooks(tiny)
    with pytest.raises(type(exc)):
        guard.generate("hello world", max_new_tokens=6)
    assert n_hooks(tiny) == n0
    rec = list(log.records())[-1]
    assert rec["error"]["type"] == type(exc).__name__
    assert len(rec["scores"]["per_token"]["syc"]) == 2


def test_bad_callback_answer_is_an_error(tiny):
    guard = Guard(tiny, [scripted(tiny, "syc", lambda t: 2.0)], policy=policy(syc={"escalate_above": 1.0}), on_escalate=lambda c: "maybe")
    n0 = n_hooks(tiny)
    with pytest.raises(PolicyError, match="maybe"):
        guard.generate("hello world", max_new_tokens=3)
    assert n_hooks(tiny) == n0


# --------------------------------------------------------------------------------------------
# streaming, sampling, context manager
# --------------------------------------------------------------------------------------------
def test_stream_matches_generate(tiny):
    guard = Guard(tiny, [lin(tiny, "a"), lin(tiny, "b", H0, seed=2)])
    full = guard.generate(PROMPTS[1], max_new_tokens=8)[0]
    events = list(guard.stream(PROMPTS[1], max_new_tokens=8))
    assert events[-1].done and events[-1].output is not None
    toks = [e.token_id for e in events[:-1]]
    assert toks == full.token_ids
    assert [e.scores["a"] for e in events[:-1]] == pytest.approx(full.scores["a"].tolist(), abs=1e-6)
    assert "".join(e.text for e in events[:-1]) == full.generated_text


def test_stream_closed_early_cleans_up(tiny, tmp_path):
    log = AuditLog(tmp_path / "a.jsonl")
    guard = Guard(tiny, [lin(tiny, "a")], audit=log)
    n0 = n_hooks(tiny)
    for i, ev in enumerate(guard.stream("hello world", max_new_tokens=20)):
        if i == 2:
            break
    gc.collect()
    assert n_hooks(tiny) == n0
    rec = list(log.records())[-1]
    assert rec["error"]["type"] == "_Cancelled" and rec["n_generated"] == 3

    with Guard(tiny, [lin(tiny, "a")], audit=log) as g:
        it = g.stream("hello world", max_new_tokens=20)
        next(it)
        assert n_hooks(tiny) == n0  # hooks are only on while a step runs
    assert n_hooks(tiny) == n0
    assert list(log.records())[-1]["error"]["type"] == "_Cancelled"  # closed by the context manager


def test_stream_reports_a_block(tiny):
    guard = Guard(tiny, [scripted(tiny, "bad", lambda t: 5.0 if t == 2 else 0.0)], policy=policy(bad={"block_above": 1.0}))
    events = list(guard.stream("hello world", max_new_tokens=8))
    assert events[2].token_id is None and events[2].actions[-1].kind == "block"
    assert events[-1].output.blocked and len(events) == 4


def test_sampling_is_reproducible_with_a_seed(tiny):
    guard = Guard(tiny, [lin(tiny, "a")])
    a = guard.generate(PROMPTS, max_new_tokens=8, do_sample=True, temperature=1.5, top_k=20, top_p=0.9, seed=3)
    b = guard.generate(PROMPTS, max_new_tokens=8, do_sample=True, temperature=1.5, top_k=20, top_p=0.9, seed=3)
    assert [o.token_ids for o in a] == [o.token_ids for o in b]
    seeds = {tuple(guard.generate(PROMPTS[0], max_new_tokens=8, do_sample=True, temperature=2.0, seed=s)[0].token_ids) for s in range(6)}
    assert len(seeds) > 1


def test_batched_equals_single_for_unpadded_rows(tiny):
    guard = Guard(tiny, [lin(tiny, "a")])
    batch = guard.generate([PROMPTS[1], PROMPTS[1]], max_new_tokens=6, batch_size=2)
    single = guard.generate(PROMPTS[1], max_new_tokens=6)[0]
    for o in batch:
        assert o.token_ids == single.token_ids
        assert np.allclose(o.scores["a"], single.scores["a"], atol=1e-5)


# --------------------------------------------------------------------------------------------
# resources
# --------------------------------------------------------------------------------------------
def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            import os

            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: the tracemalloc bound still applies
        return 0


def test_thousand_generations_no_growth(tiny, tmp_path):
    dets = [lin(tiny, "a"), lin(tiny, "b", H0, seed=1), scripted(tiny, "c", lambda t: -1.0)]
    guard = Guard(tiny, dets, policy=policy(a={"correct_above": "threshold"}), audit=AuditLog(tmp_path / "a.jsonl", summary=True))
    n0 = n_hooks(tiny)
    for _ in range(50):  # warm-up (allocator caches, lazily built tables)
        guard.generate("hello world", max_new_tokens=3)
    gc.collect()
    rss0 = rss_bytes()
    tracemalloc.start()
    snap0 = tracemalloc.take_snapshot()
    peak_hooks = 0
    for i in range(1000):
        guard.generate(PROMPTS[i % 2], max_new_tokens=3)
        if i % 100 == 0:
            peak_hooks = max(peak_hooks, n_hooks(tiny))
    gc.collect()
    snap1 = tracemalloc.take_snapshot()
    tracemalloc.stop()
    growth = sum(s.size_diff for s in snap1.compare_to(snap0, "filename"))
    rss_growth = rss_bytes() - rss0
    assert n_hooks(tiny) == n0 and peak_hooks == n0
    assert growth < 512 * 1024, f"python heap grew by {growth} bytes over 1000 generations"
    assert rss_growth < 32 * 2**20, f"resident memory grew by {rss_growth / 2**20:.1f} MiB over 1000 generations"
    assert sum(1 for _ in open(tmp_path / "a.jsonl")) == 1050


# --------------------------------------------------------------------------------------------
# SmolLM2 integration
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_smollm2_guard_matches_generate_and_offline_scores(smollm2):
    hooks = ["blocks.10.hook_resid_post", "blocks.15.hook_resid_post", "blocks.20.hook_resid_post"]
    g = torch.Generator().manual_seed(0)
    dets = [Detector.from_linear(f"d{i}", smollm2, h, torch.randn(576, generator=g) / 24, threshold=0.0) for i, h in enumerate(hooks)]
    guard = Guard(smollm2, dets)
    prompts = ["Why is the sky blue?", "I think the moon is made of cheese. Am I right?"]
    outs = guard.generate(prompts, max_new_tokens=8, min_new_tokens=8, batch_size=2)
    # reference: transformers' generate on the same left-padded batch
    enc = [p.enc.ids for p in guard._prepare(prompts)]
    width = max(map(len, enc))
    ids = torch.full((2, width), guard._pad, dtype=torch.long)
    mask = torch.zeros((2, width), dtype=torch.long)
    for r, e in enumerate(enc):
        ids[r, width - len(e):], mask[r, width - len(e):] = torch.tensor(e), 1
    with torch.inference_mode():
        ref = smollm2.hf_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=guard._pad)
    for r in range(2):
        assert outs[r].token_ids == ref[r, width:].tolist()
    # scores equal the detectors applied offline to a full forward of prompt + generated tokens
    r = 1  # the longer prompt: no padding in its row
    full = torch.tensor([list(enc[r]) + outs[r].token_ids])
    acts = {}
    with smollm2.hooks([(h, lambda a, hp: acts.__setitem__(hp.name, a[0].detach().clone())) for h in hooks]):
        smollm2.forward(full)
    pos = torch.arange(len(enc[r]) - 1, len(enc[r]) - 1 + 8)
    for d in dets:
        expected = d.score_tensor({h: acts[h][pos] for h in d.hooks}).numpy()
        assert np.allclose(outs[r].scores[d.name], expected, atol=2e-3 * max(1.0, np.abs(expected).max()))


def test_conditional_detector_binds_its_readout_at_prefill(tiny):
    cond, _ = random_conditional_detector(tiny, H1, seed=3, bias=0.1, c=0.2)
    guard = Guard(tiny, [cond, lin(tiny, "plain", H0)])
    outs = guard.generate(PROMPTS, max_new_tokens=5, batch_size=2)
    for prompt, out in zip(PROMPTS, outs):
        enc = encode(tiny.tokenizer, [[{"role": "user", "content": prompt}]], tiny.n_ctx)[0]
        full = torch.tensor([list(enc.ids) + out.token_ids])
        acts = {}
        with tiny.hooks([(H1, lambda a, hp: acts.__setitem__(hp.name, a[0].detach().clone()))]):
            tiny.forward(full)
        n = len(out.token_ids)
        last_prompt = acts[H1][len(enc.ids) - 1]
        pos = torch.arange(len(enc.ids) - 1, len(enc.ids) - 1 + n)
        expected = cond.score_pairs(np.repeat(last_prompt.numpy()[None], n, 0), acts[H1][pos].numpy())
        assert np.allclose(out.scores["cond"], expected, atol=1e-4)


# --------------------------------------------------------------------------------------------
# immediate correction: the flagged step is re-run under the corrector
# --------------------------------------------------------------------------------------------
def test_immediate_correction_reaches_the_token_that_tripped_it(tiny):
    # row 0 is flagged at step 3, row 1 never: with ``immediate`` row 0's token 3 is chosen under
    # correction, exactly as a generate steered from the position that produces token 3
    script = lambda t: [2.0 if t == 3 else -1.0, -1.0]  # noqa: E731
    pol = {"correct_above": 1.0, "patience": 100, "dose": 80.0}
    late = Guard(tiny, [scripted(tiny, "syc", script, seed=4)], policy=policy(syc=pol)).generate(PROMPTS, max_new_tokens=10, batch_size=2)
    det = scripted(tiny, "syc", script, seed=4)
    guard = Guard(tiny, [det], policy=policy(syc={**pol, "immediate": True}))
    n0 = n_hooks(tiny)
    outs = guard.generate(PROMPTS, max_new_tokens=10, batch_size=2)
    assert n_hooks(tiny) == n0
    base = Guard(tiny, [lin(tiny, "x")]).generate(PROMPTS, max_new_tokens=10, batch_size=2)
    o0, o1 = outs
    assert o1.token_ids == base[1].token_ids  # the other row computes what it computed before
    assert o0.token_ids[:3] == base[0].token_ids[:3]
    assert late[0].token_ids[:4] == base[0].token_ids[:4]  # without immediate, token 3 is not steered
    enc = encode(tiny.tokenizer, [[{"role": "user", "content": PROMPTS[0]}]], tiny.n_ctx)[0]
    ids = torch.tensor([list(enc.ids) + base[0].token_ids[:3]])
    with ActivationAddition(H1, -det.direction, alpha=80.0, positions=len(enc.ids) + 2).apply(tiny):
        ref = tiny.hf_model.generate(ids, max_new_tokens=7, do_sample=False, pad_token_id=0)[0, ids.shape[1]:]
    assert o0.token_ids[3:] == ref.tolist()[: len(o0.token_ids) - 3]
    assert o0.token_ids[3] != base[0].token_ids[3]  # the flagged token itself was corrected
    assert o0.correctors[0]["from_token"] == 3
    act = next(a for a in o0.actions if a.kind == "correct")
    assert act.token == 3 and act.detail["immediate"] is True
    # the scores of the re-run step are the ones the policy acted on
    assert np.allclose(o0.scores["syc"][:4], [-1.0, -1.0, -1.0, 2.0])


def test_immediate_correction_at_prefill_equals_a_forced_correction(tiny):
    det = lin(tiny, "syc", H0, bias=50.0)  # flagged from the first step on
    pol = {"correct_above": 1.0, "patience": 100, "dose": 80.0, "immediate": True}
    out = Guard(tiny, [det], policy=policy(syc=pol)).generate(PROMPTS, max_new_tokens=8, batch_size=2)
    forced = Guard(tiny, [det], policy=policy(syc=pol)).generate(PROMPTS, max_new_tokens=8, batch_size=2, correct=True)
    plain = Guard(tiny, [lin(tiny, "x")]).generate(PROMPTS, max_new_tokens=8, batch_size=2)
    for o, f, p in zip(out, forced, plain):
        assert o.token_ids == f.token_ids
        assert o.token_ids[0] != p.token_ids[0]


def test_conditional_detector_corrects_each_row_along_its_bound_readout(tiny):
    from circuits.steering import GenerationState
    from detectors.policy import Resolved

    cond, g = random_conditional_detector(tiny, H1, seed=5)
    w = torch.randn(2, 16, generator=g)
    res = Resolved("cond", math.inf, 0.0, math.inf, math.inf, "addition", 3.0, 8, "", False)
    router = Router()
    c = router.build(router.route(cond, res), cond, tiny, GenerationState(), readout=w)
    assert c.vector.shape == (2, 16)
    assert torch.allclose(c.vector, -w / w.norm(dim=-1, keepdim=True))
    assert torch.allclose(router.build(router.route(cond, res), cond, tiny, GenerationState()).vector, -cond.direction)
    # in a Guard: flagged rows are steered, nothing is left on the model, and the audit says so
    guard = Guard(tiny, [cond], policy=policy(cond={"correct_above": "threshold - 1000", "dose": 30.0, "immediate": True}))
    n0 = n_hooks(tiny)
    outs = guard.generate(PROMPTS, max_new_tokens=5, batch_size=2)
    assert n_hooks(tiny) == n0
    plain = Guard(tiny, [lin(tiny, "x")]).generate(PROMPTS, max_new_tokens=5, batch_size=2)
    assert all(o.correctors and o.correctors[0]["from_token"] == 0 for o in outs)
    assert any(o.token_ids != p.token_ids for o, p in zip(outs, plain))


# --------------------------------------------------------------------------------------------
# rewind: the flagged token is taken back and re-chosen under correction
# --------------------------------------------------------------------------------------------
def _prefix_ids(model, prompt, tokens):
    enc = encode(model.tokenizer, [[{"role": "user", "content": prompt}]], model.n_ctx)[0]
    return enc, torch.tensor([list(enc.ids) + list(tokens)])


@pytest.mark.parametrize("corrector", ["avoid_token", "addition"])
@pytest.mark.parametrize("flag_step", [1, 3])
def test_rewind_takes_back_the_flagged_token_and_rechooses_it_corrected(tiny, corrector, flag_step):
    # the score of step t is read at token t - 1's position: with ``rewind`` that token is taken back
    script = lambda t: [2.0 if t == flag_step else -1.0, -1.0]  # noqa: E731
    det = scripted(tiny, "syc", script, seed=4)
    guard = Guard(tiny, [det], policy=policy(syc={"correct_above": 1.0, "patience": 100, "dose": 80.0,
                                                  "corrector": corrector, "rewind": True}))
    n0 = n_hooks(tiny)
    outs = guard.generate(PROMPTS, max_new_tokens=10, batch_size=2)
    assert n_hooks(tiny) == n0
    base = Guard(tiny, [lin(tiny, "x")]).generate(PROMPTS, max_new_tokens=10, batch_size=2)
    o0, o1 = outs
    k = flag_step - 1  # the token taken back
    assert o1.token_ids == base[1].token_ids  # the other row keeps what it had
    assert o0.token_ids[:k] == base[0].token_ids[:k]
    enc, ids = _prefix_ids(tiny, PROMPTS[0], base[0].token_ids[:k])
    taken = base[0].token_ids[k]
    if corrector == "addition":  # steered from the position that chose the taken-back token on
        with ActivationAddition(H1, -det.direction, alpha=80.0, positions=ids.shape[1] - 1).apply(tiny):
            ref = tiny.hf_model.generate(ids, max_new_tokens=10 - k, do_sample=False, pad_token_id=0)[0, ids.shape[1]:].tolist()
    else:  # that one position steered away from the taken token, toward the runner-up; then unsteered
        from circuits.token_avoidance import TokenAvoidance

        with torch.inference_mode():
            top = tiny.hf_model(input_ids=ids).logits[0, -1].topk(2).indices.tolist()
        instead = top[1] if top[0] == taken else top[0]
        c = TokenAvoidance(tiny, 1, alpha=80.0, positions=ids.shape[1] - 1)
        c.avoid(0, taken, instead)
        with torch.inference_mode(), c.apply(tiny):
            first = int(tiny.hf_model(input_ids=ids).logits[0, -1].argmax())
        nxt = torch.cat([ids, torch.tensor([[first]])], dim=1)
        ref = [first] + tiny.hf_model.generate(nxt, max_new_tokens=9 - k, do_sample=False, pad_token_id=0)[0, nxt.shape[1]:].tolist()
        act = next(a for a in o0.actions if a.kind == "correct")
        assert act.detail["instead_of"] == instead
    assert o0.token_ids[k:] == ref[: len(o0.token_ids) - k]
    assert o0.token_ids[k] != taken
    act = next(a for a in o0.actions if a.kind == "correct")
    assert act.token == flag_step and act.detail["rewind"] is True
    assert act.detail["taken_back"] == taken and act.detail["replaced_by"] == o0.token_ids[k]
    assert o0.correctors[0]["from_token"] == k
    # the policy's statistic is what it acted on; the token score is the re-chosen token's
    assert o0.policy_scores["syc"][flag_step] == 2.0 and o0.scores["syc"][flag_step] == -1.0


def test_rewind_starts_no_correction_at_step_0_and_needs_it_for_avoid_token(tiny):
    det = lin(tiny, "syc", H0, bias=50.0)  # flagged at every step, the prefill included
    pol = {"correct_above": 1.0, "patience": 100, "dose": 80.0, "rewind": True}
    out = Guard(tiny, [det], policy=policy(syc=pol)).generate(PROMPTS[:1], max_new_tokens=4)[0]
    acts = [a for a in out.actions if a.kind == "correct"]
    assert acts[0].token == 0 and acts[0].detail == {"applied": False, "reason": "rewind: no token said yet"}
    assert acts[1].token == 1 and acts[1].detail["rewind"] is True  # token 0 taken back
    with pytest.raises(PolicyError, match="avoid_token.*rewind"):
        Guard(tiny, [det], policy=policy(syc={"correct_above": 1.0, "corrector": "avoid_token"}))


def test_rewind_in_a_stream_retracts_the_text_it_took_back(tiny):
    script = lambda t: 2.0 if t == 3 else -1.0  # noqa: E731
    det = scripted(tiny, "syc", script, seed=4)
    guard = Guard(tiny, [det], policy=policy(syc={"correct_above": 1.0, "patience": 100, "dose": 80.0,
                                                  "corrector": "avoid_token", "rewind": True}))
    text, retracts = "", []
    for ev in guard.stream(PROMPTS[0], max_new_tokens=8):
        if ev.done:
            final = ev.output
            break
        retracts.append(ev.retract)
        text = text[: len(text) - ev.retract] + ev.text
    assert text == final.text
    assert retracts[3] > 0 and sum(retracts) == retracts[3]


def test_logits_processor_constrains_the_tokens_chosen(tiny):
    seen = []

    def only(ids, scores):
        seen.append(tuple(ids.shape))
        keep = torch.full_like(scores, float("-inf"))
        keep[:, [7, 11]] = 0.0
        return scores + keep

    outs = Guard(tiny, [lin(tiny, "x")]).generate(PROMPTS, max_new_tokens=4, batch_size=2, logits_processor=only)
    assert all(set(o.token_ids) <= {7, 11} for o in outs)
    width = max(len(e.ids) for e in encode(tiny.tokenizer, [[{"role": "user", "content": p}] for p in PROMPTS], tiny.n_ctx))
    assert seen == [(2, width + i) for i in range(4)]
    with pytest.raises(InputError, match="logits_processor must be callable"):
        Guard(tiny, [lin(tiny, "x")]).generate(PROMPTS, max_new_tokens=2, logits_processor=3)


def test_rewind_while_sampling_keeps_the_record_consistent(tiny, tmp_path):
    script = lambda t: [2.0 if t == 2 else -1.0, 2.0 if t == 4 else -1.0]  # noqa: E731 (calls, not steps: a rewind re-scores once)
    det = scripted(tiny, "syc", script, seed=4)
    audit = tmp_path / "audit.jsonl"
    guard = Guard(tiny, [det], policy=policy(syc={"correct_above": 1.0, "patience": 100, "dose": 80.0,
                                                  "corrector": "avoid_token", "rewind": True}), audit=str(audit))
    n0 = n_hooks(tiny)
    outs = guard.generate(PROMPTS, max_new_tokens=8, batch_size=2, do_sample=True, seed=3)
    assert n_hooks(tiny) == n0
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    for o, rec in zip(outs, records):
        act = next(a for a in o.actions if a.kind == "correct")
        assert act.detail["rewind"] and o.token_ids[act.token - 1] == act.detail["replaced_by"]
        assert any(a["kind"] == "correct" and a["detail"]["taken_back"] == act.detail["taken_back"] for a in rec["actions"])
    assert [next(a.token for a in o.actions if a.kind == "correct") for o in outs] == [2, 3]
    # the same seed gives the same run
    det.calls = 0
    again = guard.generate(PROMPTS, max_new_tokens=8, batch_size=2, do_sample=True, seed=3)
    assert [o.token_ids for o in again] == [o.token_ids for o in outs]
