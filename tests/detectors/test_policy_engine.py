"""The policy engine on tensors, without a model (issue 23 item 2): statistic in, commands out."""

from __future__ import annotations

import math

import pytest
import torch

from detectors.guard_types import DetectorFailure
from detectors.policy import Decision, Policy
from detectors.policy_engine import Block, Correct, Escalate, PolicyEngine, Regenerate


def engine(detectors: dict, batch: int = 2, steps: int = 8, mean=None, warmup=None, **kw) -> PolicyEngine:
    pol = Policy.from_dict({"detectors": detectors})
    names = list(detectors)
    res = [pol.resolve(n, 0.0) for n in names]
    mean = torch.tensor(mean if mean is not None else [False] * len(names))
    warmup = torch.tensor(warmup if warmup is not None else [1.0] * len(names))
    return PolicyEngine(res, names, mean, warmup, batch, steps, **kw)


def scores(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_below_every_tier_nothing_happens():
    e = engine({"a": {"correct_above": 1.0, "block_above": 2.0}})
    assert list(e.observe(0, scores([0.5], [0.9]))) == []
    assert e.statistic[0, :, 0].tolist() == pytest.approx([0.5, 0.9]) and e.actions == [[], []]


def test_block_and_correct_per_row_and_timing():
    e = engine({"a": {"correct_above": 1.0, "block_above": 2.0, "timing": "immediate"}})
    cmds = list(e.observe(0, scores([1.5], [2.5])))
    assert [type(c) for c in cmds] == [Correct, Block]
    assert cmds[0].row == 0 and cmds[0].timing == "immediate" and cmds[0].token == 0
    assert cmds[1].row == 1 and e.active.tolist() == [True, False] and e.blocked_at == [None, 0] and e.blocked_by == [None, "a"]
    # a corrected row is not started again; a stopped row is never acted on
    assert list(e.observe(1, scores([1.5], [9.0]))) == []


def test_patience_moves_up_to_block():
    e = engine({"a": {"correct_above": 1.0, "patience": 3}}, batch=1)
    kinds = []
    for t in range(6):
        kinds += [type(c).__name__ for c in e.observe(t, scores([1.5]))]
    assert kinds == ["Correct", "Block"]  # started at 0, still flagged 3 tokens later
    assert [a.kind for a in e.actions[0]] == ["correct", "move_up", "block"] and e.blocked_at == [3]


def test_escalation_is_answered_before_the_step_goes_on():
    e = engine({"a": {"escalate_above": 1.0, "correct_above": 5.0}}, batch=1)
    gen = e.observe(0, scores([2.0]))
    esc = next(gen)
    assert isinstance(esc, Escalate) and esc.reason == "tier" and esc.threshold == 1.0 and not esc.red_line
    follow = list(e.answer(esc, Decision.CORRECT, "callback"))
    assert [type(c) for c in follow] == [Correct] and list(gen) == []
    assert e.decisions[0][0].decision == "correct" and [a.kind for a in e.actions[0]] == ["escalate", "correct"]
    # allow: not asked again for the same flag
    e = engine({"a": {"escalate_above": 1.0}}, batch=1)
    esc = next(e.observe(0, scores([2.0])))
    assert list(e.answer(esc, Decision.ALLOW, "callback")) == []
    assert list(e.observe(1, scores([2.0]))) == [] and e.active.tolist() == [True]
    # block
    e = engine({"a": {"escalate_above": 1.0}}, batch=1)
    esc = next(e.observe(0, scores([2.0])))
    assert [type(c) for c in e.answer(esc, Decision.BLOCK, "default")] == [Block]
    assert e.actions[0][-1].detail["reason"] == "escalation_without_callback"


def test_red_line_allow_does_not_lift_the_block_tier():
    pol = Policy.from_dict({"red_lines": ["a"], "detectors": {"a": {"escalate_above": 1.0, "block_above": 3.0}}})
    e = PolicyEngine([pol.resolve("a", 0.0)], ["a"], torch.tensor([False]), torch.tensor([1.0]), 1, 4)
    esc = next(e.observe(0, scores([2.0])))
    assert esc.red_line
    list(e.answer(esc, Decision.ALLOW, "callback"))
    assert e.actions[0][-1].detail["note"].startswith("red line")
    assert [type(c) for c in e.observe(1, scores([4.0]))] == [Block]


def test_running_mean_with_warmup_and_restart_on_correction():
    e = engine({"m": {"correct_above": 1.0}}, batch=1, mean=[True], warmup=[3.0])
    assert list(e.observe(0, scores([9.0]))) == []  # step 0 (the prompt's last token) is not in the mean
    assert list(e.observe(1, scores([2.0]))) == [] and math.isnan(e.statistic[1, 0, 0])  # warming up
    assert list(e.observe(2, scores([2.0]))) == []
    cmds = list(e.observe(3, scores([-0.4])))  # mean of 2, 2, -0.4 = 1.2 > 1
    assert [type(c) for c in cmds] == [Correct] and e.statistic[3, 0, 0].item() == pytest.approx(1.2)
    assert e.running_count[0, 0] == 0  # the corrected continuation is judged on its own
    # a response ending inside the warm-up is judged on its whole mean
    e = engine({"m": {"correct_above": 1.0}}, batch=2, mean=[True], warmup=[5.0])
    list(e.observe(0, scores([0.0], [0.0])))
    list(e.observe(1, scores([3.0], [0.5])))
    cmds = list(e.judge_short(1, torch.tensor([True, True])))
    assert [(type(c), c.row) for c in cmds] == [(Correct, 0)]


def test_non_finite_score_and_detector_failures():
    e = engine({"a": {"correct_above": 1.0}, "b": {}}, error_mode="fail_open")
    assert list(e.observe(0, scores([math.nan, 0.0], [0.0, 0.0]))) == []  # NaN: a failure, fail open
    assert e.live.tolist() == [False, True] and e.errors[0]["detector"] == "a" and e.active.all()
    e = engine({"a": {"correct_above": 1.0}}, error_mode="fail_closed")
    cmds = list(e.fail(2, [([0], RuntimeError("boom"))]))
    assert [type(c) for c in cmds] == [Block, Block] and e.blocked_by == [None, None]
    e = engine({"a": {}}, error_mode="raise")
    with pytest.raises(DetectorFailure, match="'a' failed at token 1"):
        list(e.fail(1, [([0], "bad")]))


def test_regenerate_timing_stops_the_row_once():
    e = engine({"a": {"correct_above": 1.0, "timing": "regenerate"}}, batch=1)
    cmds = list(e.observe(2, scores([2.0])))
    assert [type(c) for c in cmds] == [Regenerate] and e.stopped_at == [2] and e.regen == [(0, 0)]
    e2 = engine({"a": {"correct_above": 1.0, "timing": "regenerate"}}, batch=1, attempt=2)
    c = e2.force(0, 0, {"regenerated": True})
    assert c.timing == "forced" and e2.corrected(0, 0)
    assert [type(x) for x in e2.observe(2, scores([2.0]))] == []  # already correcting: patience counts


def test_correct_never_records_without_correcting_and_rewind_waits_for_a_token():
    e = engine({"a": {"correct_above": 1.0}}, batch=1, correct="never")
    assert list(e.observe(0, scores([2.0]))) == [] and e.actions[0][0].detail["applied"] is False
    e = engine({"a": {"correct_above": 1.0, "timing": "rewind"}}, batch=1)
    assert list(e.observe(0, scores([2.0]))) == []  # nothing said yet at step 0
    cmds = list(e.observe(1, scores([2.0])))
    assert cmds[0].timing == "rewind" and cmds[0].action.detail == {"rewind": True}
