"""The policy's ``regenerate``: a finished response whose mean score is above the correct tier (at
the item threshold) is generated again from its first token under correction, once; a second
attempt still flagged moves up a tier."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_guard import H1, lin, n_hooks

from detectors.guard import Guard
from detectors.policy import Policy, PolicyError

PROMPTS = ["hello world", "the cat sat on the mat and the dog sat", "a b c", "one two three four", "red hat",
           "dog ran to the big mat"]
GEN = dict(max_new_tokens=8, min_new_tokens=8)


def detector(tiny):
    d = lin(tiny, "d", H1, seed=3, scale=20.0)
    d.stream_threshold, d.stream_warmup = 1e9, 1  # mid-response tiers never fire: only the end judgement acts
    return d


def pol(**kw):
    return Policy.from_dict({"detectors": {"d": {"correct_above": "threshold", "regenerate": True, "dose": 8.0,
                                                 "positions": "all", **kw}}})


def means(outs):
    return np.array([float(np.mean(o.scores["d"][1:])) for o in outs])


def test_flagged_rows_are_generated_again_corrected_and_the_rest_untouched(tiny, tmp_path):
    det = detector(tiny)
    plain = Guard(tiny, [det]).generate(PROMPTS, batch_size=1, **GEN)
    m = means(plain)
    det.threshold = float(np.median(m))  # half the rows end above it
    flagged = m > det.threshold
    assert 0 < flagged.sum() < len(PROMPTS)
    forced = Guard(tiny, [det], policy=pol(regenerate=False)).generate(PROMPTS, batch_size=1, correct=True, **GEN)
    still = means(forced) > det.threshold
    audit = tmp_path / "audit.jsonl"
    outs = Guard(tiny, [det], policy=pol(block_above="off"), audit=audit).generate(PROMPTS, batch_size=1, **GEN)
    assert n_hooks(tiny) == 0
    for i, o in enumerate(outs):
        kinds = [a.kind for a in o.actions]
        if not flagged[i]:
            assert o.token_ids == plain[i].token_ids and "regenerate" not in kinds and not o.blocked
            continue
        assert o.token_ids == forced[i].token_ids  # the same as correction on from the first token
        assert o.generated_text != plain[i].generated_text
        regen = o.actions[0]
        assert regen.kind == "regenerate" and regen.token == 0
        assert regen.detail["discarded_text"] == plain[i].generated_text
        assert regen.score == pytest.approx(m[i], abs=1e-5)
        assert any(a.kind == "correct" and a.detail.get("regenerated") for a in o.actions)
        assert o.correctors and o.correctors[0]["from_token"] == 0
        # a second attempt still flagged moves up; with no tier above "correct" that is a block
        assert o.blocked == bool(still[i]) and ("move_up" in kinds) == bool(still[i])
        if o.blocked:
            assert o.text == Policy.default().refusal and o.generated_text == forced[i].generated_text
    recs = [json.loads(x) for x in audit.read_text().splitlines()]
    assert len(recs) == len(PROMPTS) + int(flagged.sum())  # every attempt has its record
    assert sorted(r["settings"]["attempt"] for r in recs) == [1] * len(PROMPTS) + [2] * int(flagged.sum())


def test_a_second_attempt_still_flagged_is_escalated(tiny):
    det = detector(tiny)
    det.threshold = -1e9  # every response is flagged, corrected or not
    asked = []

    def person(ctx):
        asked.append(ctx)
        return "allow" if len(asked) == 1 else "block"

    blocked = Guard(tiny, [det], policy=pol()).generate(PROMPTS[:2], batch_size=2, **GEN)  # no tier above correct
    for o in blocked:
        assert o.blocked and o.blocked_by == "d" and o.text == Policy.default().refusal
        assert [(a.kind, a.detail.get("to")) for a in o.actions][-2:] == [("move_up", "block"), ("block", None)]
    g = Guard(tiny, [det], policy=pol(escalate_above=1e12), on_escalate=person)
    outs = g.generate(PROMPTS[:2], batch_size=2, **GEN)
    assert [c.reason for c in asked] == ["regenerated_still_flagged"] * 2
    assert asked[0].text == outs[0].generated_text or asked[0].text == outs[1].generated_text
    assert sorted(o.blocked for o in outs) == [False, True]
    for o in outs:
        assert [d.decision for d in o.decisions] in (["allow"], ["block"])
        assert [a.kind for a in o.actions][:2] == ["regenerate", "correct"]
    assert n_hooks(tiny) == 0


def screen(events):
    """What a terminal shows after the stream's events (retract = characters to delete first)."""
    shown = ""
    for ev in events[:-1]:
        shown = shown[: len(shown) - ev.retract] + ev.text
    return shown


def test_no_regeneration_without_correction_and_a_stream_retracts_the_first_attempt(tiny):
    det = detector(tiny)
    det.threshold = -1e9
    g = Guard(tiny, [det], policy=pol())
    plain = Guard(tiny, [det]).generate(PROMPTS[:2], **GEN)
    never = g.generate(PROMPTS[:2], correct=False, **GEN)
    assert [o.token_ids for o in never] == [o.token_ids for o in plain]
    for o in never:
        (a,) = [a for a in o.actions if a.kind == "regenerate"]
        assert a.detail["applied"] is False and a.detail["reason"] == "correct=False"
    events = list(g.stream(PROMPTS[0], **GEN))
    final, gen = events[-1].output, g.generate(PROMPTS[0], **GEN)[0]
    assert final.token_ids == gen.token_ids and final.blocked == gen.blocked
    assert [a.kind for a in final.actions] == [a.kind for a in gen.actions] and final.actions[0].kind == "regenerate"
    assert screen(events) == final.generated_text  # the new attempt's first event retracted the discarded one
    assert len(final.actions[0].detail["discarded_text"]) in [ev.retract for ev in events]
    always = g.generate(PROMPTS[:2], correct=True, **GEN)  # corrected from the start: nothing to regenerate
    assert all("regenerate" not in [a.kind for a in o.actions] for o in always)
    assert n_hooks(tiny) == 0


def test_regenerate_needs_a_mean_detector_and_a_correct_tier(tiny):
    det = detector(tiny)
    det.select = "last"
    with pytest.raises(PolicyError, match="regenerate judges a finished response by its mean"):
        Guard(tiny, [det], policy=pol())
    with pytest.raises(PolicyError, match="needs a correct tier"):
        Guard(tiny, [detector(tiny)], policy=pol(correct_above="off"))
    with pytest.raises(PolicyError, match="regenerate: expected true or false"):
        Policy.from_dict({"detectors": {"d": {"regenerate": "yes"}}})
    assert Policy.default().resolve("d", 0.0).regenerate is False


def test_a_flag_during_the_response_stops_it_and_regenerates_it(tiny, tmp_path):
    det = detector(tiny)
    det.threshold, det.stream_threshold, det.stream_warmup = 1e9, -1e9, 2  # every row trips once warmed up
    forced = Guard(tiny, [det], policy=pol(regenerate=False)).generate(PROMPTS[:3], correct=True, **GEN)
    audit = tmp_path / "a.jsonl"
    outs = Guard(tiny, [det], policy=pol(patience=50), audit=audit).generate(PROMPTS[:3], **GEN)
    for p, o, f in zip(PROMPTS, outs, forced):
        assert o.token_ids == f.token_ids and not o.blocked
        events = list(Guard(tiny, [det], policy=pol(patience=50)).stream(p, **GEN))
        assert events[-1].output.token_ids == f.token_ids and screen(events) == f.generated_text
        discarded = events[-1].output.actions[0].detail["discarded_text"]
        assert events[2].token_id is None and events[2].actions[-1].kind == "regenerate"  # stopped at step 2
        assert events[3].retract == len(discarded) and events[3].index == 0  # the new attempt starts over
        regen = o.actions[0]
        assert regen.kind == "regenerate" and regen.detail["during"] == "response"
        assert regen.detail["discarded_tokens"] == 2
        assert [a["kind"] for a in regen.detail["discarded_actions"]] == ["monitor"]  # the monitor tier saw it too
    recs = [json.loads(x) for x in audit.read_text().splitlines()]
    first = [r for r in recs if r["settings"]["attempt"] == 1]
    assert len(first) == 3 and {r["finish_reason"] for r in first} == {"regenerate"}
    assert n_hooks(tiny) == 0
