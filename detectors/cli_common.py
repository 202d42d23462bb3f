"""Helpers every ``coalign`` subcommand module shares: tables, JSON output, model choice, argument parsing.

Kept apart from ``cli.py`` so that subcommand modules (``cli_guard``, ``demo``, ...) import these without
importing the parser that imports them (no cycle).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from circuits import DEFAULT_MODEL


def print_table(title: str, rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    columns = list(columns or (rows[0].keys() if rows else []))
    table = Table(title=title)
    for c in columns:
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(*[escape(_fmt(r.get(c, ""))) for c in columns])  # "[held-out]" is text, not markup
    Console(width=max(100, 20 * len(columns))).print(table)


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def write_json(path: str | None, obj: Any) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(obj, indent=2, default=float))


def _model(name: str | None, detector_dir: str | None = None):
    from circuits import EMBEDDED, load_model

    if name is None and detector_dir is not None:
        cfg = json.loads((Path(detector_dir) / "config.json").read_text())
        name = cfg.get("model_id") if cfg.get("model_id") in EMBEDDED else None
    return load_model(name or DEFAULT_MODEL)


def _negatives(arg: list[str] | None) -> Any:
    if arg is None:
        return "auto"
    if len(arg) == 1 and arg[0] in ("auto", "benign", "none"):
        return None if arg[0] == "none" else arg[0]
    return arg


def _preview(item: Any, n: int = 70) -> str:
    text = item if isinstance(item, str) else " | ".join(m["content"] for m in item[-2:]) if isinstance(item, list) else " | ".join(item)
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"
