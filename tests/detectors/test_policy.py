"""Policies: parsing (TOML/YAML), validation messages, tiers, red lines."""

from __future__ import annotations

import math

import pytest

from detectors.policy import (
    DEFAULT_POLICY_FILE,
    OFF,
    Decision,
    Policy,
    PolicyError,
    Threshold,
    check_not_relaxed,
)

TOML = """
version = 1
refusal_text = "No."
on_detector_error = "fail_closed"
red_lines = ["deception"]

[defaults]
monitor_above = "threshold"
dose = 4.0
patience = 3

[detectors.deception]
correct_above = "threshold"
block_above = "threshold + 2"

[detectors.sycophancy]
escalate_above = 1.5
block_above = "off"
corrector = "ablation"
"""

YAML = """
version: 1
refusal_text: "No."
on_detector_error: fail_closed
red_lines: [deception]
defaults:
  monitor_above: threshold
  dose: 4.0
  patience: 3
detectors:
  deception:
    correct_above: threshold
    block_above: threshold + 2
  sycophancy:
    escalate_above: 1.5
    block_above: "off"
    corrector: ablation
"""


@pytest.fixture
def files(tmp_path):
    t = tmp_path / "policy.toml"
    t.write_text(TOML)
    y = tmp_path / "policy.yaml"
    y.write_text(YAML)
    return t, y


def test_threshold_forms():
    assert Threshold.parse(2, "k") == Threshold("abs", 2.0)
    assert Threshold.parse("2.5", "k") == Threshold("abs", 2.5)
    assert Threshold.parse("threshold", "k") == Threshold("offset", 0.0)
    assert Threshold.parse("threshold + 1.5", "k") == Threshold("offset", 1.5)
    assert Threshold.parse("threshold-0.5", "k") == Threshold("offset", -0.5)
    assert Threshold.parse("threshold * 2", "k") == Threshold("scale", 2.0)
    assert Threshold.parse("off", "k") is OFF and Threshold.parse(False, "k") is OFF
    assert Threshold("offset", 1.5).resolve(0.5) == 2.0
    assert Threshold("scale", 2.0).resolve(0.5) == 1.0
    for bad in ("thresh", "threshold / 2", True, float("inf"), [1]):
        with pytest.raises(PolicyError, match="k"):
            Threshold.parse(bad, "k")


def test_toml_and_yaml_load_the_same(files):
    t, y = files
    pt, py = Policy.load(t), Policy.load(y)
    assert pt.to_dict() == py.to_dict()
    assert pt.red_lines == {"deception"} and pt.error_mode == "fail_closed" and pt.refusal == "No."
    r = pt.resolve("deception", 0.5)
    assert (r.monitor, r.correct, r.escalate, r.block) == (0.5, 0.5, math.inf, 2.5)
    assert r.red_line and r.dose == 4.0 and r.patience == 3 and r.corrector == "addition"
    s = pt.resolve("sycophancy", -1.0)
    assert (s.monitor, s.correct, s.escalate, s.block) == (-1.0, math.inf, 1.5, math.inf)
    assert s.corrector == "ablation" and not s.red_line
    other = pt.resolve("unknown", 0.0)  # defaults apply to any detector
    assert other.monitor == 0.0 and other.block == math.inf


def test_tier_logic(files):
    r = Policy.load(files[0]).resolve("deception", 0.5)
    assert r.tier_of(0.0) is None
    assert r.tier_of(0.6) == "correct"
    assert r.tier_of(0.6, lowest="escalate") is None
    assert r.tier_of(3.0) == "block"
    assert r.next_tier("correct") == "block"  # escalate is off
    s = Policy.load(files[0]).resolve("sycophancy", 0.0)
    assert s.next_tier("correct") == "escalate"
    assert s.next_tier("escalate") == "block"  # nothing configured above: block
    assert r.action_threshold == 0.5


def test_default_policy_file_is_monitor_only():
    p = Policy.default()
    assert DEFAULT_POLICY_FILE.exists()
    r = p.resolve("anything", 1.25)
    assert r.monitor == 1.25 and r.action_threshold == math.inf
    assert p.error_mode == "fail_open" and not p.red_lines
    assert Policy.load("default").to_dict() == p.to_dict()
    assert Policy().resolve("x", 0.0).monitor == 0.0  # built in code: same defaults
    assert r.timing == "next" and r.immediate is False and r.rewind is False and r.regenerate is False
    assert Policy.from_dict({"detectors": {"x": {"timing": "immediate"}}}).resolve("x", 0.0).immediate is True
    rw = Policy.from_dict({"detectors": {"x": {"timing": "rewind", "corrector": "avoid_token"}}}).resolve("x", 0.0)
    assert rw.rewind is True and rw.immediate is True  # rewind re-runs the flagged step too
    with pytest.raises(PolicyError, match="detector 'x': corrector 'avoid_token' needs timing = \"rewind\""):
        Policy.from_dict({"detectors": {"x": {"corrector": "avoid_token"}}}).resolve("x", 0.0)


@pytest.mark.parametrize(
    "text, match",
    [
        ("bogus = 1", "policy.toml: unknown key 'bogus'"),
        ("version = 2", "version 2"),
        ('on_detector_error = "ignore"', "on_detector_error"),
        ('red_lines = "x"\n[detectors.y]\nblock_above="off"', None),
        ("[detectors.deception]\nblock_abov = 1", "detectors.deception: unknown key 'block_abov'"),
        ('[detectors.deception]\nblock_above = "sometimes"', "detectors.deception.block_above"),
        ("[detectors.deception]\npatience = 0", "detectors.deception.patience"),
        ('[defaults]\ndose = "big"', "defaults.dose"),
        ('[defaults]\npositions = "prompt"', "defaults.positions: expected one of response, all"),
        ('[defaults]\ntiming = "later"', "defaults.timing: expected one of next, immediate, rewind, regenerate"),
        ('[defaults]\ntiming = "rewind"\nrewind = true', "defaults: give timing, not both timing and rewind"),
        ('[defaults]\nimmediate = "yes"', "defaults.immediate: expected true or false"),
        ("[defaults]\nrewind = 1", "defaults.rewind: expected true or false"),
        ('red_lines = ["deception"]\n[detectors.deception]\nblock_above = "off"', "red line"),
        ("this is not toml", "cannot parse"),
    ],
)
def test_validation_errors_name_file_and_key(tmp_path, text, match):
    f = tmp_path / "policy.toml"
    f.write_text(text)
    if match is None:  # a single string is accepted as one red line
        assert Policy.load(f).red_lines == {"x"}
        return
    with pytest.raises(PolicyError, match=match):
        Policy.load(f)


def test_unknown_format_and_missing_file(tmp_path):
    with pytest.raises(PolicyError, match="no such policy file"):
        Policy.load(tmp_path / "nope.toml")
    f = tmp_path / "p.ini"
    f.write_text("x")
    with pytest.raises(PolicyError, match="unknown policy format"):
        Policy.load(f)


def test_update_and_merge(files):
    p = Policy.load(files[0])
    q = p.update("sycophancy", escalate_above="threshold + 1", dose=2.0)
    assert q.resolve("sycophancy", 0.0).escalate == 1.0 and q.resolve("sycophancy", 0.0).dose == 2.0
    assert q.resolve("sycophancy", 0.0).corrector == "ablation"  # unchanged fields kept
    assert p.resolve("sycophancy", 0.0).escalate == 1.5  # immutable: p is unchanged
    r = p.update(on_detector_error="fail_open")
    assert r.error_mode == "fail_open"
    assert p.resolve("sycophancy", 0.0).positions == "response"  # the built-in default
    assert p.update("sycophancy", positions="all").resolve("sycophancy", 0.0).positions == "all"
    m = p.merge(Policy.from_dict({"red_lines": ["sycophancy"], "detectors": {"sycophancy": {"block_above": 5}}}))
    assert m.red_lines == {"deception", "sycophancy"}
    assert m.resolve("sycophancy", 0.0).block == 5.0


def test_red_line_cannot_be_relaxed(files, tmp_path):
    p = Policy.load(files[0])
    with pytest.raises(PolicyError, match="'deception'"):
        p.update("deception", block_above="threshold + 3")  # raised
    with pytest.raises(PolicyError, match="'deception'"):
        p.update("deception", block_above="off")  # removed
    with pytest.raises(PolicyError, match="'deception'"):
        p.update("deception", block_above=100.0)  # changed form (cannot be verified)
    with pytest.raises(PolicyError, match="'deception'"):
        p.update(defaults={"block_above": "off"}).update("deception", block_above="off")
    # a later policy file trying to relax it
    later = tmp_path / "later.toml"
    later.write_text('[detectors.deception]\nblock_above = "threshold + 10"\n')
    with pytest.raises(PolicyError, match="'deception'"):
        p.merge(Policy.load(later))
    # replacing the policy with one without the red line
    with pytest.raises(PolicyError, match="red line 'deception' cannot be removed"):
        check_not_relaxed(p, Policy.from_dict({"detectors": {"deception": {"block_above": 0.0}}}))
    # tightening is fine
    tighter = p.update("deception", block_above="threshold + 1")
    assert tighter.resolve("deception", 0.0).block == 1.0
    # with the detector threshold known, forms may change as long as the number does not rise
    check_not_relaxed(p, tighter.update("deception", block_above="threshold + 0.5"), {"deception": 0.0})
    absolute = Policy.from_dict({"red_lines": ["deception"], "detectors": {"deception": {"block_above": 2.0}}})
    check_not_relaxed(p, absolute, {"deception": 0.5})  # 2.0 <= 0.5 + 2
    with pytest.raises(PolicyError, match="cannot be raised"):
        check_not_relaxed(p, absolute, {"deception": -1.0})  # 2.0 > -1 + 2


def test_red_line_without_block_tier_blocks_at_threshold():
    p = Policy.from_dict({"red_lines": ["deception"]})
    assert p.resolve("deception", 0.7).block == 0.7
    assert p.with_red_lines("x").red_lines == {"deception", "x"}


def test_decision_parse():
    assert Decision.parse("Allow") is Decision.ALLOW
    assert Decision.parse(Decision.BLOCK) is Decision.BLOCK

    class D:
        decision = "correct"

    assert Decision.parse(D()) is Decision.CORRECT
    with pytest.raises(PolicyError):
        Decision.parse("maybe")
    with pytest.raises(PolicyError):
        Decision.parse(None)


@pytest.mark.parametrize(
    "old, timing",
    [
        ({"immediate": True}, "immediate"),
        ({"rewind": True}, "rewind"),
        ({"rewind": True, "immediate": True}, "rewind"),  # rewind implied immediate
        ({"regenerate": True, "rewind": False}, "regenerate"),
        ({"immediate": False, "rewind": False, "regenerate": False}, "next"),
    ],
)
def test_old_timing_booleans_load_with_a_deprecation_warning(tmp_path, old, timing):
    with pytest.warns(DeprecationWarning, match=f"write timing = '{timing}'"):
        p = Policy.from_dict({"detectors": {"x": old}})
    assert p.resolve("x", 0.0).timing == timing
    assert p.to_dict()["detectors"]["x"] == {"timing": timing}  # saved in the new form
    f = tmp_path / "old.toml"
    f.write_text("[defaults]\n" + "".join(f"{k} = {str(v).lower()}\n" for k, v in old.items()))
    with pytest.warns(DeprecationWarning, match=r"old\.toml: defaults"):
        assert Policy.load(f).resolve("y", 0.0).timing == timing


def test_the_knob_table_drives_fields_defaults_and_docs():
    from dataclasses import fields

    from detectors.policy import BUILTIN, KNOBS, DetectorPolicy, Resolved
    from detectors.policy_knobs import knobs_markdown

    names = [k.name for k in KNOBS]
    assert [f.name for f in fields(DetectorPolicy)] == names
    tiers = [k.name[: -len("_above")] for k in KNOBS if k.threshold]
    assert sorted(f.name for f in fields(Resolved)) == sorted(["name", "red_line", *tiers, *(n for n in names if not n.endswith("_above"))])
    # the packaged default file spells out every knob at its built-in default
    default = Policy.default().defaults
    for k in KNOBS:
        if k.default is not None:
            assert getattr(default, k.name) == getattr(BUILTIN, k.name) == k.default, k.name
    # the committed docs are the rendered table
    from pathlib import Path

    doc = Path(__file__).resolve().parents[2] / "detectors" / "POLICY.md"
    assert doc.read_text() == knobs_markdown(), "regenerate detectors/POLICY.md (command in its header)"
    for k in KNOBS:
        assert f"| `{k.name}` |" in doc.read_text()
