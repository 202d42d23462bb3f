"""The FastAPI application: OpenAI-compatible routes over the model worker.

Every request to ``/v1/chat/completions`` and ``/v1/coalign/score`` ends in exactly one audit
record (:meth:`_Server.finish`), whatever happens: refused (4xx), failed, cancelled or answered;
the Prometheus counters are incremented from that same record. Handlers validate everything a
client can get wrong (API key, body size, JSON, fields, model, policy overlay, prompt length)
before the job reaches the worker, so a bad request never costs a forward pass.
"""

from __future__ import annotations

import asyncio
import copy
import hmac
import json
import time
import uuid
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from circuits.errors import CoalignError
from circuits.inputs import as_chat, encode
from detectors.audit import AuditLog, sha256_text
from detectors.server.errors import ApiError
from detectors.server.events import FINISH, ChunkWriter, Failed, Tok, finite, late_actions, sse, sse_all, usage
from detectors.server.metrics import CONTENT_TYPE_LATEST, Metrics
from detectors.server.schemas import Limits, parse_chat, parse_score
from detectors.server.worker import Cancelled, Job, Worker

AUDIT_SCHEMA = 1


class _Server:
    """State shared by the routes: engine, worker, limits, audit, metrics."""

    def __init__(self, engine: Any, audit: str | Path | AuditLog, limits: Limits, api_key: str | None,
                 max_batch: int, batch_wait_s: float, batch_wait_max_s: float) -> None:
        self.engine = engine
        self.model = engine.model
        self.model_id = str(self.model.model_id)
        n_ctx = int(self.model.n_ctx)
        self.limits = Limits(**{**limits.__dict__, "max_prompt_tokens": min(limits.max_prompt_tokens, n_ctx - 1)})
        self.audit = audit if isinstance(audit, AuditLog) else AuditLog(audit)
        self.api_key = api_key
        self.incoming = 0
        self.tokenizer = copy.deepcopy(self.model.tokenizer)  # the event loop's own: the worker's is busy generating
        self.worker = Worker(engine, max_batch=max_batch, batch_wait_s=batch_wait_s, batch_wait_max_s=batch_wait_max_s,
                             incoming=lambda: self.incoming,
                             on_batch=lambda n: self.metrics.batch.observe(n))
        self.metrics = Metrics(self.worker.depth)
        self.ready = False

    # -- request plumbing -----------------------------------------------------------------------
    def check_auth(self, request: Request) -> None:
        if self.api_key is None:
            return
        h = request.headers.get("authorization", "")
        if not h.lower().startswith("bearer ") or not h[7:].strip():
            raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'", None, "authentication_error")
        if not hmac.compare_digest(h[7:].strip().encode(), self.api_key.encode()):
            raise ApiError(401, "invalid API key", None, "authentication_error")

    async def body(self, request: Request) -> Any:
        limit = self.limits.max_body_bytes
        cl = request.headers.get("content-length")
        if cl is not None and cl.isdigit() and int(cl) > limit:
            raise ApiError(413, f"request body is {int(cl)} bytes; this server accepts at most {limit}")
        buf, n = [], 0
        async for c in request.stream():
            n += len(c)
            if n > limit:
                raise ApiError(413, f"request body is over {limit} bytes, the most this server accepts")
            buf.append(c)

        def _no_nan(x: str) -> Any:
            raise ValueError(f"{x} is not valid JSON")

        try:
            return json.loads(b"".join(buf), parse_constant=_no_nan)
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(400, f"malformed JSON body: {e}") from None

    def prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        tok = self.tokenizer
        try:
            n = len(encode(tok, [as_chat(tok, messages, "auto")], int(self.model.n_ctx))[0].ids)
        except CoalignError as e:
            raise ApiError(400, f"messages: {e}".replace("item 0: ", ""), "messages") from e
        if n > self.limits.max_prompt_tokens:
            raise ApiError(400, f"the prompt is {n} tokens; this server accepts at most {self.limits.max_prompt_tokens}", "messages")
        return n

    def record(self, rid: str, endpoint: str, request: Request) -> dict[str, Any]:
        return {"schema": AUDIT_SCHEMA, "request_id": rid, "endpoint": endpoint, "time": datetime.now(timezone.utc).isoformat(),
                "t0": time.perf_counter(), "client": request.client.host if request.client else None,
                "model": {"id": self.model_id, "fingerprint": getattr(self.model, "fingerprint", None)}}

    def finish(self, rec: dict[str, Any], status: int, out: Any = None, error: str | None = None) -> None:
        """Complete and write the request's one audit record, and count it."""
        if "status" in rec:  # already written (a stream that failed after its last chunk)
            return
        rec["status"] = int(status)
        rec["duration_s"] = round(time.perf_counter() - rec.pop("t0"), 4)
        rec["error"] = error
        if out is not None and hasattr(out, "token_ids"):
            rec.update(
                prompt_tokens=out.prompt_tokens, n_generated=len(out.token_ids), finish_reason=out.finish_reason,
                blocked=out.blocked, blocked_by=out.blocked_by,
                scores={"per_token": {k: [round(float(x), 5) for x in v] for k, v in out.scores.items()},
                        "policy_per_token": {k: [round(float(x), 5) for x in v] for k, v in out.policy_scores.items()}},
                actions=[a.to_dict() for a in out.actions], human_decisions=[d.to_dict() for d in out.decisions],
                detector_errors=list(out.errors), correctors=list(out.correctors), output_text=out.text,
                generated_text=out.generated_text,
            )
            if not rec.get("escalations"):
                rec["escalations"] = [{"detector": d.detector, "token": d.token, "outcome": "no_webhook", "decision": d.decision}
                                      for d in out.decisions if d.by == "default"]
        elif out is not None:
            rec["result"] = out
        rec = finite(rec)
        try:
            self.audit.write(rec)
        finally:
            self.metrics.observe(rec)

    def error_response(self, rec: dict[str, Any], e: ApiError) -> JSONResponse:
        self.finish(rec, e.status, error=e.message)
        return JSONResponse(e.body(), status_code=e.status)


def _failure(e: BaseException) -> ApiError:
    if isinstance(e, ApiError):
        return e
    if isinstance(e, Cancelled):
        return ApiError(499, str(e), None, "cancelled")
    if isinstance(e, CoalignError) and type(e).__name__ != "DetectorFailure":
        return ApiError(400, str(e))
    return ApiError(500, f"generation failed: {type(e).__name__}: {e}"[:500], None, "server_error")


def _guard_extra(rid: str, job: Job, out: Any) -> dict[str, Any]:
    return {"request_id": rid, "batch_size": job.record.get("batch_size"), "escalations": job.record.get("escalations", []),
            "human_decisions": [d.to_dict() for d in out.decisions], "detector_errors": list(out.errors)}


def create_app(engine: Any, audit: str | Path | AuditLog = "coalign-serve-audit.jsonl", limits: Limits | None = None,
               api_key: str | None = None, max_batch: int = 8, batch_wait_s: float = 0.005,
               batch_wait_max_s: float = 0.05) -> FastAPI:
    """The server's FastAPI app around a :class:`~detectors.server.engines.GuardEngine` (or
    ``BareEngine``). The model worker starts and stops with the app's lifespan; ``batch_wait_s`` and
    ``batch_wait_max_s``: how long it waits for companions (see :mod:`detectors.server.worker`)."""
    s = _Server(engine, audit, limits or Limits(), api_key, max_batch, batch_wait_s, batch_wait_max_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        s.worker.start()
        s.ready = True
        try:
            yield
        finally:
            s.ready = False
            await run_in_threadpool(s.worker.stop)
            esc = getattr(engine, "escalator", None)
            if esc is not None:
                esc.close()

    app = FastAPI(title="coalign guarded server", lifespan=lifespan)
    app.state.server = s

    def submit(rid: str, kind: str, req: Any, item: Any, rec: dict[str, Any], key: str = "server", guard: Any = None) -> tuple[Job, asyncio.Queue]:
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()

        def emit(ev: Any) -> None:
            try:
                loop.call_soon_threadsafe(q.put_nowait, ev)
            except RuntimeError:  # the loop is gone (shutdown); nobody is listening
                pass

        job = Job(rid, kind, req, item, emit, key, guard, record=rec)
        s.worker.submit(job)
        return job, q

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        rid = "chatcmpl-" + uuid.uuid4().hex[:24]
        rec = s.record(rid, "chat.completions", request)
        s.incoming += 1
        try:
            try:
                s.check_auth(request)
                req = parse_chat(await s.body(request), s.limits, s.model_id)
                rec["settings"] = req.raw_settings
                rec["policy_request"] = req.policy
                key, guard = await run_in_threadpool(engine.guard_for, req.policy)
                rec["policy"] = engine.policy_info(guard)
                rec["detectors"] = [d["name"] for d in engine.describe()]
                rec["prompt_tokens"] = s.prompt_tokens(req.messages)
                rec["prompt_sha256"] = sha256_text(json.dumps(req.messages, ensure_ascii=False))
            except ApiError as e:
                return s.error_response(rec, e)
            except Exception as e:  # a bug, not the client's fault: still one audit record
                return s.error_response(rec, _failure(e))
            job, q = submit(rid, "chat", req, req.messages, rec, key, guard)
        finally:
            s.incoming -= 1
        created = int(time.time())
        if not req.stream:
            return await _complete(job, q, rec, created)
        writer = ChunkWriter(rid, s.model_id, created, engine.hold(guard) if req.buffered else 0, req.buffered)
        return StreamingResponse(_stream(job, q, rec, writer, req.include_usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Request-Id": rid})

    async def _complete(job: Job, q: asyncio.Queue, rec: dict[str, Any], created: int) -> Response:
        try:
            while True:
                ev = await q.get()
                if isinstance(ev, Tok):
                    continue
                if isinstance(ev, Failed):
                    e = _failure(ev.error)
                    s.finish(rec, e.status, error=e.message)
                    return JSONResponse(e.body(), status_code=e.status)
                out = ev.output
                body = {
                    "id": job.rid, "object": "chat.completion", "created": created, "model": s.model_id,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": out.text}, "logprobs": None,
                                 "finish_reason": _finish(out)}],
                    "usage": usage(out),
                    "coalign": finite({**_guard_extra(job.rid, job, out), "finish_reason": out.finish_reason, "blocked": out.blocked,
                                       "blocked_by": out.blocked_by, "scores": {k: v.tolist() if hasattr(v, "tolist") else list(v) for k, v in out.scores.items()},
                                       "policy_scores": {k: v.tolist() if hasattr(v, "tolist") else list(v) for k, v in out.policy_scores.items()},
                                       "actions": [a.to_dict() for a in out.actions]}),
                }
                s.finish(rec, 200, out)
                return JSONResponse(body)
        except asyncio.CancelledError:
            job.cancelled = True
            s.finish(rec, 499, error="the client went away")
            raise

    async def _stream(job: Job, q: asyncio.Queue, rec: dict[str, Any], writer: ChunkWriter, include_usage: bool) -> AsyncIterator[str]:
        t0 = rec["t0"]
        done = False
        try:
            yield sse(writer.first())
            while True:
                ev = await q.get()
                if isinstance(ev, Tok):
                    if "ttft_s" not in rec:
                        rec["ttft_s"] = round(time.perf_counter() - t0, 4)
                    chunks = writer.token(ev)
                    if chunks:
                        yield sse_all(chunks)
                    continue
                if isinstance(ev, Failed):
                    e = _failure(ev.error)
                    s.finish(rec, e.status, error=e.message)
                    done = True
                    yield sse(e.body()) + "data: [DONE]\n\n"
                    return
                out = ev.output
                extra = {**_guard_extra(job.rid, job, out), "actions": late_actions(out, writer.n_events)}
                chunks = writer.done(out, extra)
                if include_usage:
                    u = writer.chunk({}, None)
                    u["choices"], u["usage"] = [], usage(out)
                    chunks.append(u)
                s.finish(rec, 200, out)
                done = True
                yield sse_all(chunks) + "data: [DONE]\n\n"
                return
        finally:
            if not done:  # the client went away (or the server is stopping) before the end
                job.cancelled = True
                s.finish(rec, 499, error="the client went away mid-stream")

    @app.post("/v1/coalign/score")
    async def score(request: Request) -> Response:
        rid = "score-" + uuid.uuid4().hex[:24]
        rec = s.record(rid, "coalign.score", request)
        try:
            s.check_auth(request)
            req = parse_score(await s.body(request), s.limits, s.model_id)
            s.prompt_tokens(req.messages)
            rec["prompt_sha256"] = sha256_text(json.dumps(req.messages, ensure_ascii=False))
        except ApiError as e:
            return s.error_response(rec, e)
        except Exception as e:
            return s.error_response(rec, _failure(e))
        job, q = submit(rid, "score", req, req.messages, rec)
        ev = await q.get()
        if isinstance(ev, Failed):
            return s.error_response(rec, _failure(ev.error))
        s.finish(rec, 200, ev.output)
        return JSONResponse(finite({"id": rid, "object": "coalign.score", "model": s.model_id, "detectors": ev.output}))

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        try:
            s.check_auth(request)
        except ApiError as e:
            return JSONResponse(e.body(), status_code=e.status)
        return JSONResponse({"object": "list", "data": [{"id": s.model_id, "object": "model", "created": 0, "owned_by": "coalign"}]})

    @app.get("/healthz")
    async def healthz() -> Response:
        return JSONResponse(finite({"status": "ok" if s.worker.alive else "worker_dead",
                                    "model": {"id": s.model_id, "fingerprint": getattr(s.model, "fingerprint", None)},
                                    "detectors": engine.describe(), "policy": engine.policy_info()}),
                            status_code=200 if s.worker.alive else 503)

    @app.get("/readyz")
    async def readyz() -> Response:
        ok = s.ready and s.worker.alive
        return JSONResponse({"ready": ok, "queue_depth": s.worker.depth()}, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(s.metrics.text(), media_type=CONTENT_TYPE_LATEST)

    return app


def _finish(out: Any) -> str:
    return FINISH.get(out.finish_reason, "stop")


__all__ = ["create_app"]
