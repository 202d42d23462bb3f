"""Linear probes on activations (sklearn estimators) and a name -> class registry.

All single probes satisfy ``decision_function(X) == X @ coef_ + intercept_`` on raw
activations and expose a unit ``direction_`` (larger projection = ``classes_[1]``).
"""

from __future__ import annotations

from functools import partial

from .base import BaseProbe, ProbeInputError
from .ccs import CCSProbe
from .conditional import ConditionalProbe
from .ensemble import EnsembleProbe
from .lat import LATProbe
from .logistic import LogisticProbe
from .mass_mean import MassMeanProbe
from .ttpd import TTPDProbe

#: name -> estimator class (or factory); ``make_probe(name, **params)`` builds one
PROBES = {
    "logistic": LogisticProbe,
    "mass_mean": MassMeanProbe,
    "mass_mean_cov": partial(MassMeanProbe, covariance_adjusted=True),
    "lat": LATProbe,
    "ccs": CCSProbe,
    "ttpd": TTPDProbe,
    "conditional": ConditionalProbe,
}


def make_probe(name: str, **params) -> BaseProbe:
    """Instantiate the probe registered under ``name`` with ``params``."""
    try:
        factory = PROBES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown probe {name!r}; valid names: {', '.join(sorted(PROBES))}") from None
    return factory(**params)


__all__ = [
    "BaseProbe",
    "CCSProbe",
    "ConditionalProbe",
    "EnsembleProbe",
    "LATProbe",
    "LogisticProbe",
    "MassMeanProbe",
    "PROBES",
    "ProbeInputError",
    "TTPDProbe",
    "make_probe",
]
