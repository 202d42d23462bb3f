"""Issue 24's artifact defects, each reproduced: saving never destroys what it did not create, overwrites
swap atomically, numbers on disk are finite and in range, the stored detector id is checked."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
import torch

import circuits.artifact_io as artifact_io
from circuits import ArtifactError
from detectors import Detector

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture
def det(tiny):
    torch.manual_seed(0)
    return Detector.from_linear("deception", tiny, HOOK, torch.randn(16), bias=0.25, threshold=1.5, fpr=0.01)


def test_a_model_folder_with_a_config_json_is_never_replaced(det, tmp_path):
    hf = tmp_path / "my-model"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 576}))
    (hf / "model.safetensors").write_bytes(b"weights")
    (hf / "NOTES.md").write_text("my notes")
    with pytest.raises(ArtifactError, match="not a coalign artifact"):
        det.save(hf)
    assert sorted(p.name for p in hf.iterdir()) == ["NOTES.md", "config.json", "model.safetensors"]
    assert (hf / "model.safetensors").read_bytes() == b"weights"


def test_an_artifact_with_the_users_files_in_it_is_not_replaced(det, tmp_path):
    det.save(tmp_path / "d")
    (tmp_path / "d" / "notes.txt").write_text("why I trained this")
    with pytest.raises(ArtifactError, match="notes.txt"):
        det.save(tmp_path / "d")
    assert (tmp_path / "d" / "notes.txt").read_text() == "why I trained this"


def test_an_artifact_is_replaced_and_nothing_is_left_beside_it(det, tmp_path):
    det.save(tmp_path / "d")
    det.threshold = 2.5
    det.save(tmp_path / "d")
    assert Detector.load(tmp_path / "d").threshold == 2.5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


@pytest.mark.parametrize("fail_at", [1, 2])
def test_a_failed_overwrite_leaves_the_old_artifact(det, tmp_path, monkeypatch, fail_at):
    """Fail at the rename that moves the old artifact aside (1) or the one that moves the new one in (2)."""
    det.save(tmp_path / "d")
    before = Detector.load(tmp_path / "d").id
    real, calls = os.replace, []

    def flaky(src, dst):
        calls.append((src, dst))
        if len(calls) == fail_at:
            raise OSError("disk full")
        return real(src, dst)

    monkeypatch.setattr(artifact_io.os, "replace", flaky)
    det.threshold = 9.0
    with pytest.raises(OSError, match="disk full"):
        det.save(tmp_path / "d")
    monkeypatch.setattr(artifact_io.os, "replace", real)
    assert Detector.load(tmp_path / "d").id == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_artifact_folders_follow_the_umask(det, tmp_path):
    old = os.umask(0o022)
    try:
        det.save(tmp_path / "d")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755


def _edit(path, **fields):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(fields)
    (path / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("field,value", [
    ("threshold", float("nan")), ("threshold", float("inf")), ("threshold", "1.5"), ("bias", float("nan")),
    ("bias", float("-inf")), ("fpr", 5.0), ("fpr", 0.0), ("fpr", float("nan")), ("stream_threshold", float("inf")),
    ("stream_warmup", 0), ("hooks", [123]), ("hooks", []),
])
def test_non_finite_or_out_of_range_fields_are_refused_by_name(det, tmp_path, field, value):
    det.save(tmp_path / "d")
    _edit(tmp_path / "d", **{field: value})
    with pytest.raises(ArtifactError, match=field):
        Detector.load(tmp_path / "d")


def test_a_detector_that_load_would_refuse_is_not_saved(det, tmp_path):
    det.threshold = float("nan")
    with pytest.raises(ArtifactError, match="threshold"):
        det.save(tmp_path / "d")
    assert not (tmp_path / "d").exists()


def test_one_flipped_byte_in_the_weights_is_detected(det, tmp_path):
    det.save(tmp_path / "d")
    w = tmp_path / "d" / "weights.safetensors"
    raw = bytearray(w.read_bytes())
    raw[-3] ^= 0x01  # inside the tensor data: still a valid float, a different weight
    w.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="detector_id"):
        Detector.load(tmp_path / "d")


def test_an_edited_threshold_is_detected_by_the_id(det, tmp_path):
    det.save(tmp_path / "d")
    _edit(tmp_path / "d", threshold=-100.0)
    with pytest.raises(ArtifactError, match="detector_id"):
        Detector.load(tmp_path / "d")


def test_a_hand_made_detector_without_fpr_round_trips(tiny, tmp_path):
    d = Detector.from_linear("x", tiny, HOOK, torch.ones(16))
    d.save(tmp_path / "d")
    back = Detector.load(tmp_path / "d", tiny)
    assert np.isnan(back.fpr) and back.id == d.id


def test_strict_false_also_holds_for_score(det, tmp_path):
    from tiny import tiny_model

    det.save(tmp_path / "d")
    other = tiny_model(seed=1)
    loaded = Detector.load(tmp_path / "d", other, strict=False)
    assert loaded.score(other, ["the cat sat"]).shape == (1,)
