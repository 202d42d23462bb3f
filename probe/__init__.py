"""probe: labelled datasets, activation sets, probe estimators, metrics and calibration.

Probes are scikit-learn estimators usable on your own activations::

    from probe import LogisticProbe
    p = LogisticProbe().fit(X_train, y_train)      # X: [n, d_model], y: 1 = behaviour present
    p.direction_, p.decision_function(X_test)

Names are imported on first use (see :mod:`circuits.lazy_exports`).
"""

from __future__ import annotations

from circuits.lazy_exports import lazy_exports

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
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
