"""circuits: models, hook names, activation capture and interventions.

Knows nothing about deception or sycophancy: it reads and writes activations at TransformerLens
hook names on any local causal LM.

Names are imported on first use (PEP 562), so ``import circuits`` (and the CLI) starts without
loading torch or transformers until something needs them.
"""

from __future__ import annotations

import sys
import types
from importlib import import_module
from typing import Any

_EXPORTS = {
    "SELECTIONS": "circuits.capture",
    "Activations": "circuits.capture",
    "capture": "circuits.capture",
    "capture_selections": "circuits.capture",
    "ArtifactError": "circuits.errors",
    "CoalignError": "circuits.errors",
    "HookNameError": "circuits.errors",
    "InputError": "circuits.errors",
    "ModelMismatchError": "circuits.errors",
    "UnsupportedModelError": "circuits.errors",
    "HFHookedModel": "circuits.hooked_model",
    "HookedModel": "circuits.hooked_model",
    "HookHandle": "circuits.hooked_model",
    "TLHookedModel": "circuits.hooked_model",
    "as_hooked": "circuits.hooked_model",
    "Item": "circuits.inputs",
    "DEFAULT_MODEL": "circuits.loading",
    "EMBEDDED": "circuits.loading",
    "from_hf": "circuits.loading",
    "load_model": "circuits.loading",
    "ActivationAddition": "circuits.steering",
    "DirectionalAblation": "circuits.steering",
    "GenerationState": "circuits.steering",
    "SAEClamp": "circuits.steering",
    "logits_with": "circuits.steering",
    "SteeringVector": "circuits.steering_vectors",
    "build_caa": "circuits.steering_vectors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'circuits' has no attribute {name!r}")
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
