"""The guarded OpenAI-compatible server on the tiny model, over real HTTP on 127.0.0.1: the official
``openai`` client (streaming and not), stream scores against ``Guard.generate``, 8 concurrent
clients against one-at-a-time runs, refusals (4xx) with the server still serving, and
``/metrics`` against the audit log."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from detectors.detector import Detector  # noqa: E402
from detectors.guard import Guard  # noqa: E402
from detectors.policy import Policy  # noqa: E402
from detectors.server import BareEngine, GuardEngine, Limits, create_app  # noqa: E402
from detectors.server.run import ServerThread  # noqa: E402

H1 = "blocks.1.hook_resid_post"
KEY = "sk-test-key"
MODEL = "tiny-llama"
WORDS = "the cat sat on the mat and the dog said hello world paris is in france rome is in italy the sky is blue".split()


def detectors(model):
    g = torch.Generator().manual_seed(0)
    return [Detector.from_linear(n, model, H1, torch.randn(model.d_model, generator=g), threshold=0.0) for n in ("dec", "syc")]


def server_policy():
    # monitor both; "dec" is a red line blocking only far above anything the tiny model scores
    return Policy.from_dict({"on_detector_error": "fail_closed", "red_lines": ["dec"], "detectors": {"dec": {"block_above": 50.0}}})


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from tiny import tiny_model

    torch.set_num_threads(1)
    model = tiny_model()
    dets = detectors(model)
    audit = tmp_path_factory.mktemp("serve") / "audit.jsonl"
    app = create_app(GuardEngine(model, dets, server_policy()), audit=audit, api_key=KEY,
                     limits=Limits(max_prompt_tokens=40, max_tokens=32, max_body_bytes=20_000), batch_wait_s=0.02)
    with ServerThread(app) as srv:
        yield srv, model, dets, audit


def client(srv, key=KEY):
    return openai.OpenAI(base_url=srv.url + "/v1", api_key=key, max_retries=0, timeout=30)


def msgs(i):
    words = [WORDS[(i * 7 + k) % len(WORDS)] for k in range(3 + i % 5)]
    return [{"role": "user", "content": " ".join(words)}]


def post(srv, body, key=KEY, **kw):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(srv.url + "/v1/chat/completions", headers=headers, timeout=30, **kw, **({} if "content" in kw else {"json": body}))


def sse_events(srv, body):
    """Raw SSE lines of one streamed request: (chunks, saw_done)."""
    chunks, done = [], False
    with httpx.stream("POST", srv.url + "/v1/chat/completions", json={**body, "stream": True},
                      headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            assert not done, "data after [DONE]"
            if line == "data: [DONE]":
                done = True
            else:
                chunks.append(json.loads(line[6:]))
    return chunks, done


def test_openai_client_non_streaming_matches_guard(served):
    srv, model, dets, _ = served
    resp = client(srv).chat.completions.create(model=MODEL, messages=msgs(1), max_tokens=10)
    ref = Guard(model, dets, policy=server_policy()).generate([msgs(1)], max_new_tokens=10)[0]
    assert resp.choices[0].message.content == ref.text
    assert resp.choices[0].finish_reason == {"eos": "stop", "length": "length"}[ref.finish_reason]
    assert resp.usage.completion_tokens == len(ref.token_ids) and resp.usage.prompt_tokens == ref.prompt_tokens
    co = resp.model_extra["coalign"]
    for name in ("dec", "syc"):
        np.testing.assert_allclose(co["scores"][name], ref.scores[name], rtol=1e-5, atol=1e-6)
    assert co["request_id"] == resp.id


def test_openai_client_stream_scores_equal_guard_generate(served):
    srv, model, dets, _ = served
    stream = client(srv).chat.completions.create(model=MODEL, messages=msgs(2), max_tokens=12, stream=True,
                                                 stream_options={"include_usage": True})
    text, scores, finish, usage = "", {"dec": [], "syc": []}, None, None
    for chunk in stream:
        co = chunk.model_extra.get("coalign") or {}
        if chunk.usage is not None:
            usage = chunk.usage
        if not chunk.choices:
            continue
        text += chunk.choices[0].delta.content or ""
        for name in scores:
            if "scores" in co:
                scores[name].append(co["scores"][name])
        finish = chunk.choices[0].finish_reason or finish
    ref = Guard(model, dets, policy=server_policy()).generate([msgs(2)], max_new_tokens=12)[0]
    assert text == ref.text
    assert finish == {"eos": "stop", "length": "length"}[ref.finish_reason]
    assert usage is not None and usage.completion_tokens == len(ref.token_ids)
    for name in scores:  # one chunk per generated token, carrying that step's scores
        np.testing.assert_allclose(scores[name], ref.scores[name], rtol=1e-5, atol=1e-6)


def test_concurrent_clients_batch_without_cross_talk(served):
    srv, *_ = served
    bodies = [{"model": MODEL, "messages": msgs(c * 5 + k), "max_tokens": 8} for c in range(8) for k in range(5)]
    alone = [sse_events(srv, b) for b in bodies]  # one at a time

    def text(chunks):
        return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])

    barrier = threading.Barrier(8)

    def one_client(c):
        out = []
        for k in range(5):
            barrier.wait(timeout=30)  # the 8 clients send together, so the worker can batch them
            out.append(sse_events(srv, bodies[c * 5 + k]))
        return out

    with ThreadPoolExecutor(8) as pool:
        together = [r for rs in pool.map(one_client, range(8)) for r in rs]
    assert all(done for _, done in together) and all(done for _, done in alone)
    assert [text(c) for c, _ in together] == [text(c) for c, _ in alone]
    for (ca, _), (cb, _) in zip(together, alone):
        sa = [c["coalign"]["scores"]["dec"] for c in ca if "scores" in c.get("coalign", {})]
        sb = [c["coalign"]["scores"]["dec"] for c in cb if "scores" in c.get("coalign", {})]
        np.testing.assert_allclose(sa, sb, rtol=1e-4, atol=1e-5)
    batch = [c["coalign"]["batch_size"] for cs, _ in together for c in cs if "batch_size" in c.get("coalign", {})]
    assert len(batch) == 40
    n_batches = sum(1 / b for b in batch)  # a request in a batch of b is 1/b of a Guard batch
    assert n_batches <= 20, sorted(batch)  # micro-batching: at most half as many Guard runs as requests


@pytest.mark.parametrize("case", ["bad_json", "not_object", "no_messages", "bad_role", "unknown_model", "too_many_tokens",
                                  "long_prompt", "huge_body", "no_key", "wrong_key", "relax_red_line", "switch_off_monitor",
                                  "operator_key", "unsupported_n", "nan_json"])
def test_client_errors_are_4xx_and_server_keeps_serving(served, case):
    srv, *_ = served
    good = {"model": MODEL, "messages": msgs(3), "max_tokens": 4}
    long_text = " ".join(WORDS * 3)
    calls = {
        "bad_json": dict(content=b'{"model": "tiny-llama", "messages": [', expect=400, says="malformed JSON"),
        "not_object": dict(body=[1, 2], expect=400, says="JSON object"),
        "no_messages": dict(body={"model": MODEL}, expect=400, says="messages"),
        "bad_role": dict(body={**good, "messages": [{"role": "robot", "content": "hi"}]}, expect=400, says="messages[0].role"),
        "unknown_model": dict(body={**good, "model": "gpt-9"}, expect=404, says="not served here"),
        "too_many_tokens": dict(body={**good, "max_tokens": 33}, expect=400, says="max_tokens"),
        "long_prompt": dict(body={**good, "messages": [{"role": "user", "content": long_text}]}, expect=400, says="tokens"),
        "huge_body": dict(body={**good, "messages": [{"role": "user", "content": "hi " * 20_000}]}, expect=413, says="bytes"),
        "no_key": dict(body=good, key=None, expect=401, says="missing API key"),
        "wrong_key": dict(body=good, key="sk-wrong", expect=401, says="invalid API key"),
        "relax_red_line": dict(body={**good, "coalign": {"policy": {"detectors": {"dec": {"block_above": 80}}}}}, expect=403, says="red line 'dec'"),
        "switch_off_monitor": dict(body={**good, "coalign": {"policy": {"detectors": {"syc": {"monitor_above": "off"}}}}}, expect=403,
                                   says="switch off detector 'syc'"),
        "operator_key": dict(body={**good, "coalign": {"policy": {"refusal_text": "sure!"}}}, expect=403, says="operator"),
        "unsupported_n": dict(body={**good, "n": 2}, expect=400, says="n must be"),
        "nan_json": dict(content=b'{"model": "tiny-llama", "temperature": NaN, "messages": []}', expect=400, says="NaN"),
    }[case]
    kw = {"content": calls["content"]} if "content" in calls else {}
    r = post(srv, calls.get("body"), key=calls.get("key", KEY), **kw)
    assert r.status_code == calls["expect"], r.text
    err = r.json()["error"]
    assert calls["says"] in err["message"], err
    assert post(srv, good).status_code == 200  # still serving


def test_request_may_tighten_to_a_block(served):
    srv, *_ = served
    tight = {"detectors": {"syc": {"block_above": -1000.0}}}  # any score blocks: at the first scored step
    resp = client(srv).chat.completions.create(model=MODEL, messages=msgs(4), max_tokens=6, extra_body={"coalign": {"policy": tight}})
    assert resp.choices[0].finish_reason == "content_filter"
    assert resp.choices[0].message.content == Policy.default().refusal
    assert resp.model_extra["coalign"]["blocked_by"] == "syc"
    chunks, done = sse_events(srv, {"model": MODEL, "messages": msgs(4), "max_tokens": 6, "coalign": {"policy": tight}})
    assert done and chunks[-1]["choices"][0]["finish_reason"] == "content_filter"
    assert chunks[-1]["choices"][0]["delta"]["content"] == Policy.default().refusal


def test_score_models_health_and_ready(served):
    srv, model, dets, _ = served
    h = {"Authorization": f"Bearer {KEY}"}
    chat = [{"role": "user", "content": "is the sky blue"}, {"role": "assistant", "content": "yes the sky is blue"}]
    r = httpx.post(srv.url + "/v1/coalign/score", json={"model": MODEL, "messages": chat}, headers=h, timeout=30)
    assert r.status_code == 200, r.text
    got = r.json()["detectors"]
    for d in dets:
        assert got[d.name]["score"] == pytest.approx(float(d.score(model, [chat])[0]), rel=1e-5, abs=1e-6)
        np.testing.assert_allclose(got[d.name]["token_scores"], d.token_scores(model, [chat])[0], rtol=1e-5, atol=1e-6)
    assert httpx.get(srv.url + "/v1/models", headers=h).json()["data"][0]["id"] == MODEL
    health = httpx.get(srv.url + "/healthz").json()
    assert health["model"] == {"id": MODEL, "fingerprint": model.fingerprint}
    assert [d["id"] for d in health["detectors"]] == [d.id for d in dets]
    assert httpx.get(srv.url + "/readyz").status_code == 200


def test_zz_metrics_equal_audit_counts(served):
    """Runs last in this module (name): every request above is in both the audit log and the counters."""
    srv, _, _, audit = served
    recs = [json.loads(line) for line in audit.read_text().splitlines()]
    text = httpx.get(srv.url + "/metrics").text

    def total(metric, **labels):
        n = 0.0
        for line in text.splitlines():
            if line.startswith(metric + "{") or line.startswith(metric + " "):
                if all(f'{k}="{v}"' in line for k, v in labels.items()):
                    n += float(line.rsplit(" ", 1)[1])
        return n

    assert len(recs) >= 60
    assert len({r["request_id"] for r in recs}) == len(recs)
    assert total("coalign_requests_total") == len(recs)
    for status in {r["status"] for r in recs}:
        assert total("coalign_requests_total", status=status) == sum(r["status"] == status for r in recs)
    assert total("coalign_generated_tokens_total") == sum(r.get("n_generated") or 0 for r in recs)
    assert total("coalign_blocks_total") == sum(bool(r.get("blocked")) for r in recs) >= 2
    assert {r["status"] for r in recs} >= {200, 400, 401, 403, 404, 413}


def test_bare_server_generates_the_guards_tokens(tmp_path):
    """The no-detector baseline server (benchmarks compare against it) decodes the same greedy tokens."""
    from tiny import tiny_model

    model = tiny_model()
    with ServerThread(create_app(BareEngine(model), audit=tmp_path / "a.jsonl")) as srv:
        chunks, done = sse_events(srv, {"model": MODEL, "messages": msgs(5), "max_tokens": 10})
        plain = client(srv, key="unused").chat.completions.create(model=MODEL, messages=msgs(5), max_tokens=10)
    ref = Guard(model, detectors(model)).generate([msgs(5)], max_new_tokens=10)[0]
    assert done and [c["coalign"]["token_id"] for c in chunks if "token_id" in c.get("coalign", {})] == ref.token_ids
    assert plain.choices[0].message.content == ref.text


@pytest.mark.parametrize("argv, says", [
    (["serve"], "at least one --detector"),
    (["serve", "--detector", "no/such/dir"], "not a detector directory"),
    (["serve", "--no-detectors", "--max-batch", "0"], "--max-batch must be >= 1"),
    (["serve", "--no-detectors", "--escalate-timeout", "3"], "--escalate-timeout needs --escalate-url"),
])
def test_cli_serve_refuses_bad_arguments_before_loading_the_model(argv, says, capsys):
    from detectors.cli import main

    assert main(argv) == 2
    assert says in capsys.readouterr().err
