"""The engine-agnostic scan worker: loads a model and detectors once, scores a batch of corpus rows.

Both engines run this class: :mod:`detectors.scan` in this process, :mod:`detectors.scan_ray` in each
Ray actor.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from detectors.scan_io import item_of


def column_names(detectors: Sequence[Any]) -> list[str]:
    """One output column prefix per detector: its name, numbered when two share one."""
    names: list[str] = []
    for d in detectors:
        base = "".join(c if c.isalnum() else "_" for c in d.name) or "detector"
        name, k = base, 2
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return names


class ScanWorker:
    """Loads a model and detectors once; ``worker(table)`` scores a batch of corpus rows.

    Args:
        detectors: detector folders.
        model: a model name or path for :func:`circuits.load_model`, or (local engine only) a loaded model.
        id_column: the corpus id column, copied to the output.
        batch_size: items per forward pass.
        model_kwargs: more :func:`circuits.load_model` arguments (``device_map``, ``dtype``...).
        threads: torch intra-op threads (an actor sharing a machine with others sets it).
        chaos: fault injection for tests: ``{"raise_after": n}`` raises once ``n`` rows are scored in
            this process; ``{"die_after": n, "marker": path}`` kills the process mid-batch once (the
            marker file records that it happened).
    """

    def __init__(self, detectors: Sequence[str], model: Any, id_column: str = "id", batch_size: int = 16,
                 model_kwargs: dict[str, Any] | None = None, threads: int | None = None,
                 chaos: dict[str, Any] | None = None) -> None:
        import torch

        from circuits import load_model
        from detectors import Detector

        if threads:
            torch.set_num_threads(int(threads))
        self.model = load_model(model, **(model_kwargs or {})) if isinstance(model, (str, os.PathLike)) else model
        self.detectors = [Detector.load(d, self.model) for d in detectors]
        self.names = column_names(self.detectors)
        self.detector_ids = ",".join(f"{n}={d.id}" for n, d in zip(self.names, self.detectors))
        self.id_column, self.batch_size = id_column, batch_size
        self.chaos, self.done = dict(chaos or {}), 0

    def __call__(self, table: Any) -> Any:
        import pyarrow as pa

        rows = table.to_pylist() if hasattr(table, "to_pylist") else table
        items = [item_of(r, f"id {r[self.id_column]!r}") for r in rows]
        out: dict[str, list[Any]] = {self.id_column: [r[self.id_column] for r in rows]}
        for name, det in zip(self.names, self.detectors):
            scores = det.score(self.model, items, batch_size=self.batch_size)
            self._maybe_fail(len(rows))
            out[f"{name}_score"] = [float(s) for s in scores]
            out[f"{name}_flag"] = [bool(f) for f in det.flag(scores)]
        out["detector_ids"] = [self.detector_ids] * len(rows)
        out["model_fingerprint"] = [self.model.fingerprint] * len(rows)
        self.done += len(rows)
        return pa.table(out)

    def _maybe_fail(self, n: int) -> None:
        if "raise_after" in self.chaos and self.done + n > self.chaos["raise_after"]:
            raise RuntimeError(f"scan chaos: failing after {self.chaos['raise_after']} rows")
        marker = self.chaos.get("marker")
        if "die_after" in self.chaos and self.done + n > self.chaos["die_after"] and marker and not Path(marker).exists():
            Path(marker).write_text(str(os.getpid()))
            os._exit(17)  # a crash, not an exception: the process is gone mid-batch
