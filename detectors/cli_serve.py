"""``coalign serve``: the guarded OpenAI-compatible server (needs the ``serve`` extra).

::

    coalign serve --detector dec/ --detector syc/ [--policy policy.toml] [--host 127.0.0.1] [--port 8000]
                  [--api-key KEY] [--audit serve-audit.jsonl] [--escalate-url URL [--escalate-timeout 10]]

Everything a user can get wrong (files, URL, numbers, missing extra) is checked before the model loads.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from circuits.errors import InputError

DEFAULT_MODEL = "smollm2-135m-instruct"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve the model behind an OpenAI-compatible API with the Guard on (scores in the stream)",
        description="POST /v1/chat/completions (OpenAI; stream: true sends per-token scores in each chunk's 'coalign' "
        "object), POST /v1/coalign/score, GET /v1/models, /healthz, /readyz, /metrics. One audit line per request.",
    )
    p.add_argument("--detector", action="append", default=[], metavar="DIR", help="detector artifact directory (repeatable)")
    p.add_argument("--no-detectors", action="store_true", help="serve plain generation with no Guard (the benchmark baseline)")
    p.add_argument("--policy", metavar="FILE", help="policy file (.toml/.yaml); default: monitor every detector")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model to serve (default {DEFAULT_MODEL})")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free port)")
    p.add_argument("--api-key", default=os.environ.get("COALIGN_API_KEY"), metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on /v1/* (default: $COALIGN_API_KEY; none = open)")
    p.add_argument("--audit", default="coalign-serve-audit.jsonl", metavar="FILE", help="JSONL audit log, one record per request")
    p.add_argument("--escalate-url", metavar="URL", help="webhook asked when a score reaches a policy's escalate tier")
    p.add_argument("--escalate-timeout", type=float, default=10.0, metavar="S", help="seconds to wait for the webhook (default 10)")
    p.add_argument("--escalate-on-timeout", choices=("block", "correct"), default="block",
                   help="decision when the webhook does not answer in time (default block)")
    p.add_argument("--scoring", choices=("calibrated", "token"), default="calibrated", help="as in `coalign guard`")
    p.add_argument("--max-batch", type=int, default=8, metavar="N", help="requests per micro-batch at most (default 8)")
    p.add_argument("--batch-wait-ms", type=float, default=5.0, metavar="MS", help="how long the worker waits for companions (default 5)")
    p.add_argument("--batch-wait-max-ms", type=float, default=50.0, metavar="MS",
                   help="longest wait for companions while requests are arriving (default 50)")
    p.add_argument("--max-tokens", type=int, default=512, metavar="N", help="largest max_tokens a request may ask for (default 512)")
    p.add_argument("--max-prompt-tokens", type=int, default=2048, metavar="N", help="longest prompt accepted, in tokens (default 2048)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, metavar="N", help="largest request body (default 1 MiB)")
    p.add_argument("--no-strict", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_serve)


def _check(args: argparse.Namespace) -> None:
    if args.no_detectors and args.detector:
        raise InputError("--no-detectors and --detector exclude each other")
    if not args.no_detectors and not args.detector:
        raise InputError("serve needs at least one --detector DIR (or --no-detectors for plain generation)")
    for d in args.detector:
        if not (Path(d) / "config.json").is_file():
            raise InputError(f"--detector {d}: not a detector directory (no config.json)")
    if args.policy and args.no_detectors:
        raise InputError("--policy needs detectors to act on")
    if args.policy:
        from detectors.policy import Policy

        Policy.load(args.policy)  # parse errors now, not after the model loads
    for name in ("max_batch", "max_tokens", "max_prompt_tokens", "max_body_bytes"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0 <= args.port <= 65535:
        raise InputError(f"--port must be in 0..65535, got {args.port}")
    if not 0 <= args.batch_wait_ms <= args.batch_wait_max_ms:
        raise InputError(f"--batch-wait-ms must be in 0..--batch-wait-max-ms ({args.batch_wait_max_ms}), got {args.batch_wait_ms}")
    if args.escalate_url is None and args.escalate_timeout != 10.0:
        raise InputError("--escalate-timeout needs --escalate-url")
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise InputError(f"coalign serve needs the 'serve' extra: pip install 'coalign[serve]' ({e})") from e


def cmd_serve(args: argparse.Namespace) -> int:
    _check(args)
    from circuits import load_model
    from detectors.detector import Detector
    from detectors.server import BareEngine, GuardEngine, Limits, WebhookEscalator, create_app

    esc = WebhookEscalator(args.escalate_url, args.escalate_timeout, args.escalate_on_timeout) if args.escalate_url else None
    model = load_model(args.model)
    if args.no_detectors:
        engine: Any = BareEngine(model)
    else:
        dets = [Detector.load(d, model, strict=not args.no_strict) for d in args.detector]
        engine = GuardEngine(model, dets, args.policy, on_escalate=esc, scoring=args.scoring, strict=not args.no_strict)
    limits = Limits(max_body_bytes=args.max_body_bytes, max_prompt_tokens=args.max_prompt_tokens,
                    max_tokens=args.max_tokens, default_max_tokens=min(128, args.max_tokens))
    app = create_app(engine, audit=args.audit, limits=limits, api_key=args.api_key, max_batch=args.max_batch,
                     batch_wait_s=args.batch_wait_ms / 1000, batch_wait_max_s=args.batch_wait_max_ms / 1000)
    import uvicorn

    print(f"coalign serve: {model.model_id} with {len(engine.names)} detector(s) on http://{args.host}:{args.port}; "
          f"audit -> {args.audit}", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


if __name__ == "__main__":  # pragma: no cover
    ap = argparse.ArgumentParser(prog="coalign")
    register(ap.add_subparsers(dest="cmd", required=True))
    a = ap.parse_args()
    sys.exit(a.func(a))
