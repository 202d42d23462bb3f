"""Detector kinds: the artifact's ``kind`` field -> the class that loads it (as SAE Lens dispatches on
``architecture``).

How to add one: subclass :class:`~detectors.detector.Detector`, give it a class attribute
``kind = "my_kind"``, decorate it with ``@register_detector_kind``, and override ``tensors()``,
``config()`` and ``_from_artifact()`` for whatever state it adds. ``Detector.load`` then reads it, and
the Guard scores it through its linear read-out (override ``score_tensor``/``score_arrays`` if it has
another). The built-ins (``linear_detector``, ``conditional_detector``) register the same way.

This module imports nothing from ``detectors``, so training and ensembles can build detectors of any
kind without importing the detector modules that import them.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any, Protocol, Sequence, TypeVar

from circuits.errors import ArtifactError

# Token selections whose item score is the mean of per-token scores (a Guard can stream them).
MEAN_SELECTIONS = ("response_mean", "all_mean")



class DetectorLike(Protocol):
    """What training, ensembles and the Guard rely on: a linear read-out ``sum_k acts[hooks[k]] @ weight[k] + bias``
    with a calibrated threshold (annotation for modules that must not import the detector classes)."""

    name: str
    behaviour: str
    hooks: list[str]
    bias: float
    threshold: float
    fpr: float
    select: str
    model_fingerprint: str
    d_model: int

    def score(self, model: Any, items: Sequence[Any], batch_size: int = ..., cache_dir: str | None = ...) -> Any: ...


_KINDS: dict[str, type] = {}
# The built-in kinds, by the module that defines and registers each: imported when first asked for (as
# entry points are), so ``import detectors`` stays light and this module imports no detector module.
_BUILTIN = {"linear_detector": "detectors.detector", "conditional_detector": "detectors.conditional",
            "sae_probe_detector": "detectors.sae_detector"}
T = TypeVar("T", bound=type)


def register_detector_kind(cls: T) -> T:
    """Class decorator: make ``cls`` the loader of artifacts whose ``kind`` is ``cls.kind``."""
    kind = getattr(cls, "kind", None)
    if not isinstance(kind, str) or not kind:
        raise TypeError(f"{cls.__name__} needs a class attribute `kind` (a non-empty string) to be registered")
    _KINDS[kind] = cls
    return cls


def detector_kind(kind: Any, where: str = "detector") -> type:
    """The class registered for ``kind``; ArtifactError naming ``where`` if there is none."""
    if kind not in _KINDS and kind in _BUILTIN:
        import_module(_BUILTIN[kind])
    if kind not in _KINDS:
        raise ArtifactError(f"{where}: kind {kind!r} is not a detector kind ({', '.join(sorted(_KINDS))})")
    return _KINDS[kind]


def detector_kinds() -> list[str]:
    return sorted(set(_KINDS) | set(_BUILTIN))
