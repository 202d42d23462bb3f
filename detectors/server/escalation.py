"""Escalation over HTTP: the Guard's ``on_escalate`` posts the context to a webhook and waits.

The webhook receives ``{request_id, detector, behaviour, score, threshold, token_index, text,
red_line, reason}`` and answers ``{"decision": "allow" | "correct" | "block", "reviewer": ...,
"reason": ...}``. Generation (the whole micro-batch: the Guard is one loop) waits at most
``timeout`` seconds; on a timeout, an unreachable hook or an unreadable answer the policy decides:
``on_timeout`` (``block`` by default; ``correct`` is the other choice, never ``allow``). Every
outcome is recorded for the request's audit record, and the Guard records the decision it acted on.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Callable

from circuits.errors import InputError
from detectors.policy import Decision

ON_TIMEOUT = ("block", "correct")


def _post(url: str, payload: dict[str, Any], timeout: float) -> dict[str, Any]:
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 - the operator's own URL
        return json.loads(r.read(1 << 16).decode() or "{}")


class WebhookEscalator:
    """``on_escalate`` for a Guard: ask a webhook, with a deadline.

    ``lookup(ctx)`` maps the escalation context to its request record (a dict with ``request_id``
    and an ``escalations`` list); the worker provides it for the batch in flight.
    """

    def __init__(self, url: str, timeout: float = 10.0, on_timeout: str = "block",
                 post: Callable[[str, dict[str, Any], float], dict[str, Any]] = _post) -> None:
        if not url.startswith(("http://", "https://")):
            raise InputError(f"escalation webhook must be an http(s) URL, got {url!r}")
        if not timeout > 0:
            raise InputError(f"escalation timeout must be > 0 seconds, got {timeout!r}")
        if on_timeout not in ON_TIMEOUT:
            raise InputError(f"escalation on-timeout decision must be one of {', '.join(ON_TIMEOUT)}, got {on_timeout!r}")
        self.url, self.timeout, self.on_timeout, self._post = url, float(timeout), on_timeout, post
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="coalign-escalate")
        self._lock = threading.Lock()
        self.lookup: Callable[[Any], dict[str, Any] | None] = lambda ctx: None

    def __call__(self, ctx: Any) -> Decision:
        req = self.lookup(ctx)
        payload = {
            "request_id": None if req is None else req.get("request_id"),
            "detector": ctx.detector, "behaviour": ctx.behaviour, "score": ctx.score, "threshold": ctx.threshold,
            "token_index": ctx.token_index, "text": ctx.text, "red_line": ctx.red_line, "reason": ctx.reason,
        }
        t0 = time.perf_counter()
        rec: dict[str, Any] = {"detector": ctx.detector, "token": ctx.token_index, "score": ctx.score, "url": self.url}
        try:
            answer = self._pool.submit(self._post, self.url, payload, self.timeout).result(timeout=self.timeout)
            decision = Decision.parse(answer.get("decision") if isinstance(answer, dict) else answer)
            rec.update(outcome="answered", decision=decision.value, reviewer=answer.get("reviewer") if isinstance(answer, dict) else None,
                       reason=answer.get("reason") if isinstance(answer, dict) else None)
        except FutureTimeout:
            decision = Decision(self.on_timeout)
            rec.update(outcome="timeout", decision=decision.value)
        except Exception as e:  # unreachable, HTTP error, bad JSON, unknown decision: the policy decides
            decision = Decision(self.on_timeout)
            rec.update(outcome="error", decision=decision.value, error=f"{type(e).__name__}: {e}"[:300])
        rec["latency_s"] = round(time.perf_counter() - t0, 4)
        if req is not None:
            with self._lock:
                req.setdefault("escalations", []).append(rec)
        return decision

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
