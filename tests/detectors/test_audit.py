"""Audit log records: fields, per-token scores or summaries, and completeness when generation fails."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest

from circuits.inputs import render
from detectors.audit import AuditLog, score_summary
from detectors.guard import Guard
from detectors.policy import Policy
from test_guard import H0, PROMPTS, Boom, Human, lin, n_hooks, policy, scripted
from detectors.router import Router



def read(path):
    return [json.loads(line) for line in open(path)]


def test_record_fields(tiny, tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    dets = [lin(tiny, "a", threshold=-100.0), lin(tiny, "b", H0, seed=1)]
    guard = Guard(tiny, dets, audit=log)
    outs = guard.generate(PROMPTS, max_new_tokens=5)
    recs = read(tmp_path / "audit.jsonl")
    assert len(recs) == 2
    for rec in recs:
        out = outs[0] if rec["prompt_sha256"] == _sha(tiny, PROMPTS[0]) else outs[1]
        assert rec["prompt_sha256"] in (_sha(tiny, PROMPTS[0]), _sha(tiny, PROMPTS[1]))
        assert rec["model"] == {"id": tiny.model_id, "fingerprint": tiny.fingerprint}
        assert [d["name"] for d in rec["detectors"]] == ["a", "b"]
        assert rec["detectors"][0]["id"] == dets[0].id and rec["detectors"][0]["hooks"] == [dets[0].hooks[0]]
        assert rec["policy"]["hash"] == guard.policy.hash and rec["policy"]["tiers"]["a"]["monitor"] == -100.0
        assert rec["settings"]["max_new_tokens"] == 5 and rec["settings"]["do_sample"] is False
        assert rec["time"].endswith("+00:00") and rec["duration_s"] >= 0
        assert rec["n_generated"] == len(out.token_ids) and rec["error"] is None
        assert rec["finish_reason"] == out.finish_reason and rec["blocked"] is False
        per_token = rec["scores"]["per_token"]
        assert np.allclose(per_token["a"], out.scores["a"], atol=1e-4)
        assert rec["actions"] == [a.to_dict() for a in out.actions]
        assert rec["actions"][0]["kind"] == "monitor"
        assert rec["output_text"] == out.text


def _sha(model, prompt):
    prefix, resp, _ = render(model.tokenizer, [{"role": "user", "content": prompt}])
    return hashlib.sha256((prefix + resp).encode()).hexdigest()


def test_summary_mode_keeps_only_tokens_above(tiny, tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl", summary=True, include_text=False)
    det = scripted(tiny, "s", lambda t: [0.5, -1.0, 2.0, -1.0, 3.0, -1.0][t], threshold=1.0)
    Guard(tiny, [det], audit=log).generate("hello world", max_new_tokens=6)
    rec = read(tmp_path / "audit.jsonl")[0]
    summ = rec["scores"]["summary"]["s"]
    assert summ["above"] == [[2, 2.0], [4, 3.0]] and summ["n_above"] == 2
    assert summ["max"] == 3.0 and summ["argmax"] == 4 and summ["n"] == 6
    assert "generated_text" not in rec and "output_sha256" in rec


def test_score_summary_handles_nan():
    s = score_summary(np.array([0.0, float("nan"), 2.0]), above=1.0)
    assert s["n_nan"] == 1 and s["above"] == [[2, 2.0]]
    s = score_summary(np.array([float("nan")]), above=math.inf)
    assert s["above_threshold"] is None and "max" not in s


def test_actions_correctors_and_human_decisions_recorded(tiny, tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    pol = policy(syc={"escalate_above": 1.0, "correct_above": 5.0, "dose": 3.0})
    det = scripted(tiny, "syc", lambda t: 2.0 if t >= 1 else 0.0)
    Guard(tiny, [det], policy=pol, on_escalate=Human("correct"), audit=log).generate("hello world", max_new_tokens=4)
    rec = read(tmp_path / "audit.jsonl")[0]
    assert rec["human_decisions"] == [{"token": 1, "detector": "syc", "score": 2.0, "decision": "correct", "by": "callback", "reason": "tier"}]
    kinds = [a["kind"] for a in rec["actions"] if a["kind"] != "monitor"]
    assert kinds == ["escalate", "correct"]
    assert rec["correctors"] == [{"detector": "syc", "corrector": "addition", "dose": 3.0, "hook": det.hooks[0], "from_token": 2}]


def test_nan_scores_written_as_null(tiny, tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    pol = Policy.from_dict({"on_detector_error": "fail_open"})
    Guard(tiny, [scripted(tiny, "f", lambda t: 0.0, fail_at=1)], policy=pol, audit=log).generate("hello world", max_new_tokens=3)
    text = (tmp_path / "audit.jsonl").read_text()
    assert "NaN" not in text
    rec = json.loads(text)
    assert rec["scores"]["per_token"]["f"][1] is None
    assert rec["detector_errors"][0]["detector"] == "f" and rec["detector_errors"][0]["handling"] == "fail_open"


def test_record_complete_when_generation_raises_midway(tiny, tmp_path):
    router = Router()
    router.register("boom", lambda det, dose, model, state: Boom(det.hooks[0], det.direction, dose, "generated", state))
    log = AuditLog(tmp_path / "audit.jsonl")
    det = scripted(tiny, "syc", lambda t: 2.0 if t >= 3 else 0.0)
    guard = Guard(tiny, [det, lin(tiny, "other", H0)], policy=policy(syc={"correct_above": 1.0, "corrector": "boom"}), router=router, audit=log)
    n0 = n_hooks(tiny)
    with pytest.raises(RuntimeError):
        guard.generate("hello world", max_new_tokens=8)
    assert n_hooks(tiny) == n0
    rec = read(tmp_path / "audit.jsonl")[0]
    assert rec["error"]["type"] == "RuntimeError"
    assert rec["n_generated"] == 4 and rec["finish_reason"] == "error"
    assert len(rec["scores"]["per_token"]["syc"]) == 4 and len(rec["scores"]["per_token"]["other"]) == 4
    assert [a["kind"] for a in rec["actions"] if a["kind"] != "monitor"] == ["correct"]
    assert rec["correctors"][0]["corrector"] == "boom"


def test_records_append_and_read_back(tiny, tmp_path):
    log = AuditLog(tmp_path / "sub" / "audit.jsonl", fsync=True)
    guard = Guard(tiny, [lin(tiny, "a")], audit=str(log.path))
    guard.generate(PROMPTS, max_new_tokens=2)
    guard.generate(PROMPTS[0], max_new_tokens=2)
    assert len(list(log.records())) == 3
    assert list(AuditLog(tmp_path / "none.jsonl").records()) == []


def test_audit_records_the_statistic_the_policy_compared(tiny, tmp_path):
    script = [9.0, 3.0, -1.0, 2.0, 4.0, 0.0]
    det = scripted(tiny, "s", lambda t: script[t], threshold=100.0)
    det.stream_threshold, det.stream_warmup = 1.5, 2
    Guard(tiny, [det], audit=AuditLog(tmp_path / "full.jsonl")).generate("hello world", max_new_tokens=6, min_new_tokens=6)
    rec = read(tmp_path / "full.jsonl")[0]
    means = [None, None, 1.0, 4 / 3, 2.0, 1.6]  # response tokens from step 1; warm-up 2
    assert rec["scores"]["per_token"]["s"] == script
    assert [None if v is None else round(v, 4) for v in rec["scores"]["policy_per_token"]["s"]] == [None if v is None else round(v, 4) for v in means]
    det.calls = 0  # the scripted detector counts its steps
    Guard(tiny, [det], audit=AuditLog(tmp_path / "summary.jsonl", summary=True)).generate("hello world", max_new_tokens=6, min_new_tokens=6)
    summ = read(tmp_path / "summary.jsonl")[0]["scores"]["summary"]["s"]
    assert summ["above_threshold"] == 1.5 and summ["above"] == [[4, 2.0], [5, 1.6]] and summ["n_nan"] == 2
