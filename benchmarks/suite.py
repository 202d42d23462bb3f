"""The benchmark suite's core: a config (TOML), the context an analysis runs in, and one result type.

A config names an entry point (``detection``, ``correction`` or ``speed``), an analysis (a function
of :mod:`benchmarks.lib`, listed in :data:`benchmarks.registry.ANALYSES`) and its parameters::

    entry = "detection"
    analysis = "deception_training_data"
    model = "smollm2-135m-instruct"
    [params]            # overrides of the analysis's PARAMS defaults
    eval_sets = ["roleplay_lies", "roleplay_lies_2"]
    [quick]             # further overrides under --quick
    eval_sets = ["roleplay_lies_2"]

String parameters may name files as ``{datasets}/caa/...`` (the public datasets folder: the config's
``datasets``, default ``../shared/datasets`` from the repository root, or ``$COALIGN_SHARED/datasets``)
or ``{repo}/...``; such files must exist, and that is checked before any model is loaded. The product
packages never see these paths: the suite passes them in.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Mapping

from circuits.errors import CoalignError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parent.parent
CONFIGS = Path(__file__).resolve().parent / "configs"
RESULTS = Path(__file__).resolve().parent / "results"
ENTRIES = ("detection", "correction", "speed")
TOP_KEYS = {"name", "description", "entry", "analysis", "model", "datasets", "params", "quick"}


class BenchmarkConfigError(CoalignError):
    """A benchmark config that cannot run: unknown analysis or parameter, missing file."""


def datasets_dir(configured: str | None = None) -> Path:
    """``$COALIGN_SHARED/datasets`` if set, else the config's ``datasets`` (relative to the repository
    root), else ``../shared/datasets``."""
    env = os.environ.get("COALIGN_SHARED")
    if env:
        return Path(env) / "datasets"
    return (REPO / (configured or "../shared/datasets")).resolve()


def config_path(name: str | os.PathLike) -> Path:
    """A config file by path, or by name in ``benchmarks/configs``."""
    p = Path(name)
    if p.suffix == ".toml" and p.is_file():
        return p
    q = CONFIGS / f"{p.stem}.toml"
    if q.is_file():
        return q
    known = ", ".join(sorted(c.stem for c in CONFIGS.glob("*.toml")))
    raise BenchmarkConfigError(f"benchmark config {str(name)!r} not found (configs: {known})")


@dataclass
class Config:
    """A parsed, validated benchmark config. ``params`` are the effective parameters (the analysis's
    defaults, the config's ``[params]``, ``[quick]`` when quick, then explicit overrides)."""

    name: str
    entry: str
    analysis: str
    model: str | None
    datasets: Path
    params: dict[str, Any]
    quick: bool
    raw: dict[str, Any]
    source: str
    description: str = ""

    @classmethod
    def load(cls, path: str | os.PathLike, quick: bool = False, overrides: Mapping[str, Any] | None = None) -> "Config":
        from benchmarks.registry import analysis_defaults, check_params, entry_of

        path = config_path(path)
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise BenchmarkConfigError(f"{path}: not valid TOML ({e})") from e
        unknown = set(raw) - TOP_KEYS
        if unknown:
            raise BenchmarkConfigError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}")
        analysis = raw.get("analysis")
        if not isinstance(analysis, str):
            raise BenchmarkConfigError(f"{path}: 'analysis' must name an analysis")
        entry = raw.get("entry", entry_of(analysis))
        if entry not in ENTRIES:
            raise BenchmarkConfigError(f"{path}: entry must be one of {', '.join(ENTRIES)}, got {entry!r}")
        defaults = analysis_defaults(analysis)
        params = dict(defaults)
        layers = [("params", raw.get("params", {}))] + ([("quick", raw.get("quick", {}))] if quick else [])
        layers.append(("override", dict(overrides or {})))
        for where, table in layers:
            bad = set(table) - set(defaults)
            if bad:
                raise BenchmarkConfigError(f"{path}: [{where}] has unknown parameter(s) {', '.join(sorted(bad))} for "
                                           f"analysis {analysis!r} (known: {', '.join(sorted(defaults))})")
            params.update(table)
        ddir = datasets_dir(raw.get("datasets"))
        params = {k: _expand(v, ddir, f"{path.name}: parameter {k!r}") for k, v in params.items()}
        try:
            check_params(analysis, params)
        except BenchmarkConfigError as e:
            raise BenchmarkConfigError(f"{path.name}: {e}") from None
        return cls(raw.get("name", path.stem), entry, analysis, raw.get("model"), ddir, params, quick, raw,
                   str(path.relative_to(REPO) if path.is_relative_to(REPO) else path), raw.get("description", ""))


def _expand(value: Any, ddir: Path, where: str) -> Any:
    if isinstance(value, list):
        return [_expand(v, ddir, where) for v in value]
    if not isinstance(value, str) or not ("{datasets}" in value or "{repo}" in value):
        return value
    p = Path(value.replace("{datasets}", str(ddir)).replace("{repo}", str(REPO)))
    if not p.exists():
        hint = "set COALIGN_SHARED to the folder holding datasets/" if "{datasets}" in value else "build it first; see the config"
        raise BenchmarkConfigError(f"{where}: {p} not found ({hint})")
    return str(p)


@dataclass
class Result:
    """What a benchmark run produced. ``figures``: the headline figures by name (what the README
    quotes); ``data``: everything measured; ``tables``: titled rows for ``report.md``; ``report``:
    further markdown; ``plots``: image files written into the output folder. ``meta`` is filled by
    the suite (config copy, effective params, git revision, model fingerprint, command, timing)."""

    figures: dict[str, Any]
    data: dict[str, Any]
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    report: str = ""
    plots: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {**self.meta, "figures": self.figures, "notes": self.notes, "plots": self.plots, "data": self.data}

    def write(self, out: str | os.PathLike) -> Path:
        """Write ``results.json`` and ``report.md`` into ``out``; returns the folder."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(self.to_json(), indent=2, default=_jsonable))
        (out / "report.md").write_text(self.markdown())
        return out

    def markdown(self) -> str:
        from benchmarks.lib.tables import md_table

        m = self.meta
        model = m.get("model") or {}
        lines = [f"# {m.get('name', 'benchmark')}", ""]
        if m.get("description"):
            lines += [m["description"], ""]
        lines += [f"- command: `{m.get('command', '')}`",
                  f"- date: {m.get('date', '')}, runtime {m.get('runtime_s', 0):.0f} s{', quick' if m.get('quick') else ''}",
                  f"- git revision: `{m.get('git', {}).get('revision')}`{' (uncommitted changes)' if m.get('git', {}).get('dirty') else ''}",
                  f"- model: `{model.get('id')}`, weight fingerprint `{model.get('fingerprint')}`",
                  f"- config: `{m.get('config_file', '')}` (copied into results.json)", "", "## Headline figures", ""]
        lines += [md_table([{"figure": k, "value": v} for k, v in flat_figures(self.figures).items()]), ""]
        for title, rows in self.tables.items():
            lines += [f"## {title}", "", md_table(rows), ""]
        if self.report:
            lines += [self.report.rstrip(), ""]
        if self.plots:
            lines += ["## Plots", ""] + [f"![{p}]({p})" for p in self.plots] + [""]
        if self.notes:
            lines += ["## Notes", ""] + [f"- {n}" for n in self.notes] + [""]
        return "\n".join(lines)


def flat_figures(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flat_figures(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _jsonable(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return float(o)


@dataclass
class Context:
    """What an analysis receives: the effective parameters as attributes (``ctx.p.doses``), the model
    (None for speed analyses), the output folder, the datasets folder and a cache folder."""

    config: Config
    model: Any
    out: Path
    cache: Path
    command: str = ""
    t0: float = field(default_factory=time.time)

    @property
    def p(self) -> SimpleNamespace:
        return SimpleNamespace(**self.config.params)

    @property
    def quick(self) -> bool:
        return self.config.quick

    @property
    def datasets(self) -> Path:
        return self.config.datasets

    def log(self, msg: str) -> None:
        print(f"[{time.time() - self.t0:7.1f} s] {msg}", file=sys.stderr, flush=True)

    def detector(self, spec: str) -> Any:
        """A detector: ``train:BEHAVIOUR`` trains one with the defaults (as ``coalign train``/``demo``
        do), ``train:deception_mixture`` the shipped mixture (``coalign train deception --mixture``),
        anything else is an artifact folder."""
        from detectors import Detector

        if spec == "train:deception_mixture":
            from detectors.deception_mixture import train_deception_mixture

            self.log("training the deception mixture (coalign train deception --mixture)")
            return train_deception_mixture(self.model)
        if spec.startswith("train:"):
            self.log(f"training a {spec[6:]} detector with the defaults")
            return Detector.train(spec[6:], self.model)
        return Detector.load(spec, self.model)


def git_revision() -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"revision": git("rev-parse", "HEAD"), "dirty": bool(status) if status is not None else None}


def default_out(cfg: Config) -> Path:
    """The committed record's folder (``benchmarks/results/NAME``); quick runs go to ``runs/benchmarks/NAME_quick``
    so they never overwrite a record."""
    return REPO / "runs" / "benchmarks" / f"{cfg.name}_quick" if cfg.quick else RESULTS / cfg.name


def run_config(config: str | os.PathLike | Config, *, quick: bool = False, out: str | os.PathLike | None = None,
               model: Any = None, model_id: str | None = None, overrides: Mapping[str, Any] | None = None,
               command: str | None = None, cache_dir: str | os.PathLike | None = None) -> Result:
    """Run one benchmark config and write its ``results.json`` and ``report.md``.

    Args:
        config: a config path or name (``benchmarks/configs/NAME.toml``) or a loaded :class:`Config`.
        quick: apply the config's ``[quick]`` overrides (a run of minutes).
        out: output folder (default :func:`default_out`).
        model: an already loaded model (tests pass the tiny one); else ``model_id`` or the config's.
        overrides: parameter overrides applied last.
        command: the command line recorded (default: the Python call).
        cache_dir: activation/completion cache root (default ``$COALIGN_CACHE`` or ``~/.cache/coalign``).

    Example:
        >>> r = run_config("deception_training_data", quick=True)
        >>> r.figures["mixture_2"]["roleplay_lies_2"]
    """
    from benchmarks.registry import analysis_function
    from detectors.training import default_cache_dir

    cfg = config if isinstance(config, Config) else Config.load(config, quick=quick, overrides=overrides)
    fn: Callable[[Context], Result] = analysis_function(cfg.analysis)
    outp = Path(out) if out is not None else default_out(cfg)
    if model is None and cfg.entry != "speed":
        from circuits import load_model

        model = load_model(model_id or cfg.model) if (model_id or cfg.model) else load_model()
    command = command or f"run_config({cfg.source!r}, quick={cfg.quick})"
    ctx = Context(cfg, model, outp, Path(cache_dir) if cache_dir is not None else default_cache_dir(), command)
    outp.mkdir(parents=True, exist_ok=True)
    result = fn(ctx)
    fp = getattr(model, "fingerprint", None)
    result.meta = {
        "name": cfg.name, "description": cfg.description, "entry": cfg.entry, "analysis": cfg.analysis,
        "config_file": cfg.source, "config": cfg.raw, "params": cfg.params, "quick": cfg.quick,
        "git": git_revision(),
        "model": {"id": getattr(model, "model_id", None), "fingerprint": fp, "n_layers": getattr(model, "n_layers", None),
                  "d_model": getattr(model, "d_model", None)} if model is not None else result.data.get("model_info", {}),
        "command": command,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "runtime_s": round(time.time() - ctx.t0, 1),
        "datasets": str(cfg.datasets),
    }
    result.write(outp)
    ctx.log(f"wrote {outp}/results.json and report.md")
    return result


def load_result(folder: str | os.PathLike) -> dict[str, Any]:
    """A written ``results.json`` as a dict."""
    return json.loads((Path(folder) / "results.json").read_text())


def import_attr(spec: str) -> Any:
    """``"package.module:attr"`` -> the attribute."""
    mod, _, attr = spec.partition(":")
    return getattr(importlib.import_module(mod), attr)
