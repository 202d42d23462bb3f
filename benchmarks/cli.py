"""The suite's command line: ``run`` a config, ``list`` the configs."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import Any, Sequence

from circuits import CoalignError


def _value(text: str) -> Any:
    """``--set`` values are JSON where they parse (numbers, lists, booleans), else strings."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _overrides(pairs: Sequence[str]) -> dict[str, Any]:
    out = {}
    for p in pairs:
        key, sep, val = p.partition("=")
        if not sep or not key:
            raise SystemExit(f"python -m benchmarks: --set takes KEY=VALUE, got {p!r}")
        out[key.strip()] = _value(val)
    return out


def cmd_run(args: argparse.Namespace) -> int:
    from benchmarks.suite import Config, default_out, run_config

    cfg = Config.load(args.config, quick=args.quick, overrides=_overrides(args.set))
    out = args.out or default_out(cfg)
    command = shlex.join(["python", "-m", "benchmarks", *sys.argv[1:]])
    res = run_config(cfg, out=out, model_id=args.model, command=command)
    from benchmarks.suite import flat_figures

    for k, v in flat_figures(res.figures).items():
        print(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")
    print(f"wrote {out}/results.json and report.md")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from benchmarks.suite import CONFIGS, Config

    for path in sorted(CONFIGS.glob("*.toml")):
        try:
            cfg = Config.load(path)
        except CoalignError as e:  # e.g. a detector folder this checkout has not built
            print(f"{path.stem:34s} (not runnable here: {e})")
            continue
        print(f"{cfg.name:34s} {cfg.entry:11s} {cfg.analysis:30s} {cfg.description[:90]}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description="coalign's benchmark suite")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run one config and write results.json, report.md and plots")
    r.add_argument("config", help="a config name (benchmarks/configs/NAME.toml) or path")
    r.add_argument("--quick", action="store_true", help="the config's [quick] settings (minutes)")
    r.add_argument("--out", default=None, help="output folder (default benchmarks/results/NAME; quick: runs/benchmarks/NAME_quick)")
    r.add_argument("--model", default=None, help="model to load instead of the config's")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a parameter (JSON value)")
    r.set_defaults(func=cmd_run)
    ls = sub.add_parser("list", help="the configs, their entry points and analyses")
    ls.set_defaults(func=cmd_list)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CoalignError as e:
        print(f"python -m benchmarks: error: {e}", file=sys.stderr)
        return 2
