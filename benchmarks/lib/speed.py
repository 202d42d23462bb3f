"""The speed entry point: a pytest-benchmark file of ``benchmarks/`` (``bench_*.py``) run in a
subprocess; its timings and the ratios each benchmark stores in ``extra_info`` become the result.

Speed is always a ratio against a baseline measured in the same run (the bench files interleave the
contenders); the absolute timings are kept in ``data`` for reference only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.registry import analysis
from benchmarks.suite import REPO, BenchmarkConfigError, Context, Result

BENCH_DIR = Path(__file__).resolve().parents[1]


def _check(p: dict[str, Any]) -> None:
    f = BENCH_DIR / p["file"]
    if not (f.name.startswith("bench_") and f.suffix == ".py" and f.is_file()):
        raise BenchmarkConfigError(f"file must name a benchmarks/bench_*.py file, got {p['file']!r}")


def pytest_command(params: dict[str, Any], out: Path) -> list[str]:
    """The pytest invocation of a speed config (``-s`` so the bench files' own ratio lines reach the log)."""
    cmd = [sys.executable, "-m", "pytest", str(Path("benchmarks") / params["file"]), "-s", "-q", "-p", "no:cacheprovider",
           f"--benchmark-json={out / 'benchmark.json'}"]
    if params["select"]:
        cmd += ["-k", params["select"]]
    return cmd


@analysis({"file": "bench_guard_overhead.py", "select": "", "env": {}}, _check)
def run_pytest_benchmark(ctx: Context) -> Result:
    """Run the bench file with ``env`` set (e.g. ``COALIGN_BENCH_REPS``); fails if pytest does."""
    p = ctx.config.params
    cmd = pytest_command(p, ctx.out)
    env = os.environ | {k: str(v) for k, v in p["env"].items()}
    ctx.log(" ".join(cmd))
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    (ctx.out / "pytest.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise BenchmarkConfigError(f"{p['file']}: pytest exited {proc.returncode}; see {ctx.out / 'pytest.log'}")
    bench = json.loads((ctx.out / "benchmark.json").read_text())
    figures = {b["name"]: b.get("extra_info", {}) for b in bench["benchmarks"]}
    timings = [{"benchmark": b["name"], "median_s": b["stats"]["median"], "rounds": b["stats"]["rounds"]} for b in bench["benchmarks"]]
    data = {"machine_info": bench.get("machine_info"), "benchmarks": bench["benchmarks"], "command": cmd, "env": p["env"]}
    return Result(figures=figures, data=data, tables={"timings (for reference; the figures are same-run ratios)": timings},
                  notes=["pytest output: pytest.log; raw pytest-benchmark record: benchmark.json"])
