"""Reading and writing artifact directories: ``weights.safetensors`` + ``config.json``.

Generic helpers shared by every artifact kind (detectors, steering vectors). They live in
``circuits`` so that steering vectors can be saved without ``circuits`` importing ``detectors``
(imports only go detectors -> probe -> circuits); ``detectors.artifact`` re-exports them.

No pickle anywhere: tensors go through safetensors, everything else through JSON, and every field
is checked on load so a corrupt or foreign directory fails with a message naming the file and
the field.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from circuits.errors import ArtifactError

SCHEMA_VERSION = 1
WEIGHTS = "weights.safetensors"
CONFIG = "config.json"


def library_version() -> str:
    try:
        from importlib.metadata import version

        return version("coalign")
    except Exception:
        return "0+unknown"


def write_artifact(path: str | os.PathLike, tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> Path:
    """Write atomically: build in a temporary sibling directory, then swap it into place by renames.

    ``path`` may be new, empty, or a coalign artifact of this schema holding nothing but its two files;
    anything else (a model folder with its own ``config.json``, a folder with the user's notes) is refused,
    because replacing it would delete files coalign did not create. An existing artifact is renamed aside,
    the new one renamed in, and only then is the old one removed, so a failure at any point leaves either
    the old or the new artifact in place, never neither.
    """
    path = Path(path)
    if path.exists():
        check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.new.", dir=path.parent))
    old: Path | None = None
    try:
        _umask_mode(tmp)
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / WEIGHTS))
        (tmp / CONFIG).write_text(json.dumps({"schema_version": SCHEMA_VERSION, **config}, indent=2, sort_keys=True))
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.rmdir(old)  # only the name is wanted: rename needs the target absent
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        if old is not None and old.exists() and not path.exists():
            os.replace(old, path)  # put the old artifact back
            old = None
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path


def check_replaceable(path: Path) -> None:
    """Raise ArtifactError unless ``path`` is absent, an empty directory, or a coalign artifact of this schema
    with no other files in it (the only things :func:`write_artifact` may replace)."""
    if not path.is_dir():
        raise ArtifactError(f"{path} exists and is not a directory; refusing to replace it")
    entries = {p.name for p in path.iterdir()}
    if not entries:
        return
    if CONFIG not in entries:
        raise ArtifactError(f"{path} is not an artifact directory (no {CONFIG}); refusing to overwrite it")
    try:
        cfg = json.loads((path / CONFIG).read_text())
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{path / CONFIG} is not a coalign artifact's config ({e}); refusing to overwrite {path}") from e
    if not isinstance(cfg, dict) or cfg.get("schema_version") != SCHEMA_VERSION or "library_version" not in cfg:
        raise ArtifactError(f"{path} holds a {CONFIG} that is not a coalign artifact of schema {SCHEMA_VERSION} "
                            "(a model folder?); refusing to overwrite it")
    extra = sorted(entries - {CONFIG, WEIGHTS})
    if extra:
        raise ArtifactError(f"{path} holds files coalign did not write ({', '.join(extra[:5])}); refusing to overwrite it")


def _umask_mode(directory: Path) -> None:
    """mkdtemp makes 0700 directories; an artifact gets the mode a plain mkdir would (the user's umask)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(directory, 0o777 & ~mask)


def read_artifact(path: str | os.PathLike, required: dict[str, type | tuple[type, ...]]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and validate an artifact; ``required`` maps config fields to their expected types."""
    path = Path(path)
    cfg_path, w_path = path / CONFIG, path / WEIGHTS
    if not path.is_dir():
        raise ArtifactError(f"{path}: no such artifact directory")
    for p in (cfg_path, w_path):
        if not p.exists():
            raise ArtifactError(f"{path}: missing {p.name}")
    try:
        config = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{cfg_path}: not valid JSON ({e})") from e
    if not isinstance(config, dict):
        raise ArtifactError(f"{cfg_path}: expected a JSON object")
    if config.get("schema_version") != SCHEMA_VERSION:
        raise ArtifactError(f"{cfg_path}: schema_version {config.get('schema_version')!r}, this coalign reads {SCHEMA_VERSION}")
    for field, typ in required.items():
        if field not in config:
            raise ArtifactError(f"{cfg_path}: missing field {field!r}")
        if not isinstance(config[field], typ) or (typ is int and isinstance(config[field], bool)):
            raise ArtifactError(f"{cfg_path}: field {field!r} has type {type(config[field]).__name__}, expected {typ}")
    try:
        tensors = load_file(str(w_path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ArtifactError(f"{w_path}: corrupt safetensors file ({e})") from e
    for k, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ArtifactError(f"{w_path}: tensor {k!r} contains NaN or inf")
    return tensors, config
