"""The Ray engine on a local 2-CPU cluster: the same rows and scores as the local engine, nothing lost or
duplicated when an actor dies mid-batch, and exactly-once output after a failed run and --resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray")
pytest.importorskip("pyarrow")

from detectors.scan import scan  # noqa: E402
from scan_fixtures import read_scores, scan_setup  # noqa: E402

N = 240


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import ray

    from detectors.scan_ray import start_ray

    s = scan_setup(tmp_path_factory.mktemp("scan_ray"), n=N, files=4)
    start_ray(progress=False)
    yield s
    ray.shutdown()


@pytest.fixture(scope="module")
def local(setup, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "out"
    assert scan(setup["detectors"], setup["corpus"], out, model=setup["model"], batch_size=20, progress=False)["exact"]
    return read_scores(out)


def _same_as_local(got, local, setup):
    import json

    assert got.index.is_unique and sorted(got.index) == sorted(local.index) == sorted(setup["ids"])
    got = got.loc[local.index]
    for name, path in zip(("dec", "syc"), setup["detectors"]):
        assert np.abs(got[f"{name}_score"] - local[f"{name}_score"]).max() <= 1e-6
        thr = json.loads((Path(path) / "config.json").read_text())["threshold"]
        clear = (local[f"{name}_score"] - thr).abs() > 1e-6
        assert (got[f"{name}_flag"] == local[f"{name}_flag"])[clear].all()
        assert 0 < local[f"{name}_flag"].sum() < N


def test_ray_matches_local_and_an_actor_killed_mid_batch_loses_and_duplicates_nothing(setup, local, tmp_path):
    """One run covers both (each Ray run costs the actors' start-up): a run whose actor dies matching the
    local engine row for row also shows that an undisturbed run does."""
    marker = tmp_path / "killed"
    m = scan(setup["detectors"], setup["corpus"], tmp_path / "out", model=setup["model"], engine="ray", actors=2,
             batch_size=20, progress=False, chaos={"die_after": 60, "marker": str(marker)})
    assert marker.exists()  # an actor process really died mid-run (and Ray restarted it)
    assert m["exact"] and (m["input_rows"], m["output_rows"], m["missing"], m["duplicated"]) == (N, N, 0, 0), m
    assert m["versions"]["ray"]  # no wall-clock bound here: timings belong in benchmarks (the machine is shared)
    _same_as_local(read_scores(tmp_path / "out"), local, setup)


def test_failed_ray_run_then_resume_is_exactly_once(setup, local, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(Exception, match="scan chaos"):
        scan(setup["detectors"], setup["corpus"], out, model=setup["model"], engine="ray", actors=1, batch_size=20,
             progress=False, chaos={"raise_after": 160})  # fails in the second of 2 blocks
    first = len(read_scores(out)) if list((out / "parts").rglob("*.parquet")) else 0
    m = scan(setup["detectors"], setup["corpus"], out, model=setup["model"], engine="ray", actors=1, batch_size=20,
             progress=False, resume=True)
    assert m["exact"] and (m["output_rows"], m["missing"], m["duplicated"]) == (N, 0, 0), m
    # whatever the failed run wrote is kept, not redone; on a loaded machine Ray may fail before its first write
    # task runs (first == 0): that keeping finished parts works is asserted deterministically in test_scan.py
    assert m["rows_scored_this_run"] == N - first
    _same_as_local(read_scores(out), local, setup)
