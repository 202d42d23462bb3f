"""Prometheus metrics, counted from the same record that becomes the request's audit line, so
``/metrics`` and the audit log cannot disagree (see :meth:`Metrics.observe`)."""

from __future__ import annotations

from typing import Any, Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401 - re-exported for the app

_LATENCY = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    """One registry per server (tests run several in one process)."""

    def __init__(self, queue_depth: Callable[[], int]) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("coalign_requests", "Requests answered (one audit record each)", ["endpoint", "status"], registry=r)
        self.tokens = Counter("coalign_generated_tokens", "Tokens generated", registry=r)
        self.blocks = Counter("coalign_blocks", "Responses ended by a block", ["detector"], registry=r)
        self.corrections = Counter("coalign_corrections", "Corrections started", ["detector"], registry=r)
        self.escalations = Counter("coalign_escalations", "Escalations sent to the webhook", ["outcome", "decision"], registry=r)
        self.detector_errors = Counter("coalign_detector_errors", "Detector failures", ["detector", "handling"], registry=r)
        self.latency = Histogram("coalign_request_latency_seconds", "Request latency", ["endpoint"], buckets=_LATENCY, registry=r)
        self.ttft = Histogram("coalign_time_to_first_token_seconds", "Time to first token (streams)", buckets=_LATENCY, registry=r)
        self.batch = Histogram("coalign_batch_size", "Requests per Guard batch", buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32), registry=r)
        depth = Gauge("coalign_queue_depth", "Requests waiting for the model worker", registry=r)
        depth.set_function(lambda: float(queue_depth()))

    def observe(self, rec: Mapping[str, Any]) -> None:
        """Count one finished request from its audit record."""
        self.requests.labels(rec["endpoint"], str(rec["status"])).inc()
        if rec.get("duration_s") is not None:
            self.latency.labels(rec["endpoint"]).observe(float(rec["duration_s"]))
        if rec.get("ttft_s") is not None:
            self.ttft.observe(float(rec["ttft_s"]))
        self.tokens.inc(int(rec.get("n_generated") or 0))
        if rec.get("blocked"):
            self.blocks.labels(str(rec.get("blocked_by"))).inc()
        for a in rec.get("actions") or []:
            if a.get("kind") == "correct":
                self.corrections.labels(str(a.get("detector"))).inc()
        for e in rec.get("escalations") or []:
            self.escalations.labels(e.get("outcome", "?"), e.get("decision", "?")).inc()
        for e in rec.get("detector_errors") or []:
            self.detector_errors.labels(str(e.get("detector")), str(e.get("handling"))).inc()

    def text(self) -> bytes:
        return generate_latest(self.registry)
