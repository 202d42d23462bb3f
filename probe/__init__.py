"""probe: labelled datasets, activation sets, probe estimators, metrics and calibration.

Probes are scikit-learn estimators usable on your own activations::

    from probe import LogisticProbe
    p = LogisticProbe().fit(X_train, y_train)      # X: [n, d_model], y: 1 = behaviour present
    p.direction_, p.decision_function(X_test)

Names are imported on first use (PEP 562), so ``import probe`` (and the CLI) starts without
loading torch or transformers until something needs them.
"""

from __future__ import annotations

import sys
import types
from importlib import import_module
from typing import Any

_EXPORTS = {
    "ActivationSet": "probe.activation_set",
    "Example": "probe.datasets",
    "LabelledDataset": "probe.datasets",
    "load_dataset": "probe.datasets",
    "recipe": "probe.datasets",
    "auroc": "probe.metrics",
    "bootstrap_auroc_ci": "probe.metrics",
    "calibration_report": "probe.metrics",
    "pair_accuracy": "probe.metrics",
    "recall_at_fpr": "probe.metrics",
    "threshold_at_fpr": "probe.metrics",
    "PROBES": "probe.probes",
    "CCSProbe": "probe.probes",
    "EnsembleProbe": "probe.probes",
    "LATProbe": "probe.probes",
    "LogisticProbe": "probe.probes",
    "MassMeanProbe": "probe.probes",
    "TTPDProbe": "probe.probes",
    "make_probe": "probe.probes",
    "ConditionalProbe": "probe.probes",
    "register_probe": "probe.probes",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'probe' has no attribute {name!r}")
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
