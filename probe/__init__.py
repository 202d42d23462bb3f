"""probe: labelled datasets, activation sets, probe estimators, metrics and calibration.

Probes are scikit-learn estimators usable on your own activations::

    from probe import LogisticProbe
    p = LogisticProbe().fit(X_train, y_train)      # X: [n, d_model], y: 1 = behaviour present
    p.direction_, p.decision_function(X_test)
"""

from probe.activation_set import ActivationSet
from probe.datasets import Example, LabelledDataset, load_dataset, recipe
from probe.metrics import auroc, bootstrap_auroc_ci, calibration_report, pair_accuracy, recall_at_fpr, threshold_at_fpr
from probe.probes import (
    PROBES,
    CCSProbe,
    EnsembleProbe,
    LATProbe,
    LogisticProbe,
    MassMeanProbe,
    TTPDProbe,
    make_probe,
)

__all__ = [
    "PROBES",
    "ActivationSet",
    "CCSProbe",
    "EnsembleProbe",
    "Example",
    "LATProbe",
    "LabelledDataset",
    "LogisticProbe",
    "MassMeanProbe",
    "TTPDProbe",
    "auroc",
    "bootstrap_auroc_ci",
    "calibration_report",
    "load_dataset",
    "make_probe",
    "pair_accuracy",
    "recall_at_fpr",
    "recipe",
    "threshold_at_fpr",
]
