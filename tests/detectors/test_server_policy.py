"""The server's policy paths over HTTP on the tiny model: retractions (rewind) and the ``buffered``
option, a detector failing mid-stream, escalation to a webhook (answered and timed out)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from detectors.detector import Detector  # noqa: E402
from detectors.guard import Guard  # noqa: E402
from detectors.policy import Policy  # noqa: E402
from detectors.server import GuardEngine, WebhookEscalator, create_app  # noqa: E402
from detectors.server.run import ServerThread  # noqa: E402

H1 = "blocks.1.hook_resid_post"
MODEL = "tiny-llama"
PROMPT = [{"role": "user", "content": "the cat sat on the mat"}]


class Flaky(Detector):
    """A linear detector that raises while ``Flaky.down`` is set."""

    down = False

    def score_tensor(self, acts):
        if Flaky.down:
            raise RuntimeError("flaky detector is down")
        return super().score_tensor(acts)


def dets(model, names, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [Detector.from_linear(n, model, H1, torch.randn(model.d_model, generator=g), threshold=0.0) for n in names]


def rewind_policy():
    # "syc" corrects from its first flag, taking the flagged token back and re-choosing it steered
    return Policy.from_dict({"on_detector_error": "fail_closed", "detectors": {
        "syc": {"correct_above": -1000.0, "rewind": True, "dose": 40.0, "patience": 100}}})


@pytest.fixture(scope="module")
def tiny_model_():
    from tiny import tiny_model

    torch.set_num_threads(1)
    return tiny_model()


@pytest.fixture(scope="module")
def served(tiny_model_, tmp_path_factory):
    model = tiny_model_
    ds = dets(model, ["dec", "syc", "flaky"])
    ds[2].__class__ = Flaky
    audit = tmp_path_factory.mktemp("policy") / "audit.jsonl"
    with ServerThread(create_app(GuardEngine(model, ds, rewind_policy()), audit=audit)) as srv:
        yield srv, model, ds, audit


def stream(srv, body):
    chunks, done = [], False
    with httpx.stream("POST", srv.url + "/v1/chat/completions", json={"model": MODEL, **body, "stream": True}, timeout=30) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                chunks.append(json.loads(line[6:]))
    return chunks, done


def shown(chunks):
    """The text a client that applies ``coalign.retract`` ends with."""
    text = ""
    for c in chunks:
        if not c["choices"]:
            continue
        r = (c.get("coalign") or {}).get("retract") or 0
        text = text[: len(text) - r] + (c["choices"][0]["delta"].get("content") or "")
    return text


def test_rewind_retracts_unbuffered_and_buffered_never_does(served):
    srv, model, ds, _ = served
    ref = Guard(model, ds, policy=rewind_policy()).generate([PROMPT], max_new_tokens=6)[0]
    assert any("taken_back" in a.detail for a in ref.actions)
    plain, done = stream(srv, {"messages": PROMPT, "max_tokens": 6})
    assert done and any((c.get("coalign") or {}).get("retract") for c in plain), "the rewind retracts text"
    buffered, done_b = stream(srv, {"messages": PROMPT, "max_tokens": 6, "stream_options": {"buffered": True}})
    assert done_b and not any((c.get("coalign") or {}).get("retract") for c in buffered)
    naive = "".join(c["choices"][0]["delta"].get("content") or "" for c in buffered if c["choices"])
    assert naive == shown(plain) == ref.text  # what a client that cannot retract sees is right


def test_detector_failure_mid_stream_fails_closed_and_server_keeps_serving(served):
    srv, _, _, audit = served
    Flaky.down = True
    try:
        chunks, done = stream(srv, {"messages": PROMPT, "max_tokens": 6})
    finally:
        Flaky.down = False
    assert done and chunks[-1]["choices"][0]["finish_reason"] == "content_filter"
    assert chunks[-1]["coalign"]["detector_errors"][0]["detector"] == "flaky"
    rec = [json.loads(x) for x in audit.read_text().splitlines()][-1]
    assert rec["status"] == 200 and rec["blocked"] and rec["detector_errors"][0]["handling"] == "fail_closed"
    assert rec["scores"]["per_token"]["dec"] and rec["request_id"] == chunks[0]["id"]
    chunks, done = stream(srv, {"messages": PROMPT, "max_tokens": 6})
    assert done and chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


class _Hook(BaseHTTPRequestHandler):
    mode = "allow"
    seen: list = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Hook.seen.append(body)
        if _Hook.mode == "slow":
            time.sleep(1.5)
        out = json.dumps({"decision": "allow", "reviewer": "alice", "reason": "fine"}).encode()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)
        except BrokenPipeError:  # the server gave up waiting (the timeout case)
            pass

    def log_message(self, *a):
        pass


@pytest.fixture(scope="module")
def escalating(tiny_model_, tmp_path_factory):
    model = tiny_model_
    hook = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    policy = Policy.from_dict({"detectors": {"syc": {"escalate_above": -1000.0}}})
    esc = WebhookEscalator(f"http://127.0.0.1:{hook.server_address[1]}/escalate", timeout=0.5)
    audit = tmp_path_factory.mktemp("esc") / "audit.jsonl"
    try:
        with ServerThread(create_app(GuardEngine(model, dets(model, ["dec", "syc"]), policy, on_escalate=esc), audit=audit)) as srv:
            yield srv, audit
    finally:
        hook.shutdown()


def test_escalation_webhook_answer_and_timeout_are_audited(escalating):
    srv, audit = escalating
    _Hook.mode = "allow"
    r = httpx.post(srv.url + "/v1/chat/completions", json={"model": MODEL, "messages": PROMPT, "max_tokens": 5}, timeout=30)
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] != "content_filter"
    co = r.json()["coalign"]
    assert co["escalations"][0]["outcome"] == "answered" and co["escalations"][0]["reviewer"] == "alice"
    assert _Hook.seen[-1]["request_id"] == r.json()["id"] and _Hook.seen[-1]["detector"] == "syc"
    _Hook.mode = "slow"
    t0 = time.perf_counter()
    r = httpx.post(srv.url + "/v1/chat/completions", json={"model": MODEL, "messages": PROMPT, "max_tokens": 5}, timeout=30)
    assert time.perf_counter() - t0 < 1.4  # the timeout decided, not the slow hook
    assert r.json()["choices"][0]["finish_reason"] == "content_filter"
    e = r.json()["coalign"]["escalations"][0]
    assert (e["detector"], e["token"], e["outcome"], e["decision"]) == ("syc", 0, "timeout", "block")
    recs = [json.loads(x) for x in audit.read_text().splitlines()]
    assert [e["outcome"] for rec in recs for e in rec["escalations"]] == ["answered", "timeout"]
    assert [d["decision"] for rec in recs for d in rec["human_decisions"]] == ["allow", "block"]
    metrics = httpx.get(srv.url + "/metrics").text
    assert 'coalign_escalations_total{decision="block",outcome="timeout"} 1.0' in metrics
    assert 'coalign_escalations_total{decision="allow",outcome="answered"} 1.0' in metrics


@pytest.mark.parametrize("overlay, status, says", [
    ({"detectors": {"syc": {"patience": 200}}}, 403, "patience"),
    ({"on_detector_error": "fail_open"}, 403, "fail_closed"),
    ({"defaults": {"monitor_above": "off"}}, 403, "switch off detector 'dec'"),
    ({"detectors": {"syc": {"correct_above": 5.0}}}, 403, "raise from -1000 to 5"),
    ({"detectors": {"syc": {"dose": 1.0}}}, 403, "operator"),
    ({"detectors": {"syc": {"escalate_above": 0.0}}}, 403, "operator"),
    ({"detectors": {"nope": {"block_above": 0.0}}}, 400, "no detector 'nope'"),
    ({"detectors": {"dec": {"block_above": "threshold + x"}}}, 400, "bad threshold"),
])
def test_request_policy_refusals(overlay, status, says):
    from detectors.server.errors import ApiError
    from detectors.server.tighten import tighten

    with pytest.raises(ApiError) as e:
        tighten(rewind_policy(), overlay, {"dec": 0.0, "syc": 0.0, "flaky": 0.0})
    assert e.value.status == status and says in e.value.message, e.value.message


def test_request_policy_tightens():
    from detectors.server.tighten import tighten

    p = tighten(rewind_policy(), {"red_lines": ["dec"], "detectors": {"dec": {"block_above": 2.0}, "syc": {"patience": 3}}},
                {"dec": 0.5, "syc": 0.0, "flaky": 0.0})
    assert "dec" in p.red_lines and p.resolve("dec", 0.5).block == 2.0 and p.resolve("syc", 0.0).patience == 3
    assert p.resolve("syc", 0.0).rewind  # the operator's settings carry over
