"""CLI subcommands ``coalign guard``, ``coalign chat`` and ``coalign steer``.

``detectors.cli`` calls :func:`register` with its argparse subparsers. For direct use (tests):
``python -m detectors.cli_guard chat --detector DIR ...``.

::

    coalign guard --detector dec/ --detector syc/ [--policy policy.toml] --prompt "..." [--json out.json]
    coalign guard --detector dec/ --data prompts.jsonl --audit audit.jsonl
    coalign chat  --detector dec/ [--policy policy.toml]
    coalign steer --data pairs.jsonl --hook blocks.12.hook_resid_post --out vectors/syc
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from circuits.errors import CoalignError, InputError

DEFAULT_MODEL = "smollm2-135m-instruct"


# --------------------------------------------------------------------------------------------
# registration
# --------------------------------------------------------------------------------------------
def _positive_int(text: str) -> int:
    """argparse type: refused at parse time, before the model loads (0 used to mean "the default")."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--detector", action="append", required=True, metavar="DIR", help="detector artifact directory (repeatable)")
    p.add_argument("--policy", metavar="FILE", help="policy file (.toml/.yaml); default: monitor every detector")
    p.add_argument("--max-new-tokens", type=_positive_int, default=64, metavar="N", help="tokens to generate per prompt (default 64)")
    p.add_argument("--audit", metavar="FILE", help="append one JSON line per generation to this audit log")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (with --sample)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (with --sample)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed")
    p.add_argument("--scoring", choices=("calibrated", "token"), default="calibrated",
                   help="calibrated: running mean for stream-calibrated detectors (default); token: each token vs the item threshold")
    p.add_argument("--features", type=int, default=0, metavar="K",
                   help="report each flagged token's top K SAE features (detectors linked with `coalign sae link`)")
    p.add_argument("--model", default=DEFAULT_MODEL, help=argparse.SUPPRESS)
    p.add_argument("--no-strict", action="store_true", help=argparse.SUPPRESS)


def register(subparsers: Any) -> None:
    """Add ``guard``, ``chat`` and ``steer`` to an argparse subparsers object."""
    g = subparsers.add_parser(
        "guard",
        help="generate with detectors scoring every token and a policy acting on the scores",
        description="Generate for prompts with the Guard on: per-token detector scores, policy actions, audit log.",
    )
    _common(g)
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", action="append", metavar="TEXT", help="a prompt (repeatable); sent as a user message")
    src.add_argument("--data", metavar="FILE", help="prompts: .txt (one per line), .jsonl or .json (texts, {'prompt': ...} or {'messages': [...]})")
    g.add_argument("--batch-size", type=_positive_int, default=8, metavar="N", help="prompts per batch (default 8)")
    g.add_argument("--json", metavar="OUT", help="write outputs, per-token scores and actions as JSON")
    corr = g.add_mutually_exclusive_group()
    corr.add_argument("--correct", dest="correct", action="store_const", const=True, default=None, help="correctors on from the first token (unconditional)")
    corr.add_argument("--no-correct", dest="correct", action="store_const", const=False, help="never correct (record only)")
    g.set_defaults(func=_safe(cmd_guard))

    c = subparsers.add_parser(
        "chat",
        help="interactive chat with the Guard on (scores shown per turn)",
        description="Chat in the terminal with the Guard on. /reset clears the conversation, /quit exits.",
    )
    _common(c)
    c.add_argument("--system", metavar="TEXT", help="system message")
    c.set_defaults(func=_safe(cmd_chat))

    s = subparsers.add_parser(
        "steer",
        help="build a CAA steering vector from contrast pairs and save it as an artifact",
        description="Mean difference of activations (positive - negative) over contrast pairs at a hook, saved as "
        "weights.safetensors + config.json.",
    )
    s.add_argument("--data", required=True, metavar="FILE", help="pairs: JSONL/JSON rows {positive, negative} or {prompt, positive, negative}")
    where = s.add_mutually_exclusive_group(required=True)
    where.add_argument("--hook", metavar="NAME", help="hook name, e.g. blocks.12.hook_resid_post")
    where.add_argument("--layer", type=int, metavar="L", help="shorthand for blocks.L.hook_resid_post")
    s.add_argument("--out", required=True, metavar="DIR", help="artifact directory to write")
    s.add_argument("--select", default="last", help="token selection (default: last, e.g. the A/B answer letter)")
    s.add_argument("--behaviour", default="", help="behaviour the positive side shows (stored)")
    s.add_argument("--name", default="", help="name stored in the artifact")
    s.add_argument("--batch-size", type=_positive_int, default=16, metavar="N")
    s.add_argument("--json", metavar="OUT", help="write the vector's config and metrics as JSON")
    s.add_argument("--model", default=DEFAULT_MODEL, help=argparse.SUPPRESS)
    s.set_defaults(func=_safe(cmd_steer))


def _safe(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except CoalignError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2

    run.__name__ = fn.__name__
    run.__doc__ = fn.__doc__
    return run


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="coalign")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _load_guard(args: argparse.Namespace, on_escalate: Any = None) -> Any:
    from circuits import load_model
    from detectors.detector import Detector
    from detectors.guard import Guard
    from detectors.policy import Policy

    model = load_model(args.model)
    strict = not args.no_strict
    from detectors.router import Router

    dets = [Detector.load(d, model, strict=strict) for d in args.detector]
    router = Router()
    for det, d in zip(dets, args.detector):
        router.load_link(det, d, model)  # a `coalign sae link` directory routes flags to its SAE features
    policy = Policy.load(args.policy) if args.policy else None
    return Guard(model, dets, policy=policy, on_escalate=on_escalate, router=router, audit=args.audit, strict=strict,
                 scoring=args.scoring, features=args.features)


def _read_prompts(path: str) -> list[Any]:
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file")
    text = p.read_text()
    if p.suffix == ".txt":
        return [ln for ln in text.splitlines() if ln.strip()]
    try:
        rows = json.loads(text) if p.suffix == ".json" else [json.loads(ln) for ln in text.splitlines() if ln.strip()]
    except json.JSONDecodeError as e:
        raise InputError(f"{p}: invalid JSON ({e})") from e
    if not isinstance(rows, list):
        raise InputError(f"{p}: expected a list of prompts")
    out: list[Any] = []
    for i, r in enumerate(rows):
        if isinstance(r, str):
            out.append(r)
        elif isinstance(r, dict) and isinstance(r.get("prompt"), str):
            out.append(r["prompt"])
        elif isinstance(r, dict) and isinstance(r.get("messages"), list):
            out.append(r["messages"])
        elif isinstance(r, list) and all(isinstance(m, dict) for m in r):
            out.append(r)
        else:
            raise InputError(f"{p} row {i + 1}: expected a text, {{'prompt': ...}} or {{'messages': [...]}}")
    if not out:
        raise InputError(f"{p}: no prompts found")
    return out


def _fmt(x: float) -> str:
    return "nan" if not math.isfinite(x) else f"{x:.2f}"


def _clip(s: str, n: int) -> str:
    s = s.replace("\n", "\\n")
    return s if len(s) <= n else s[: n - 1] + "…"


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) if rows else len(header[i]) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def _action_summary(actions: list[Any]) -> str:
    counts: dict[str, int] = {}
    for a in actions:
        counts[a.kind] = counts.get(a.kind, 0) + 1
    return ",".join(f"{k}:{v}" for k, v in sorted(counts.items())) or "-"


# --------------------------------------------------------------------------------------------
# commands
# --------------------------------------------------------------------------------------------
def cmd_guard(args: argparse.Namespace) -> int:
    """``coalign guard``: guarded generation for prompts; a table, and JSON with --json."""
    guard = _load_guard(args)
    prompts = list(args.prompt) if args.prompt else _read_prompts(args.data)
    outs = guard.generate(
        prompts, max_new_tokens=args.max_new_tokens, do_sample=args.sample, temperature=args.temperature,
        top_p=args.top_p, seed=args.seed, batch_size=args.batch_size, correct=args.correct,
    )
    names = guard.names
    rows = []
    for i, o in enumerate(outs):
        mx = o.max_scores(policy=True)
        flagged = {a.detector for a in o.actions if a.kind == "monitor"}
        cells = [f"{_fmt(mx[n])}{'*' if n in flagged else ''}" for n in names]
        rows.append([str(i), o.finish_reason, o.blocked_by or "-", *cells, _action_summary(o.actions), _clip(o.text, 60)])
    print(f"model {guard.model.model_id}  policy {guard.policy.source}  (max of the statistic the policy acts on; "
          "* = above the monitor threshold)")
    print(_table(rows, ["#", "finish", "blocked_by", *[f"max {n}" for n in names], "actions", "text"]))
    if args.json:
        payload = {
            "model": {"id": guard.model.model_id, "fingerprint": guard.model.fingerprint},
            "detectors": guard._meta_dets,
            "policy": guard._policy_meta,
            "settings": {"max_new_tokens": args.max_new_tokens, "sample": args.sample, "temperature": args.temperature, "top_p": args.top_p, "seed": args.seed},
            "results": [{"prompt": p, **o.to_dict(), "max_scores": {k: (v if math.isfinite(v) else None) for k, v in o.max_scores().items()}} for p, o in zip(prompts, outs)],
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(payload, indent=2))
        print(f"wrote {args.json}")
    return 0


def _ask_terminal(ctx: Any) -> str:
    red = " (red line: its block tier still applies)" if ctx.red_line else ""
    print(
        f"\n[escalate] {ctx.detector} score {ctx.score:.2f} above {ctx.threshold:.2f} at token {ctx.token_index}{red}",
        flush=True,
    )
    if ctx.text:
        print(f"  so far: {_clip(ctx.text, 200)}", flush=True)
    while True:
        try:
            ans = input("decision [allow/correct/block]> ").strip().lower()
        except EOFError:
            return "block"
        for d in ("allow", "correct", "block"):
            if ans and d.startswith(ans):
                return d
        print("please answer allow, correct or block", flush=True)


def cmd_chat(args: argparse.Namespace) -> int:
    """``coalign chat``: interactive chat with the Guard on; scores and actions after every turn."""
    guard = _load_guard(args, on_escalate=_ask_terminal)
    names = guard.names
    thr = {r.name: r.monitor for r in guard._res}
    print(f"coalign chat: model {guard.model.model_id}; detectors {', '.join(names)}; policy {guard.policy.source}", flush=True)
    print("Type a message. /reset clears the conversation, /quit exits.", flush=True)
    system = [{"role": "system", "content": args.system}] if args.system else []
    history: list[dict[str, str]] = []
    while True:
        try:
            line = input("you> ")
        except (EOFError, KeyboardInterrupt):
            print(flush=True)
            return 0
        msg = line.strip()
        if not msg:
            continue
        if msg in ("/quit", "/exit", "/q"):
            return 0
        if msg == "/reset":
            history = []
            print("(conversation cleared)", flush=True)
            continue
        history.append({"role": "user", "content": msg})
        out = None
        while True:
            try:
                events = guard.stream(system + history, max_new_tokens=args.max_new_tokens, do_sample=args.sample,
                                      temperature=args.temperature, top_p=args.top_p, seed=args.seed)
                break
            except InputError:
                if len(history) <= 1:
                    raise
                history = history[2:]  # drop the oldest exchange to fit the context
        print("assistant> ", end="", flush=True)
        try:
            for ev in events:
                if ev.done:
                    out = ev.output
                else:
                    if ev.retract:  # the policy's rewind took the last token back: erase it on screen
                        print("\b" * ev.retract + " " * ev.retract + "\b" * ev.retract, end="", flush=True)
                    if ev.text:
                        print(ev.text, end="", flush=True)
        except KeyboardInterrupt:
            print("\n(interrupted)", flush=True)
            history.pop()
            continue
        assert out is not None
        if out.blocked:
            who = out.blocked_by or "a failing detector"
            print(f"\n[blocked by {who}] {out.text}", flush=True)
        else:
            print(flush=True)
        parts = []
        for n in names:
            s = out.policy_scores[n]
            mx = out.max_scores(policy=True)[n]
            flag = " FLAG" if any(a.kind == "monitor" and a.detector == n for a in out.actions) else ""
            parts.append(f"{n} max {_fmt(mx)} last {_fmt(float(s[-1]) if s.size else float('nan'))} thr {_fmt(thr[n])}{flag}")
        print("[scores] " + " | ".join(parts), flush=True)
        for a in out.actions:
            if a.kind != "monitor":
                extra = "" if a.score is None else f" score {a.score:.2f}"
                detail = ", ".join(f"{k}={v}" for k, v in a.detail.items())
                print(f"[action] {a.kind} {a.detector or ''} at token {a.token}{extra}{' (' + detail + ')' if detail else ''}", flush=True)
        history.append({"role": "assistant", "content": out.text})


def cmd_steer(args: argparse.Namespace) -> int:
    """``coalign steer``: build a CAA steering vector from contrast pairs and save it."""
    from circuits import load_model
    from circuits.steering_vectors import build_caa, read_pairs

    model = load_model(args.model)
    pairs = read_pairs(args.data)
    hook = args.hook or f"blocks.{args.layer}.hook_resid_post"
    sv = build_caa(model, pairs, hook, select=args.select, batch_size=args.batch_size, behaviour=args.behaviour, name=args.name)
    path = sv.save(args.out)
    m = sv.metrics
    print(_table(
        [[sv.hook, str(sv.n_pairs), f"{m['norm']:.3f}", f"{m['pair_consistency']:.3f}", f"{m['projection_gap']:.3f}", f"{m['mean_resid_norm']:.1f}"]],
        ["hook", "pairs", "norm", "consistency", "proj gap", "resid norm"],
    ))
    print(f"saved steering vector {sv.id} to {path}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({**sv.config(), "path": str(path)}, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
