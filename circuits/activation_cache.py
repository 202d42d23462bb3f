"""On-disk activation cache (safetensors), so a sweep over probes never recomputes a forward pass.

Keys combine the model's weight fingerprint, the hook name, the token selection and a hash of the
token ids; a file whose stored key differs (hash collision, edited file) is treated as a miss.
Writes go to a temporary file and are renamed into place, so a crash leaves no half-written entry.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file


class ActivationCache:
    """A directory of ``<hash>.safetensors`` files holding ``acts`` and ``index`` arrays."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.safetensors"

    def get(self, key: str) -> tuple[np.ndarray, np.ndarray] | None:
        path = self._path(key)
        if not path.exists():
            return None
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="numpy") as f:
                if (f.metadata() or {}).get("key") != key:
                    return None
            data = load_file(str(path))
            return data["acts"], data["index"]
        except (SafetensorError, OSError, KeyError, ValueError):
            return None  # corrupt entry: recompute and overwrite

    def put(self, key: str, acts: np.ndarray, index: np.ndarray) -> None:
        path = self._path(key)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file({"acts": np.ascontiguousarray(acts), "index": np.ascontiguousarray(index)}, str(tmp), metadata={"key": key})
        os.replace(tmp, path)
