"""How a detector is trained, as one validated object that artifacts record.

``TrainingConfig`` holds every choice :func:`detectors.training.train_detector` makes (data, probe
kind, hooks, token selection, calibration). :meth:`TrainingConfig.validate` checks it in well under a
second, before any model is loaded or forward pass run, so an unknown method, an FPR outside (0, 1) or a
missing data file fails at once with the field's name. The trained artifact stores ``to_dict()``;
``coalign train --from DIR`` (or :func:`detectors.training.retrain`) rebuilds the same detector from it.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from circuits.capture import SELECTIONS
from circuits.errors import InputError
from probe.datasets import LabelledDataset
from probe.datasets.recipes import RECIPE_PREFIX, RECIPES
from probe.probes import check_probe_name

_HOOK = re.compile(r"^[A-Za-z_][\w.]*$")
# values with a meaning of their own, not file names
_NEGATIVE_WORDS = ("auto", "benign")


@dataclass
class TrainingConfig:
    """Every training choice; see :func:`detectors.training.train_detector` for what each one means.

    ``data``, ``control`` and ``negatives`` may be in-memory datasets or chats when training from Python;
    such a config trains but cannot be replayed from an artifact (:attr:`replayable` is False).
    """

    behaviour: str
    data: Any = None
    method: str = "logistic"
    layer: Any = "auto"
    select: str | None = None
    fpr: float = 0.01
    n_control: int = 200
    test_fraction: float = 0.2
    seed: int = 0
    name: str | None = None
    stream_warmup: int = 4
    control: Any = None
    confidence: float | None = 0.95
    negatives: Any = "auto"
    context_select: str = "prompt_last"
    probe_params: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> "TrainingConfig":
        """Raise InputError naming the first bad field; no model or data is loaded (files are only looked up)."""
        if not isinstance(self.behaviour, str) or not self.behaviour.strip():
            raise InputError(f"behaviour must be a non-empty name, got {self.behaviour!r}")
        check_probe_name(self.method)
        _unit_interval("fpr", self.fpr)
        if self.confidence is not None:
            _unit_interval("confidence", self.confidence)
        _unit_interval("test_fraction", self.test_fraction)
        _positive_int("n_control", self.n_control)
        _positive_int("stream_warmup", self.stream_warmup)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise InputError(f"seed must be an integer, got {self.seed!r}")
        for name in ("select", "context_select"):
            v = getattr(self, name)
            if v is not None and v not in SELECTIONS:
                raise InputError(f"{name} {v!r} is not a token selection; expected one of {', '.join(SELECTIONS)}")
        layers = [self.layer] if isinstance(self.layer, str) else self.layer
        if not isinstance(layers, (list, tuple)) or not layers or not all(
                isinstance(h, str) and (h == "auto" or _HOOK.match(h)) for h in layers):
            raise InputError(f"layer must be 'auto', a hook name such as blocks.12.hook_resid_post, or a list of "
                             f"hook names; got {self.layer!r}")
        _check_specs("data", self.data)
        _check_specs("control", self.control)
        if not (self.negatives is None or (isinstance(self.negatives, str) and self.negatives in _NEGATIVE_WORDS)):
            _check_specs("negatives", self.negatives)
        if not isinstance(self.probe_params, dict):
            raise InputError(f"probe_params must be a mapping, got {type(self.probe_params).__name__}")
        return self

    @property
    def replayable(self) -> bool:
        """Whether every data-like field is a file path or recipe (so the config can be stored and re-run)."""
        return all(_is_spec_list(v) for v in (self.data, self.control)) and (
            self.negatives is None or isinstance(self.negatives, str) or _is_spec_list(self.negatives))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; in-memory data is recorded by name and marked not replayable."""
        out = asdict(self) if self.replayable else {
            f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("data", "control", "negatives")}
        for key in ("data", "control", "negatives"):
            v = getattr(self, key)
            if isinstance(v, (list, tuple)) and _is_spec_list(v):
                out[key] = [str(p) for p in v]
            elif v is None or isinstance(v, str):
                out[key] = v if not isinstance(v, os.PathLike) else str(v)
            else:
                out[key] = {"in_memory": getattr(v, "name", type(v).__name__)}
        if isinstance(self.layer, (list, tuple)):
            out["layer"] = list(self.layer)
        out["replayable"] = self.replayable
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "training_config") -> "TrainingConfig":
        """Rebuild a config recorded by :meth:`to_dict`; InputError if it cannot be replayed."""
        if not isinstance(d, dict):
            raise InputError(f"{where}: expected an object, got {type(d).__name__}")
        if not d.get("replayable", False):
            held = [k for k in ("data", "control", "negatives") if isinstance(d.get(k), dict)]
            raise InputError(f"{where}: this detector was trained on in-memory data ({', '.join(held) or 'unknown'}); "
                             "it cannot be retrained from its artifact")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known - {"replayable"})
        if unknown:
            raise InputError(f"{where}: unknown field(s) {', '.join(unknown)}")
        if "behaviour" not in d:
            raise InputError(f"{where}: missing field 'behaviour'")
        return cls(**{k: v for k, v in d.items() if k in known}).validate()


def _unit_interval(name: str, v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 < v < 1:
        raise InputError(f"{name} must be a number strictly between 0 and 1, got {v!r}")


def _positive_int(name: str, v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise InputError(f"{name} must be a positive integer, got {v!r}")


def _is_spec_list(v: Any) -> bool:
    return v is None or (isinstance(v, (list, tuple)) and all(isinstance(p, (str, os.PathLike)) for p in v))


def _check_specs(name: str, v: Any) -> None:
    """Files must exist (and be files) and recipe names be known; datasets and chats pass as they are."""
    if v is None or isinstance(v, LabelledDataset):
        return
    if isinstance(v, (str, os.PathLike)):
        v = [v]
    if not isinstance(v, (list, tuple)) or not v:
        raise InputError(f"{name} must be a list of files or recipe:NAME entries, got {v!r}")
    for spec in v:
        if isinstance(spec, str) and spec.startswith(RECIPE_PREFIX):
            if spec[len(RECIPE_PREFIX):] not in RECIPES:
                raise InputError(f"{name}: unknown dataset recipe {spec[len(RECIPE_PREFIX):]!r}; valid: {', '.join(RECIPES)}")
        elif isinstance(spec, (str, os.PathLike)):
            p = Path(spec)
            if not p.exists():
                raise InputError(f"{name}: {p}: no such file")
            if not p.is_file():
                raise InputError(f"{name}: {p} is not a file")
        # anything else (a chat, a dataset) is checked when it is loaded
