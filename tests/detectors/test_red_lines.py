"""Adversarial red-line tests (issue 24, defect 1): every way a non-finite threshold could reach a
policy or the Guard's lock, and every way a red line could be relaxed at run time."""

from __future__ import annotations

import math

import pytest
import test_guard as tg

from detectors.guard import Guard
from detectors.policy import (
    DetectorPolicy,
    Policy,
    PolicyError,
    Threshold,
    check_not_relaxed,
)

NON_FINITE_STRINGS = ["nan", "NaN", " nan ", "inf", "-inf", "+inf", "Infinity", "-infinity", "1e400", "-1e999",
                      "threshold + nan", "threshold * inf", "threshold + 1e400", "threshold * 1e999", "threshold - inf"]
NON_FINITE_NUMBERS = [math.nan, math.inf, -math.inf, float("1e400")]


def red(block=1.0):
    return Policy.from_dict({"red_lines": ["hi"], "detectors": {"hi": {"block_above": block}}})


@pytest.mark.parametrize("value", NON_FINITE_STRINGS + NON_FINITE_NUMBERS)
@pytest.mark.parametrize("field", ["monitor_above", "correct_above", "escalate_above", "block_above"])
def test_non_finite_thresholds_are_refused_naming_detector_and_field(value, field):
    with pytest.raises(PolicyError, match=rf"detectors\.hi\.{field}"):
        Policy.from_dict({"detectors": {"hi": {field: value}}})
    with pytest.raises(PolicyError, match=rf"defaults\.{field}"):
        Policy.from_dict({"defaults": {field: value}})
    with pytest.raises(PolicyError, match=rf"hi.*{field}"):
        Policy().update("hi", **{field: value})


def test_non_finite_threshold_objects_cannot_be_built():
    for v in NON_FINITE_NUMBERS:
        for kind in ("abs", "offset", "scale"):
            with pytest.raises(PolicyError, match="finite"):
                Threshold(kind, v)
    with pytest.raises(PolicyError, match="kind"):
        Threshold("exp", 1.0)
    with pytest.raises(PolicyError, match="finite"):  # a hand-built DetectorPolicy cannot smuggle one in
        Policy(detectors={"hi": DetectorPolicy(block_above=Threshold("abs", math.nan))}, red_lines={"hi"})


@pytest.mark.parametrize("toml_value", ['"nan"', '"inf"', '"-inf"', "nan", "inf", "-inf", '"threshold * 1e400"'])
def test_non_finite_in_files(tmp_path, toml_value):
    f = tmp_path / "p.toml"
    f.write_text(f'red_lines = ["hi"]\n[detectors.hi]\nblock_above = {toml_value}\n')
    with pytest.raises(PolicyError, match=r"p\.toml.*detectors\.hi\.block_above"):
        Policy.load(f)
    y = tmp_path / "p.yaml"
    y.write_text(f"detectors:\n  hi:\n    block_above: {toml_value.strip(chr(34))}\n")
    y2 = tmp_path / "q.yaml"
    y2.write_text("detectors:\n  hi:\n    block_above: .nan\n")
    for path in (y, y2):
        with pytest.raises(PolicyError, match=r"detectors\.hi\.block_above"):
            Policy.load(path)


def test_expressions_resolving_to_non_finite_are_refused():
    p = Policy.from_dict({"detectors": {"hi": {"correct_above": "threshold * 1e300"}}})
    with pytest.raises(PolicyError, match=r"'hi'.*correct_above"):
        p.resolve("hi", 1e300)  # finite expression, non-finite number
    with pytest.raises(PolicyError, match=r"'hi'.*monitor_above"):
        Policy().resolve("hi", math.nan)  # a NaN calibration: the default monitor tier is "threshold"


def test_check_not_relaxed_is_nan_proof():
    """Even if a NaN got past parsing, the comparison must refuse rather than pass."""
    old = red(1.0)
    smuggled = Policy.from_dict({"red_lines": ["hi"], "detectors": {"hi": {"block_above": 0.5}}})
    object.__setattr__(smuggled.detectors["hi"].block_above, "value", math.nan)  # bypass the frozen dataclass
    with pytest.raises(PolicyError, match="'hi'"):
        check_not_relaxed(old, smuggled)
    with pytest.raises(PolicyError, match="'hi'"):
        check_not_relaxed(old, smuggled, {"hi": 0.0})


def _guard(tiny, block=1.0, **kw):
    det = tg.lin(tiny, "hi", bias=5.0, scale=1e-4)  # scores ~5: above every block threshold used here
    return Guard(tiny, [det], policy=red(block), **kw)


def _blocks(guard):
    out = guard.generate("hello world", max_new_tokens=3)[0]
    return out.blocked and out.blocked_by == "hi"


@pytest.mark.parametrize("value", NON_FINITE_STRINGS + NON_FINITE_NUMBERS)
def test_guard_red_line_survives_every_runtime_path(tiny, tmp_path, value):
    guard = _guard(tiny)
    assert _blocks(guard)
    # attribute assignment of a new policy
    with pytest.raises(PolicyError):
        guard.policy = Policy.from_dict({"red_lines": ["hi"], "detectors": {"hi": {"block_above": value}}})
    # Policy.update, then assignment
    with pytest.raises(PolicyError):
        guard.policy = guard.policy.update("hi", block_above=value)
    # a later policy file
    later = tmp_path / "later.toml"
    later.write_text(f'[detectors.hi]\nblock_above = "{value}"\n')
    with pytest.raises(PolicyError):
        guard.load_policy(later)
    assert _blocks(guard)
    assert guard.policy.resolve("hi", 0.0).block == 1.0


def test_guard_lock_is_immune_to_nan_whatever_its_source(tiny):
    guard = _guard(tiny)
    # a policy whose red line resolves to NaN through the detector's calibration
    guard.detectors[0].threshold = math.nan
    guard._thresholds["hi"] = math.nan
    with pytest.raises(PolicyError, match="'hi'"):
        guard.policy = Policy.from_dict({"red_lines": ["hi"], "detectors": {"hi": {"block_above": "threshold"}}})
    assert _blocks(guard)
    # a detector whose calibration is NaN cannot be a red line at all
    det = tg.lin(tiny, "hi", bias=5.0, scale=1e-4, threshold=math.nan)
    with pytest.raises(PolicyError, match="'hi'"):
        Guard(tiny, [det], policy=Policy.from_dict({"red_lines": ["hi"]}))


def test_escalation_allow_cannot_lift_a_red_line(tiny):
    pol = Policy.from_dict({"red_lines": ["hi"], "detectors": {"hi": {"escalate_above": 1.0, "block_above": 3.0}}})
    for answer in ("allow", "ALLOW", " allow "):
        human = tg.Human(*[answer] * 10)
        det = tg.scripted(tiny, "hi", lambda t: 2.0 if t < 2 else 4.0)
        out = Guard(tiny, [det], policy=pol, on_escalate=human).generate("hello world", max_new_tokens=6)[0]
        assert out.decisions and out.decisions[0].decision == "allow"
        assert out.blocked and out.blocked_by == "hi"
        assert [a for a in out.actions if a.kind == "block"][0].token == 2
    # a red line whose escalate tier is above its block tier: the block wins, no one is asked
    pol = Policy.from_dict({"red_lines": ["hi"], "detectors": {"hi": {"escalate_above": 5.0, "block_above": 1.0}}})
    human = tg.Human("allow")
    out = Guard(tiny, [tg.scripted(tiny, "hi", lambda t: 6.0)], policy=pol, on_escalate=human).generate("hello world", max_new_tokens=4)[0]
    assert out.blocked and not human.contexts
