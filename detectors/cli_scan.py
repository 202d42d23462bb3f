"""``coalign scan``: score a prompt or a labelled file and print a table, or batch-scan a corpus into Parquet (``--out``)."""

from __future__ import annotations

import argparse
from typing import Any

from circuits.errors import InputError
from detectors.cli_common import _model, _preview, print_table, write_json


def cmd_scan(args: argparse.Namespace) -> int:
    if args.out is not None:
        return _batch(args)
    for flag, given in (("--engine", args.engine != "local"), ("--actors", args.actors != 1), ("--resume", args.resume),
                        ("--gpus-per-actor", bool(args.gpus_per_actor)), ("--id-column", args.id_column != "id")):
        if given:
            raise InputError(f"{flag} applies to batch scans: give --out DIR")
    if len(args.detector) != 1:
        raise InputError(f"without --out, scan takes one detector, got {len(args.detector)}")
    if args.response is not None and args.prompt is None:
        raise InputError("--response needs --prompt")
    if args.response is not None and not args.response.strip():
        raise InputError("--response is empty: give the assistant's response to judge, or leave --response out")
    if args.prompt is not None and not args.prompt.strip():
        raise InputError("--prompt is empty")
    from detectors import Detector
    from probe.datasets import load_data

    model = _model(args.model, args.detector[0])
    det = Detector.load(args.detector[0], model)
    if args.prompt is not None:
        item: Any = [{"role": "user", "content": args.prompt}]
        if args.response is not None:
            item.append({"role": "assistant", "content": args.response})
        items, labels = [item], [None]
    else:
        ds = load_data(args.data)
        items, labels = ds.items, list(ds.labels)
    scores = det.score(model, items)
    rows = [
        {"i": i, "text": _preview(it), "score": float(s), "flag": bool(s > det.threshold), "label": lab}
        for i, (it, s, lab) in enumerate(zip(items, scores, labels))
    ]
    if args.explain:
        for row, toks in zip(rows, det.explain(model, items)):
            top = sorted(range(len(toks)), key=lambda k: -toks[k][1])[: args.explain]
            row["top tokens"] = "  ".join(f"{toks[k][0].strip() or repr(toks[k][0])}@{k} {toks[k][1]:+.2f}" for k in top)
            row["tokens"] = toks
    print_table(f"{det.name} scan (threshold {det.threshold:.3f} at {det.fpr:.0%} FPR)", rows,
                [c for c in rows[0] if c != "tokens"] if rows else None)
    write_json(args.json, rows)
    return 0


def _batch(args: argparse.Namespace) -> int:
    from detectors.scan import scan

    if args.data is None:
        raise InputError("--out scans a corpus: give --data CORPUS, not --prompt")
    if args.explain:
        raise InputError("--explain applies to table scans (without --out)")
    m = scan(args.detector, args.data, args.out, model=args.model, engine=args.engine, actors=args.actors,
             gpus_per_actor=args.gpus_per_actor, batch_size=args.batch_size, id_column=args.id_column,
             resume=args.resume, progress=True)
    row = {k: m[k] for k in ("input_rows", "output_rows", "unique_ids", "missing", "duplicated", "extra",
                             "rows_scored_this_run", "rows_per_s_this_run")}
    print_table(f"scan -> {args.out} ({'exact' if m['exact'] else 'NOT EXACT'}, {m['engine']} engine)", [row])
    write_json(args.json, m)
    if not m["exact"]:
        print(f"coalign: error: output ids differ from input ids (see {args.out}/manifest.json); rerun with --resume")
        return 1
    return 0


def register(sub: Any) -> None:
    s = sub.add_parser("scan", help="score prompts/responses with a detector, or batch-scan a corpus to Parquet (--out)")
    s.add_argument("detector", nargs="+", help="detector folder(s); several with --out")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--prompt")
    g.add_argument("--data", help="a labelled file, or with --out a corpus: Parquet (file, folder, glob) or JSONL/JSON/CSV")
    s.add_argument("--response", default=None, help="assistant response to judge (with --prompt)")
    s.add_argument("--explain", type=int, nargs="?", const=5, default=0, metavar="K",
                   help="also show the K tokens (default 5) with the highest scores (the item score is the mean of all its token scores)")
    s.add_argument("--model", default=None)
    s.add_argument("--json", default=None)
    b = s.add_argument_group("batch scan (--out)")
    b.add_argument("--out", default=None, help="write Parquet parts and manifest.json to this (new or empty) folder")
    b.add_argument("--engine", choices=("local", "ray"), default="local")
    b.add_argument("--actors", type=int, default=1, help="Ray actors (one model each)")
    b.add_argument("--gpus-per-actor", type=float, default=0.0)
    b.add_argument("--batch-size", type=int, default=64)
    b.add_argument("--id-column", default="id")
    b.add_argument("--resume", action="store_true", help="continue a failed run in --out, scoring only rows it lacks")
    s.set_defaults(func=cmd_scan)
