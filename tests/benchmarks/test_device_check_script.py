"""benchmarks/device_check.py runs without a GPU: the split check on CPU+disk passes, GPU-only parts say they were skipped."""

from __future__ import annotations

import json

import pytest
import torch
from importlib import import_module


def test_device_check_runs_on_cpu_and_reports_what_it_skipped(tmp_path, capsys):
    pytest.importorskip("accelerate")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: run benchmarks/device_check.py itself")
    rc = import_module("benchmarks.device_check").main(["--model", "tiny", "--json", str(tmp_path / "r.json")])
    report = json.loads((tmp_path / "r.json").read_text())
    assert rc == 0 and report["cuda"] is False
    assert report["split"]["status"] == "pass" and report["split"]["map"] == "CPU+disk"
    assert report["split"]["fingerprint_equal"] and report["split"]["guard_tokens_equal"]
    assert max(report["split"]["capture_max_rel_diff"].values()) == 0.0
    assert report["guard_errors"] == {"status": "pass", "detector_errors": 0, "first": None}
    assert report["ray"]["status"] == "skipped" and "no CUDA device" in report["ray"]["why"]
    assert "GPU checks skipped" in capsys.readouterr().out
