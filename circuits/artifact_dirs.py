"""What may be replaced by a new artifact: checked without loading torch, so the CLI can refuse a bad
``--out`` in milliseconds."""

from __future__ import annotations

import json
from pathlib import Path

from circuits.errors import ArtifactError

SCHEMA_VERSION = 1
WEIGHTS = "weights.safetensors"
CONFIG = "config.json"


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
