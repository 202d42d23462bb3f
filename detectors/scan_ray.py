"""The Ray engine of :func:`detectors.scan.scan`: the same :class:`~detectors.scan.ScanWorker` in a Ray Data actor pool.

Ray Data holds one model per actor, restarts an actor that dies and re-runs its batch, and writes
each output block to its own file. Two facts shape the settings:

* on a small machine (2 CPUs), actors asking for a whole CPU each leave none for the read and write
  tasks and the job hangs: actors take a fraction of the CPUs, reads and writes a quarter CPU each
  (Ray 2.60's second Parquet reader lists files in a task that always asks for one whole CPU, which
  hangs the same way: the first reader is used);
* ``write_parquet`` in overwrite mode has been reported to delete files of parallel tasks
  (ray-project/ray#55043): every run writes to a fresh folder, in append mode.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from circuits.errors import InputError

IO_CPUS = 0.25  # read and write tasks: a quarter CPU each, so they always fit beside the actors
MAX_BLOCKS = 4096


_OWN_CLUSTER = False  # whether coalign started the Ray cluster this process uses (then it may stop it)


def start_ray(progress: bool) -> Any:
    try:
        import ray
    except ImportError as e:
        raise InputError("engine 'ray' needs Ray: pip install 'coalign[scale]'") from e
    global _OWN_CLUSTER
    if not ray.is_initialized():  # a running cluster (ray.init by the caller, RAY_ADDRESS) is used as is
        import os

        import detectors

        # actors import the very coalign the driver runs (a checkout may shadow an installed copy)
        root = str(Path(detectors.__file__).resolve().parent.parent)
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
        ray.init(include_dashboard=False, log_to_driver=progress, ignore_reinit_error=True,
                 runtime_env={"env_vars": {"PYTHONPATH": path}})
        _OWN_CLUSTER = True
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress
    if hasattr(ctx, "use_datasource_v2"):  # its file-listing task asks for a whole CPU, with no setting to lower it
        ctx.use_datasource_v2 = False
    return ray


def actor_cpus(total: float, actors: int) -> float:
    """CPUs each actor asks for: at most one, and together at most three quarters of the cluster."""
    return round(max(0.05, min(1.0, 0.75 * total / actors)), 3)


def run_ray(kwargs: dict[str, Any], files: list[str] | None, columns: list[str], rows: list[dict] | None,
            n_rows: int, done: set[Any], run_dir: Path, actors: int, gpus_per_actor: float, batch_size: int, progress: bool) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc

    ray = start_ray(progress)
    total = float(ray.cluster_resources().get("CPU", 1))
    if gpus_per_actor and ray.cluster_resources().get("GPU", 0) < gpus_per_actor * actors:
        raise InputError(f"{actors} actors x {gpus_per_actor} GPUs asked for, the cluster has "
                         f"{ray.cluster_resources().get('GPU', 0):g} GPUs")
    cpus = actor_cpus(total, actors)
    threads = max(1, int(total // actors))
    # blocks of about 16 batches: every block is written as its own file once scored, so a failed run keeps
    # most of its work for --resume; fewer, larger blocks leave fewer short batches at block ends
    blocks = max(2 * actors, min(MAX_BLOCKS, -(-n_rows // (16 * batch_size))))
    if files is not None:
        ds = ray.data.read_parquet(files, columns=columns, num_cpus=IO_CPUS, override_num_blocks=blocks)
    else:
        ds = ray.data.from_arrow(pa.Table.from_pylist(rows)).repartition(blocks)
    id_column = kwargs["id_column"]
    if done:
        finished = pa.array(list(done))

        def not_done(t: pa.Table) -> pa.Table:
            return t.filter(pc.invert(pc.is_in(t[id_column], value_set=finished)))

        ds = ds.map_batches(not_done, batch_format="pyarrow", num_cpus=IO_CPUS)
    scored = ds.map_batches(
        _Worker, fn_constructor_kwargs={**kwargs, "threads": threads}, batch_size=batch_size,
        batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cpus,
        num_gpus=gpus_per_actor or None,
    )  # Ray Data's actor pools restart a dead actor and retry its batch by default (max_restarts=-1)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        scored.write_parquet(str(run_dir), ray_remote_args={"num_cpus": IO_CPUS})
    except BaseException:
        _stop_own_cluster(ray)
        raise


def _stop_own_cluster(ray: Any) -> None:
    """After a failed run, stop the cluster coalign started: Ray Data does not always release a failed run's
    actor pool, and its leftover actors kept every CPU of a 2-CPU machine, so the next run (``--resume``) waited
    forever for a CPU to read with (seen in CI). A cluster the caller started is theirs and is left running."""
    global _OWN_CLUSTER
    if _OWN_CLUSTER:
        ray.shutdown()
        _OWN_CLUSTER = False


class _Worker:
    """Imports the worker inside the actor (the driver never loads the model)."""

    def __init__(self, **kwargs: Any) -> None:
        from detectors.scan_worker import ScanWorker

        self.worker = ScanWorker(**kwargs)

    def __call__(self, table: Any) -> Any:
        return self.worker(table)
