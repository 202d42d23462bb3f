"""What a probe kind needs, declared as scikit-learn tags (``sklearn.utils.get_tags(probe).probe``).

Training and the benchmarks read these instead of branching on the probe's name or sniffing ``fit``'s
signature:

- ``fit_uses``: the extra ``fit`` arguments it reads from an activation set (``"groups"``: contrast-pair
  ids; ``"polarity"``: 1 affirmative / 0 negated statements);
- ``requires``: those of them it cannot be fitted without (LAT and CCS need pairs, TTPD needs polarity);
- ``unpaired_negatives``: whether extra label-0 rows without a pair (benign training negatives) may be added;
- ``readout``: ``"linear"`` (``X @ coef_ + intercept_``) or ``"bilinear"`` (prompt-conditioned: fitted on
  ``[context | response]`` side by side, bound to a prompt at scoring time).

How to add a probe kind: subclass ``BaseProbe``, set ``probe_tags = ProbeTags(...)`` on the class, and
``register_probe("name", MyProbe)`` (``probe.probes``). ``coalign train --method name`` then works.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sklearn.utils import Tags, get_tags


@dataclass(frozen=True)
class ProbeTags:
    fit_uses: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    unpaired_negatives: bool = True
    readout: str = "linear"


@dataclass
class CoalignTags(Tags):
    """sklearn's tags plus coalign's ``probe`` entry."""

    probe: ProbeTags = field(default_factory=ProbeTags)


def with_probe_tags(tags: Tags, probe: ProbeTags) -> CoalignTags:
    return CoalignTags(**{f: getattr(tags, f) for f in tags.__dataclass_fields__}, probe=probe)


def probe_tags(estimator) -> ProbeTags:
    """The :class:`ProbeTags` of a probe instance (defaults for estimators that declare none)."""
    return getattr(get_tags(estimator), "probe", ProbeTags())
