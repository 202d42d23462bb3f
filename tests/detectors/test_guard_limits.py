"""Range checks that keep a Guard from silently producing garbage (issue 24, defects 9 and 10):
doses, batch sizes, and the audit record of a call refused for an over-long prompt."""

from __future__ import annotations

import math
import time

import pytest
import test_guard as tg
import torch

from circuits.errors import InputError
from circuits.steering import ActivationAddition
from detectors.audit import AuditLog
from detectors.cli_guard import main
from detectors.guard import Guard
from detectors.policy import MAX_DOSE, Policy, PolicyError


@pytest.mark.parametrize("dose", [1e30, -1.0, math.nan, math.inf, -math.inf, MAX_DOSE * 1.01])
def test_dose_out_of_range_is_refused_saying_why(dose, tmp_path):
    with pytest.raises(PolicyError, match=r"detectors\.d\.dose.*out of range.*NaN logits"):
        Policy.from_dict({"detectors": {"d": {"dose": dose}}})
    with pytest.raises(PolicyError, match=r"defaults\.dose"):
        Policy().update(defaults={"dose": dose})
    if math.isfinite(dose):
        f = tmp_path / "p.toml"
        f.write_text(f"[defaults]\ndose = {dose!r}\n")
        with pytest.raises(PolicyError, match=r"p\.toml: defaults\.dose"):
            Policy.load(f)


def test_dose_bounds_are_inclusive():
    assert Policy.from_dict({"defaults": {"dose": 0}}).resolve("d", 0.0).dose == 0.0
    assert Policy.from_dict({"defaults": {"dose": MAX_DOSE}}).resolve("d", 0.0).dose == MAX_DOSE


def test_corrector_refuses_non_finite_dose(tiny):
    v = torch.ones(tiny.d_model)
    for bad in (math.nan, math.inf, "x"):
        with pytest.raises(InputError, match="dose"):
            ActivationAddition(tg.H1, v, alpha=bad)
    c = ActivationAddition(tg.H1, v, alpha=1.0)
    with pytest.raises(InputError, match="finite"):
        c.set_dose(math.nan)
    assert c.alpha == 1.0


def test_batch_size_zero_is_refused(tiny):
    with pytest.raises(InputError, match="batch_size"):
        Guard(tiny, [tg.lin(tiny, "a")], batch_size=0)
    guard = Guard(tiny, [tg.lin(tiny, "a")])
    for bad in (0, -1, 1.5, True):
        with pytest.raises(InputError, match="batch_size"):
            guard.generate(tg.PROMPTS, max_new_tokens=2, batch_size=bad)


@pytest.mark.parametrize("flag, value", [("--batch-size", "0"), ("--batch-size", "-3"), ("--max-new-tokens", "0"), ("--batch-size", "two")])
def test_cli_refuses_bad_counts_before_loading_the_model(tmp_path, capsys, flag, value):
    t0 = time.perf_counter()
    with pytest.raises(SystemExit) as e:
        main(["guard", "--detector", str(tmp_path / "none"), "--prompt", "hi", flag, value,
              "--model", str(tmp_path / "no-model")])
    assert e.value.code == 2 and time.perf_counter() - t0 < 2.0
    err = capsys.readouterr().err
    assert flag in err and value in err and "Traceback" not in err


def test_over_long_prompt_rejection_is_audited(tiny, tmp_path):
    log = AuditLog(tmp_path / "a.jsonl")
    guard = Guard(tiny, [tg.lin(tiny, "a")], audit=log)
    long = " ".join(["the cat sat"] * 40)  # > 64 tokens, the tiny model's context
    with pytest.raises(InputError, match="item 1.*longer than the model context"):
        guard.generate(["hello world", long, "the dog"], max_new_tokens=3)
    recs = list(log.records())
    assert len(recs) == 3 and [r["row"] for r in recs] == [0, 1, 2]
    for r in recs:
        assert r["finish_reason"] == "rejected" and r["n_generated"] == 0
        assert r["error"]["type"] == "InputError" and "item 1" in r["error"]["message"]
        assert r["settings"]["max_new_tokens"] == 3
    assert recs[1]["prompt_tokens"] > tiny.n_ctx and recs[0]["prompt_tokens"] < tiny.n_ctx
    # a stream is refused the same way, on the record
    with pytest.raises(InputError):
        guard.stream(long, max_new_tokens=3)
    assert len(list(log.records())) == 4


def test_one_settings_object_for_generate_and_stream(tiny):
    from detectors.guard import GenerationSettings

    guard = Guard(tiny, [tg.lin(tiny, "a")])
    s = GenerationSettings.make(max_new_tokens=5, min_new_tokens=5, do_sample=True, seed=3, top_k=4)
    by_kw = guard.generate("hello world", max_new_tokens=5, min_new_tokens=5, do_sample=True, seed=3, top_k=4)[0]
    by_obj = guard.generate("hello world", settings=s)[0]
    streamed = [ev.output for ev in guard.stream("hello world", settings=s) if ev.done][0]
    assert by_kw.token_ids == by_obj.token_ids == streamed.token_ids and len(by_obj.token_ids) == 5
    with pytest.raises(InputError, match="not both"):
        guard.generate("hello world", max_new_tokens=3, settings=s)
    with pytest.raises(InputError, match="top_p"):
        GenerationSettings(top_p=0.0)
    with pytest.raises(InputError, match="correct must be"):
        GenerationSettings(correct="sometimes")
