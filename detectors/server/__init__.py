"""A guarded OpenAI-compatible server (``coalign serve``; needs the ``serve`` extra: FastAPI, uvicorn).

::

    from detectors.server import GuardEngine, create_app
    app = create_app(GuardEngine(model, detectors, policy), audit="audit.jsonl")
    uvicorn.run(app, host="127.0.0.1", port=8000)

Modules: :mod:`~detectors.server.app` (routes, audit, SSE), :mod:`~detectors.server.worker` (the
model-owner thread, queue and micro-batching), :mod:`~detectors.server.engines` (the Guard, or
plain generation), :mod:`~detectors.server.schemas` (request validation),
:mod:`~detectors.server.tighten` (tighten-only request policies), :mod:`~detectors.server.events`
(stream events and chunks), :mod:`~detectors.server.escalation` (the webhook),
:mod:`~detectors.server.metrics` (Prometheus).
"""

from detectors.server.app import create_app
from detectors.server.engines import BareEngine, GuardEngine
from detectors.server.escalation import WebhookEscalator
from detectors.server.schemas import Limits

__all__ = ["BareEngine", "GuardEngine", "Limits", "WebhookEscalator", "create_app"]
