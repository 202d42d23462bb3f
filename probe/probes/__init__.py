"""Linear probes on activations (sklearn estimators) and a name -> class registry.

All single probes satisfy ``decision_function(X) == X @ coef_ + intercept_`` on raw
activations and expose a unit ``direction_`` (larger projection = ``classes_[1]``).
"""

from __future__ import annotations

from functools import partial

from circuits.errors import InputError

from .base import BaseProbe, ProbeInputError
from .ccs import CCSProbe
from .conditional import ConditionalProbe
from .ensemble import EnsembleProbe
from .lat import LATProbe
from .logistic import LogisticProbe
from .mass_mean import MassMeanProbe
from .tags import ProbeTags, probe_tags
from .ttpd import TTPDProbe

#: name -> estimator class (or factory); ``make_probe(name, **params)`` builds one. Add yours with
#: :func:`register_probe` (see :mod:`probe.probes.tags` for declaring what its ``fit`` needs).
PROBES = {
    "logistic": LogisticProbe,
    "mass_mean": MassMeanProbe,
    "mass_mean_cov": partial(MassMeanProbe, covariance_adjusted=True),
    "lat": LATProbe,
    "ccs": CCSProbe,
    "ttpd": TTPDProbe,
    "conditional": ConditionalProbe,
}


def register_probe(name: str, factory) -> None:
    """Make ``make_probe(name)`` (and ``coalign train --method name``) build ``factory()``: an estimator
    class or a callable returning one, declaring its needs in ``probe_tags``."""
    if not isinstance(name, str) or not name:
        raise InputError(f"a probe name must be a non-empty string, got {name!r}")
    PROBES[name] = factory


def check_probe_name(name: object) -> str:
    """``name`` if a probe is registered under it, else an InputError listing the valid names (cheap: call
    it before any forward pass)."""
    if not isinstance(name, str) or name not in PROBES:
        raise InputError(f"unknown probe {name!r} (method); valid names: {', '.join(sorted(PROBES))}")
    return name


def make_probe(name: str, **params) -> BaseProbe:
    """Instantiate the probe registered under ``name`` with ``params``."""
    return PROBES[check_probe_name(name)](**params)


def tags_of(name: str) -> ProbeTags:
    """The :class:`ProbeTags` of the probe kind registered under ``name``."""
    return probe_tags(make_probe(name))


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
    "ProbeTags",
    "check_probe_name",
    "register_probe",
    "tags_of",
    "TTPDProbe",
    "make_probe",
]
