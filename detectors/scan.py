"""Batch scanning: score a corpus with one or more detectors, exactly once per row, on one process or a Ray cluster.

One engine-agnostic worker (:class:`ScanWorker`) loads the model and the detectors once and scores a
batch of rows (an Arrow table in, an Arrow table out). ``engine="local"`` runs it in this process
(the reference); ``engine="ray"`` runs the same class in a Ray Data actor pool (see
:mod:`detectors.scan_ray`), which holds one model per actor, restarts an actor that dies and retries
its batch.

Output folder::

    OUT/run.json                  what was asked (detectors, model, corpus): a resume must match it
    OUT/parts/run-0001/*.parquet  id, <detector>_score, <detector>_flag, detector_ids, model_fingerprint
    OUT/parts/run-0002/...        a resumed run writes its rows to a fresh folder (never overwrites)
    OUT/manifest.json             input rows, output rows, unique ids, missing, duplicated, versions

The run succeeds (``manifest["exact"]``) only if the output ids equal the input ids exactly: none
missing, none duplicated, none extra. ``resume=True`` keeps every readable part of earlier runs and
scores only the rows they lack (a part a killed run left half-written is set aside and its rows redone).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from circuits.errors import InputError
from detectors.scan_io import (
    check_rows,
    iter_parquet,
    parquet_files,
    parquet_schema_check,
    read_output_ids,
    table_rows,
)
from detectors.scan_worker import ScanWorker

ENGINES = ("local", "ray")


def scan(detectors: Sequence[str | os.PathLike], data: str | os.PathLike, out: str | os.PathLike, *,
         model: Any = None, engine: str = "local", actors: int = 1, gpus_per_actor: float = 0.0,
         batch_size: int = 64, id_column: str = "id", resume: bool = False, progress: bool = True,
         model_kwargs: dict[str, Any] | None = None, chaos: dict[str, Any] | None = None) -> dict[str, Any]:
    """Score every row of a corpus with the detectors; write Parquet parts and a manifest under ``out``.

    Args:
        detectors: detector folders (all trained on the same model).
        data: a Parquet file, folder or glob, or a JSONL/JSON/CSV file (see :mod:`detectors.scan_io`).
        out: output folder: new or empty, or an earlier run's with ``resume=True``.
        model: model name or path (default: the detectors' model if it is an embedded one).
        engine: ``"local"`` (this process) or ``"ray"`` (a Ray Data actor pool; starts a local cluster
            unless one is running).
        actors, gpus_per_actor: Ray actor pool size and GPUs per actor.
        batch_size: rows per worker call (and per forward pass).
        id_column: the corpus column with each row's unique id.
        resume: continue an earlier run in ``out``, scoring only rows it lacks.
        model_kwargs: more :func:`circuits.load_model` arguments for every worker.
        chaos: fault injection, for tests (see :class:`ScanWorker`).

    Returns:
        The manifest (also written to ``out/manifest.json``); ``manifest["exact"]`` is True when output
        ids equal input ids exactly.

    Example:
        >>> m = scan(["runs/deception"], "chats.parquet", "runs/scan1", engine="ray", actors=2)
        >>> m["exact"], m["output_rows"]
        (True, 100000)
    """
    from detectors import Detector

    if engine not in ENGINES:
        raise InputError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
    if actors < 1 or batch_size < 1 or gpus_per_actor < 0:
        raise InputError(f"actors and batch size must be >= 1 and GPUs per actor >= 0, got {actors}, {batch_size}, {gpus_per_actor}")
    if not detectors:
        raise InputError("scan: no detectors given")
    dets = [str(d) for d in detectors]
    loaded = [Detector.load(d) for d in dets]  # artifacts checked before any model loads
    for path, d in zip(dets[1:], loaded[1:]):
        if d.model_fingerprint != loaded[0].model_fingerprint:
            raise InputError(f"{path}: trained on {d.model_id} ({d.model_fingerprint}), not on the model of {dets[0]} "
                             f"({loaded[0].model_id}, {loaded[0].model_fingerprint})")
    model = _model_spec(model, loaded[0], engine)
    spec = str(data)
    files = parquet_files(spec)
    if files is not None:
        columns = parquet_schema_check(files, id_column)
        rows = None
        input_ids = check_rows(iter_parquet(files, columns, 8192), id_column)
    else:
        columns, rows = [], table_rows(spec, id_column)
        input_ids = check_rows(iter([(spec, rows)]), id_column)
    out = Path(out)
    request = {"detectors": [{"path": p, "id": d.id} for p, d in zip(dets, loaded)], "data": spec,
               "id_column": id_column, "model": model if isinstance(model, str) else getattr(model, "model_id", "?"),
               "model_kwargs": {k: str(v) for k, v in (model_kwargs or {}).items()}}
    run_dir, done, earlier = _prepare_out(out, request, resume, id_column)
    todo = len(set(input_ids) - set(done))
    t0 = time.time()
    if todo:
        kwargs = dict(detectors=dets, model=model, id_column=id_column, batch_size=batch_size,
                      model_kwargs=model_kwargs, chaos=chaos)
        if engine == "local":
            _run_local(kwargs, files, columns, rows, set(done), run_dir, batch_size, progress, todo)
        else:
            from detectors.scan_ray import run_ray

            run_ray(kwargs, files, columns, rows, len(input_ids), set(done), run_dir, actors, gpus_per_actor, batch_size, progress)
    elapsed = time.time() - t0
    manifest = _manifest(out, input_ids, id_column, request, engine, actors, batch_size, todo, elapsed, earlier)
    _write_json(out / "manifest.json", manifest)
    return manifest


def _model_spec(model: Any, det: Any, engine: str) -> Any:
    from circuits import EMBEDDED

    if model is None:
        if det.model_id not in EMBEDDED:
            raise InputError(f"the detectors were trained on {det.model_id!r}, not an embedded model: give the model (--model)")
        return det.model_id
    if isinstance(model, os.PathLike):
        model = str(model)
    if isinstance(model, str) and model not in EMBEDDED and not Path(model).expanduser().exists():
        raise InputError(f"unknown model {model!r}: expected one of {', '.join(EMBEDDED)} or a local model folder or .gguf file")
    if not isinstance(model, str) and engine == "ray":
        raise InputError("engine 'ray' loads the model in each actor: give its name or path, not a loaded model")
    return model


def _prepare_out(out: Path, request: dict[str, Any], resume: bool, id_column: str) -> tuple[Path, list[Any], int]:
    """The fresh folder this run writes into, the ids earlier runs finished, and how many runs there were."""
    parts = out / "parts"
    if out.exists() and any(out.iterdir()):
        if not resume:
            raise InputError(f"{out}: output folder is not empty (pass --resume to continue the run there)")
        try:
            before = json.loads((out / "run.json").read_text())
        except (OSError, ValueError):
            raise InputError(f"{out}: not a scan output folder (no readable run.json) - nothing to resume") from None
        for key in ("detectors", "data", "id_column", "model"):
            if before.get(key) != request[key]:
                raise InputError(f"{out}: --resume with a different {key} than the run there "
                                 f"({before.get(key)!r} vs {request[key]!r})")
    out.mkdir(parents=True, exist_ok=True)
    done, _, bad = read_output_ids(parts, id_column)
    for f in bad:  # a half-written part: its rows are redone, the file kept aside for inspection
        os.replace(f, f + ".broken")
    earlier = len([p for p in parts.iterdir() if p.is_dir()]) if parts.exists() else 0
    run_dir = parts / f"run-{earlier + 1:04d}"
    _write_json(out / "run.json", request)
    return run_dir, done, earlier


def _run_local(kwargs: dict[str, Any], files: list[str] | None, columns: list[str], rows: list[dict] | None,
               done: set[Any], run_dir: Path, batch_size: int, progress: bool, todo: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    worker = ScanWorker(**kwargs)
    id_column = kwargs["id_column"]
    source = iter_parquet(files, columns, batch_size) if files is not None else (
        ("", rows[s: s + batch_size]) for s in range(0, len(rows), batch_size))  # type: ignore[index]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(desc="scan", unit="row", total=todo)
    run_dir.mkdir(parents=True, exist_ok=False)
    k = 0
    for _, batch in source:
        batch = [r for r in batch if r[id_column] not in done]
        if not batch:
            continue
        table = worker(pa.Table.from_pylist(batch))
        tmp = run_dir / f".part-{k:06d}.parquet.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, run_dir / f"part-{k:06d}.parquet")  # a part is there whole or not at all
        k += 1
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()


def _manifest(out: Path, input_ids: list[Any], id_column: str, request: dict[str, Any], engine: str, actors: int,
              batch_size: int, scored: int, elapsed: float, earlier: int) -> dict[str, Any]:
    import pyarrow.parquet as pq

    ids, files, bad = read_output_ids(out / "parts", id_column)
    counts = Counter(ids)
    want = set(input_ids)
    dup = sum(c - 1 for c in counts.values() if c > 1)
    missing = len(want - set(counts))
    extra = len(set(counts) - want)
    stamps = set()
    for f in files:
        t = pq.read_table(f, columns=["detector_ids", "model_fingerprint"])
        stamps |= set(zip(t.column("detector_ids").to_pylist(), t.column("model_fingerprint").to_pylist()))
    exact = missing == 0 and dup == 0 and extra == 0 and len(stamps) == 1 and not bad
    return {
        "exact": exact, "input_rows": len(input_ids), "output_rows": len(ids), "unique_ids": len(counts),
        "missing": missing, "duplicated": dup, "extra": extra, "unreadable_parts": bad,
        "detector_ids": sorted({s[0] for s in stamps}), "model_fingerprints": sorted({s[1] for s in stamps}),
        "runs": earlier + 1, "rows_scored_this_run": scored, "seconds_this_run": round(elapsed, 3),
        "rows_per_s_this_run": round(scored / elapsed, 3) if scored and elapsed > 0 else None,
        "engine": engine, "actors": actors if engine == "ray" else None, "batch_size": batch_size,
        "parts": [str(Path(f).relative_to(out)) for f in files], **request, "versions": _versions(engine),
    }


def _versions(engine: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("coalign", "torch", "transformers", "pyarrow", *(["ray"] if engine == "ray" else [])):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)
