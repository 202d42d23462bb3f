"""Helpers every ``coalign`` subcommand module shares: tables, JSON output, model choice, argument parsing.

Kept apart from ``cli.py`` so that subcommand modules (``cli_guard``, ``demo``, ...) import these without
importing the parser that imports them (no cycle).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

from circuits.errors import ArtifactError, InputError


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


# --- checks run before any model is loaded: a bad argument fails in milliseconds, not after minutes ---

def check_output_file(path: str | None, flag: str) -> None:
    """``path`` can be written: not a directory, and its folder exists (or can be made) and is writable."""
    if not path:
        return
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{flag} {path}: is a directory; expected a file path")
    _check_writable_parent(p, flag)
    if p.exists() and not os.access(p, os.W_OK):
        raise InputError(f"{flag} {path}: file is not writable")


def check_output_dir(path: str | None, flag: str) -> None:
    """An artifact can be saved at ``path`` (a new folder, an empty one, or a coalign artifact to replace)."""
    if not path:
        return
    from circuits.artifact_dirs import check_replaceable

    p = Path(path)
    if p.exists():
        try:
            check_replaceable(p)
        except ArtifactError as e:
            raise InputError(f"{flag}: {e}") from None
    _check_writable_parent(p, flag)


def _check_writable_parent(p: Path, flag: str) -> None:
    parent = p.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {p}: cannot write in {parent}")


def check_input_files(paths: Sequence[str] | None, flag: str, parse: bool = True) -> None:
    """Each entry is ``recipe:NAME`` or a readable UTF-8 data file; with ``parse`` its rows are read too
    (milliseconds), so a malformed row is reported, naming file, row and field, before the model loads."""
    from probe.datasets import load_data
    from probe.datasets.recipes import RECIPE_PREFIX, RECIPES

    for spec in paths or ():
        if spec.startswith(RECIPE_PREFIX):
            if spec[len(RECIPE_PREFIX):] not in RECIPES:
                raise InputError(f"{flag}: unknown dataset recipe {spec[len(RECIPE_PREFIX):]!r}; valid: {', '.join(RECIPES)}")
            continue
        p = Path(spec)
        if not p.exists():
            raise InputError(f"{flag} {spec}: no such file")
        if not p.is_file():
            raise InputError(f"{flag} {spec}: is a directory, expected a data file")
        try:
            with open(p, encoding="utf-8") as f:
                while f.read(1 << 20):
                    pass
        except UnicodeDecodeError as e:
            raise InputError(f"{flag} {spec}: not UTF-8 text (byte {e.start}: {e.reason})") from None
        except OSError as e:
            raise InputError(f"{flag} {spec}: cannot read ({e.strerror})") from None
        if parse:
            load_data(spec)


def check_unit_interval(value: float | None, flag: str, allow_zero: bool = False) -> None:
    if value is None:
        return
    ok = math.isfinite(value) and (0 <= value < 1 if allow_zero else 0 < value < 1)
    if not ok:
        raise InputError(f"{flag} must be a number {'in [0, 1)' if allow_zero else 'strictly between 0 and 1'}, got {value}")


def check_method(name: str) -> None:
    """``--method`` names a built-in probe kind (a CLI process has no user-registered ones)."""
    from probe.probe_names import BUILTIN_PROBES

    if name not in BUILTIN_PROBES:
        raise InputError(f"unknown probe {name!r} (--method); valid names: {', '.join(BUILTIN_PROBES)}")


def check_detector_dirs(paths: Sequence[str], flag: str = "detector") -> None:
    for d in paths:
        if not (Path(d) / "config.json").is_file():
            raise InputError(f"{flag} {d}: not a detector directory (no config.json)")


def _model(name: str | None, detector_dir: str | None = None):
    from circuits import DEFAULT_MODEL, EMBEDDED, load_model

    if name is None and detector_dir is not None:
        cfg_path = Path(detector_dir) / "config.json"
        try:
            cfg = json.loads(cfg_path.read_text())
        except (OSError, ValueError) as e:
            raise ArtifactError(f"{cfg_path}: cannot read the detector's config ({e}); pass --model to choose the model") from None
        if not isinstance(cfg, dict):
            raise ArtifactError(f"{cfg_path}: expected a JSON object; pass --model to choose the model")
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
