"""detectors: calibrated Detector artifacts, the Guard around generation, policies, routing, CLI.

Names are imported on first use (PEP 562), so ``import detectors`` (and the CLI) starts without
loading torch or transformers until something needs them.
"""

from __future__ import annotations

import sys
import types
from importlib import import_module
from typing import Any

_EXPORTS = {
    "AuditLog": "detectors.audit",
    "ConditionalDetector": "detectors.conditional",
    "train_deception_mixture": "detectors.deception_mixture",
    "Detector": "detectors.detector",
    "EscalationContext": "detectors.guard",
    "Guard": "detectors.guard",
    "GuardOutput": "detectors.guard",
    "Decision": "detectors.policy",
    "Policy": "detectors.policy",
    "PolicyError": "detectors.policy",
    "Router": "detectors.router",
    "TrainingConfig": "detectors.train_config",
    "train_detector": "detectors.training",
    "retrain": "detectors.training",
    "recalibrate": "detectors.calibration",
    "register_detector_kind": "detectors.kinds",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'detectors' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


class _Package(types.ModuleType):
    """When a submodule shares its name with an export (``circuits.capture`` and the function
    ``capture``), the import system binds the submodule on the package once it loads; keep the export,
    as the eager ``from circuits.capture import capture`` of earlier versions did."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == value.__name__:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
