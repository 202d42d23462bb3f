"""Every user-caused CLI error is one ``coalign: error:`` line, found before any model is loaded.

Driven through the real entry point (``detectors.cli.main``); ``circuits.load_model`` is replaced by a
function that fails the test, which proves each check runs before the (minute-long) model load.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import circuits
from detectors import Detector
from detectors.cli import main

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture
def no_model(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the bad argument was reported")
    monkeypatch.setattr(circuits, "load_model", refuse)


@pytest.fixture
def files(tmp_path, tiny):
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                                "label": 1}) + "\n")
    badrow = tmp_path / "badrow.jsonl"
    badrow.write_text('{"messages": 5, "label": 1}\n')
    binary = tmp_path / "latin1.jsonl"
    binary.write_bytes(b'{"messages": "caf\xe9"}\n')
    hf = tmp_path / "hf-model"
    hf.mkdir()
    (hf / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    (hf / "model.safetensors").write_bytes(b"w")
    det = tmp_path / "det"
    Detector.from_linear("x", tiny, HOOK, torch.ones(16), threshold=1.0, fpr=0.01).save(det)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text("{not json")
    yield {"badrow": str(badrow), "data": str(data), "binary": str(binary), "hf": str(hf), "det": str(det), "corrupt": str(corrupt),
           "dir": str(tmp_path)}


CASES = {
    "unknown method": (["train", "deception", "--out", "{dir}/o", "--method", "bogus"], "unknown probe 'bogus'"),
    "fpr above 1": (["train", "deception", "--out", "{dir}/o", "--fpr", "1.5"], "--fpr"),
    "negative fpr": (["train", "deception", "--out", "{dir}/o", "--fpr", "-0.1"], "--fpr"),
    "nan fpr": (["train", "deception", "--out", "{dir}/o", "--fpr", "nan"], "--fpr"),
    "nan confidence": (["train", "deception", "--out", "{dir}/o", "--confidence", "nan"], "--confidence"),
    "missing data": (["train", "x", "--out", "{dir}/o", "--data", "{dir}/nope.jsonl"], "no such file"),
    "data is a directory": (["train", "x", "--out", "{dir}/o", "--data", "{dir}"], "is a directory"),
    "data not utf-8": (["train", "x", "--out", "{dir}/o", "--data", "{binary}"], "not UTF-8"),
    "malformed data row": (["train", "x", "--out", "{dir}/o", "--data", "{badrow}"], "line 1"),
    "unknown recipe": (["train", "x", "--out", "{dir}/o", "--data", "recipe:nope"], "unknown dataset recipe"),
    "out is a model folder": (["train", "deception", "--out", "{hf}"], "not a coalign artifact"),
    "out under a file": (["train", "deception", "--out", "{data}/o"], "cannot write"),
    "json under a file": (["train", "deception", "--out", "{dir}/o", "--json", "{data}/r.json"], "cannot write"),
    "json is a directory": (["eval", "{det}", "--data", "{data}", "--json", "{dir}"], "is a directory"),
    "eval missing detector": (["eval", "{dir}/none", "--data", "{data}"], "not a detector directory"),
    "eval bad data": (["eval", "{det}", "--data", "{binary}"], "not UTF-8"),
    "combine bad weights": (["combine", "{det}", "{det}", "--out", "{dir}/c", "--weights", "1,nan"], "--weights"),
    "combine out is a model": (["combine", "{det}", "{det}", "--out", "{hf}"], "not a coalign artifact"),
    "train from a folder without config": (["train", "--from", "{hf}", "--out", "{dir}/o"], "training_config"),
    "train from and behaviour": (["train", "x", "--from", "{det}", "--out", "{dir}/o"], "--from"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_arguments_fail_fast_in_one_line(case, files, no_model, capsys):
    argv, expected = CASES[case]
    t0 = time.perf_counter()
    rc = main([a.format(**files) for a in argv])
    elapsed = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("coalign: error: "), err
    assert expected in lines[0]
    assert "Traceback" not in err
    assert elapsed < 2.0


def test_corrupt_detector_config_without_model_is_one_line(files, capsys):
    rc = main(["eval", files["corrupt"], "--data", files["data"]])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("coalign: error: ") and "config.json" in err and "--model" in err


def test_train_from_refuses_what_it_cannot_replay(files, tiny, no_model, capsys):
    """A detector trained on in-memory data records that, and --from says so instead of guessing."""
    det = Detector.load(files["det"])
    det.training_config = {"behaviour": "x", "data": {"in_memory": "mine"}, "replayable": False}
    det.save(Path(files["dir"]) / "mem")
    assert main(["train", "--from", str(Path(files["dir"]) / "mem"), "--out", str(Path(files["dir"]) / "o")]) == 2
    assert "in-memory data" in capsys.readouterr().err


@pytest.mark.slow
def test_ctrl_c_exits_130_with_one_line(tmp_path):
    """SIGINT while the embedded model loads: exit 130, one line, no traceback."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # a suite started in the background by a shell inherits SIGINT ignored, and so would the child: restore it
    p = subprocess.Popen([sys.executable, "-m", "detectors.cli", "demo", "--out", str(tmp_path / "o")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         cwd=Path(__file__).resolve().parents[2],
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert p.stdout.readline().startswith("loading")
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert err.strip() == "coalign: interrupted"


@pytest.mark.parametrize("argv,expected", [
    (["train", "deception", "--out", "{dir}/o", "--fpr", "nan"], "--fpr"),
    (["train", "deception", "--out", "{dir}/o", "--method", "bogus"], "unknown probe 'bogus'"),
    (["train", "x", "--out", "{dir}/o", "--data", "{badrow}"], "line 1"),
    (["train", "deception", "--out", "{hf}"], "not a coalign artifact"),
    (["eval", "{dir}/none", "--data", "{data}"], "not a detector directory"),
])
def test_errors_appear_within_two_seconds_of_starting(argv, expected, files):
    """From process start: the CLI parses and checks before importing torch or loading a model."""
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "detectors.cli", *[a.format(**files) for a in argv]],
                       capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2], timeout=60)
    elapsed = time.perf_counter() - t0
    assert p.returncode == 2 and p.stderr.startswith("coalign: error: ") and expected in p.stderr, p.stderr
    assert elapsed < 2.0, f"{elapsed:.2f} s"
