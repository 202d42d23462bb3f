"""Guard policies: what to do, per detector, as its score rises; red lines; detector failures.

A policy gives each detector up to four **tiers**, each a score threshold, and the Guard takes the
highest tier the score is above:

============  ==================================================================================
``monitor``   log only (recorded in the output and the audit log)
``correct``   switch a corrector on for that row (see :mod:`detectors.router`); if the score stays
              above the ``correct`` threshold for ``patience`` tokens the Guard moves up a tier
``escalate``  call the user's ``on_escalate(context)`` and wait for the decision: allow, correct,
              block (without a callback the decision is ``block``: fail closed)
``block``     stop that row and return the refusal text instead of its output
============  ==================================================================================

Thresholds are absolute numbers or relative to the detector's calibrated threshold:
``"threshold"``, ``"threshold + 1.5"``, ``"threshold - 0.5"``, ``"threshold * 2"``; ``"off"``
(or ``false``) removes a tier. In a Guard, ``"threshold"`` is the calibration of the statistic
the policy compares: ``Detector.stream_threshold`` for stream-calibrated mean detectors (whose
running mean is compared), else ``Detector.threshold`` (see :mod:`detectors.guard`).

**Red lines** (``red_lines = ["deception"]``) are detectors whose ``block`` tier can never be
relaxed: :meth:`Policy.update`, :meth:`Policy.merge`, loading a later file through
``base.merge(...)``/``Guard.load_policy`` or assigning ``guard.policy`` all raise
:class:`PolicyError` naming the detector if the result would raise or remove its block threshold
or drop it from the red lines. A red line without an explicit ``block_above`` blocks at its
calibrated ``"threshold"``. A human's "allow" at the escalate tier does not lift a red line's
block tier either, and a red-line detector that fails always fails closed.

The per-detector **knobs** (tiers, ``corrector``, ``dose``, ``patience``, ``positions``,
``timing``, ``refusal_text``) are declared once, in :data:`detectors.policy_knobs.KNOBS`, which also
holds the one description of the Guard's **timing** modes (``timing = "next" | "immediate" |
"rewind" | "regenerate"``: when a correction takes effect); both tables are rendered in
``detectors/POLICY.md``. The booleans ``immediate``, ``rewind`` and ``regenerate`` of older files
still load (as the corresponding timing, with a ``DeprecationWarning``).

``on_detector_error``: ``"fail_closed"`` (block every row in flight), ``"fail_open"`` (record the
error and carry on without that detector) or ``"raise"`` (re-raise after cleaning up).

File format (TOML; YAML with the same keys works too)::

    version = 1
    refusal_text = "I can't continue with this response."
    on_detector_error = "fail_closed"
    red_lines = ["deception"]

    [defaults]                      # every detector, unless overridden below
    monitor_above = "threshold"
    corrector = "addition"          # addition | ablation | vector:PATH | sae | a registered name
    dose = 16.0
    patience = 8
    positions = "response"          # response | all
    timing = "next"                 # next | immediate | rewind | regenerate

    [detectors.deception]
    correct_above = "threshold"
    block_above = "threshold + 2"

    [detectors.sycophancy]
    escalate_above = 1.5
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from detectors.policy_knobs import (  # re-exported: the knob table and its types live there
    BUILTIN,
    DEFAULT_DOSE,
    DEFAULT_PATIENCE,
    KNOBS,
    MAX_DOSE,
    OFF,
    POSITIONS,
    TIERS,
    TIMINGS,
    DetectorPolicy,
    Off,
    PolicyError,
    Resolved,
    Threshold,
)

__all__ = ["BUILTIN", "DEFAULT_DOSE", "DEFAULT_PATIENCE", "DEFAULT_POLICY_FILE", "KNOBS", "MAX_DOSE", "OFF",
           "POSITIONS", "TIERS", "TIMINGS", "Decision", "DetectorPolicy", "Policy", "PolicyError", "Resolved",
           "Threshold", "check_not_relaxed"]
ERROR_MODES = ("fail_closed", "fail_open", "raise")
DEFAULT_REFUSAL = "I'm sorry, but I can't continue with this response."
DEFAULT_POLICY_FILE = Path(__file__).parent / "data" / "default_policy.toml"
_TOP_KEYS = {"version", "refusal_text", "on_detector_error", "red_lines", "defaults", "detectors"}

class Decision(str, enum.Enum):
    """A person's decision on an escalation."""

    ALLOW = "allow"
    CORRECT = "correct"
    BLOCK = "block"

    @classmethod
    def parse(cls, value: Any) -> Decision:
        if isinstance(value, Decision):
            return value
        v = getattr(value, "decision", value)
        if isinstance(v, Decision):
            return v
        if isinstance(v, str) and v.strip().lower() in ("allow", "correct", "block"):
            return cls(v.strip().lower())
        raise PolicyError(f"escalation callback returned {value!r}; expected 'allow', 'correct' or 'block'")


def _num(t: Threshold | Off | None, thr: float) -> float:
    return math.inf if t is None or t is OFF else t.resolve(thr)  # type: ignore[union-attr]


# --------------------------------------------------------------------------------------------
# the policy
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Policy:
    """A guard policy (immutable; :meth:`update` and :meth:`merge` return new policies).

    Attributes:
        detectors: per-detector settings, by detector name.
        defaults: settings for every detector (under the per-detector ones).
        red_lines: detector names whose block tier can never be relaxed.
        on_detector_error: ``fail_closed`` | ``fail_open`` | ``raise`` (None = fail_closed).
        refusal_text: text returned for blocked rows (None = a default).
        source: where it came from (a file path or ``"code"``).

    Example:
        >>> p = Policy.from_dict({"red_lines": ["deception"],
        ...                       "detectors": {"deception": {"block_above": "threshold + 1"}}})
        >>> p.update("deception", block_above=10.0)   # raises PolicyError: red line
    """

    detectors: Mapping[str, DetectorPolicy] = field(default_factory=dict)
    defaults: DetectorPolicy = field(default_factory=DetectorPolicy)
    red_lines: frozenset[str] = frozenset()
    on_detector_error: str | None = None
    refusal_text: str | None = None
    source: str = "code"

    def __post_init__(self) -> None:
        object.__setattr__(self, "red_lines", frozenset(self.red_lines))
        object.__setattr__(self, "detectors", dict(self.detectors))
        if self.on_detector_error is not None and self.on_detector_error not in ERROR_MODES:
            raise PolicyError(
                f"{self.source}: on_detector_error must be one of {', '.join(ERROR_MODES)}, got {self.on_detector_error!r}"
            )
        for name, dp in self.detectors.items():
            if not isinstance(dp, DetectorPolicy):
                raise PolicyError(f"{self.source}: detectors.{name} must be a DetectorPolicy")
        for name in self.red_lines:
            if self.detectors.get(name, DetectorPolicy()).block_above is OFF:
                raise PolicyError(f"{self.source}: detector {name!r} is a red line but its block tier is set to 'off'")

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "code") -> Policy:
        """Build from a parsed TOML/YAML mapping; errors name ``source`` and the key."""
        if not isinstance(d, Mapping):
            raise PolicyError(f"{source}: expected a table/mapping at the top level")
        for k in d:
            if k not in _TOP_KEYS:
                raise PolicyError(f"{source}: unknown key {k!r} (expected one of {', '.join(sorted(_TOP_KEYS))})")
        if "version" in d and d["version"] != 1:
            raise PolicyError(f"{source}: version {d['version']!r} is not supported (this coalign reads version 1)")
        red = d.get("red_lines", [])
        if isinstance(red, str):
            red = [red]
        if not isinstance(red, (list, tuple)) or not all(isinstance(x, str) for x in red):
            raise PolicyError(f"{source}: red_lines must be a list of detector names")
        err = d.get("on_detector_error")
        if err is not None and err not in ERROR_MODES:
            raise PolicyError(f"{source}: on_detector_error must be one of {', '.join(ERROR_MODES)}, got {err!r}")
        refusal = d.get("refusal_text")
        if refusal is not None and not isinstance(refusal, str):
            raise PolicyError(f"{source}: refusal_text must be a string")
        defaults = DetectorPolicy.from_dict(d.get("defaults", {}) or {}, f"{source}: defaults")
        dets_raw = d.get("detectors", {}) or {}
        if not isinstance(dets_raw, Mapping):
            raise PolicyError(f"{source}: detectors must be a table of detector-name -> settings")
        dets = {str(n): DetectorPolicy.from_dict(v or {}, f"{source}: detectors.{n}") for n, v in dets_raw.items()}
        return cls(detectors=dets, defaults=defaults, red_lines=frozenset(red), on_detector_error=err, refusal_text=refusal, source=source)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Policy:
        """Load a ``.toml`` or ``.yaml``/``.yml`` policy file (``"default"`` = the packaged default)."""
        if str(path) == "default":
            path = DEFAULT_POLICY_FILE
        path = Path(path)
        if not path.exists():
            raise PolicyError(f"{path}: no such policy file")
        text = path.read_text()
        suffix = path.suffix.lower()
        try:
            if suffix == ".toml":
                import tomllib

                data = tomllib.loads(text)
            elif suffix in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text) or {}
            else:
                raise PolicyError(f"{path}: unknown policy format {suffix!r}; use .toml, .yaml or .yml")
        except PolicyError:
            raise
        except Exception as e:  # tomllib.TOMLDecodeError, yaml.YAMLError
            raise PolicyError(f"{path}: cannot parse ({e})") from e
        return cls.from_dict(data, source=str(path))

    @classmethod
    def default(cls) -> Policy:
        """The packaged default policy (monitor every detector at its calibrated threshold)."""
        return cls.load(DEFAULT_POLICY_FILE)

    # -- resolution ------------------------------------------------------------------------
    @property
    def error_mode(self) -> str:
        return self.on_detector_error or "fail_closed"

    @property
    def refusal(self) -> str:
        return self.refusal_text if self.refusal_text is not None else DEFAULT_REFUSAL

    def for_detector(self, name: str) -> DetectorPolicy:
        """Effective settings for ``name`` (built-in <- defaults <- per-detector); red lines get
        ``block_above = "threshold"`` when no block tier is set."""
        dp = self.detectors.get(name, DetectorPolicy()).over(self.defaults).over(BUILTIN)
        if name in self.red_lines and dp.block_above is OFF and self.detectors.get(name, DetectorPolicy()).block_above is not OFF:
            dp = replace(dp, block_above=Threshold("offset", 0.0))
        return dp

    def resolve(self, name: str, detector_threshold: float) -> Resolved:
        """Numbers for one detector with calibrated threshold ``detector_threshold``."""
        dp = self.for_detector(name)
        if dp.corrector == "avoid_token" and dp.timing != "rewind":
            raise PolicyError(f"{self.source}: detector {name!r}: corrector 'avoid_token' needs timing = \"rewind\" "
                              "(it steers away from the token the correction takes back)")
        thr = float(detector_threshold)
        values: dict[str, Any] = {}
        for knob in KNOBS:
            v = getattr(dp, knob.name)
            if knob.threshold:
                tier = knob.name[: -len("_above")]
                x = _num(v, thr)
                if v not in (None, OFF) and not math.isfinite(x):
                    # inf means "tier off", NaN compares False: either would silently disable a tier
                    raise PolicyError(f"{self.source}: detector {name!r}: {knob.name} = {v} resolves to {x} "
                                      f"(detector threshold {thr}); tier thresholds must be finite")
                values[tier] = x
            else:
                values[knob.name] = v
        if values["refusal_text"] is None:
            values["refusal_text"] = self.refusal
        return Resolved(name=name, red_line=name in self.red_lines, **values)

    @property
    def has_escalation(self) -> bool:
        return any(dp.escalate_above not in (None, OFF) for dp in [self.defaults, *self.detectors.values()])

    # -- changes (red lines enforced) ----------------------------------------------------------
    def update(self, detector: str | None = None, **settings: Any) -> Policy:
        """A new policy with ``settings`` changed for ``detector`` (or, with no detector, the
        top-level keys ``on_detector_error``, ``refusal_text``, ``red_lines`` (added) or
        ``defaults`` settings given as ``defaults={...}``). Raises PolicyError if a red line would be relaxed."""
        if detector is not None:
            other = Policy.from_dict({"detectors": {detector: settings}}, source=f"update({detector!r})")
        else:
            other = Policy.from_dict(settings, source="update()")
        return self.merge(other)

    def merge(self, other: Policy) -> Policy:
        """``other`` on top of this policy: its set fields win, red lines are the union.

        Raises PolicyError (naming the detector) if the result relaxes one of this policy's red lines.
        """
        dets = dict(self.detectors)
        for name, dp in other.detectors.items():
            dets[name] = dp.over(dets[name]) if name in dets else dp
        merged = Policy(
            detectors=dets,
            defaults=other.defaults.over(self.defaults),
            red_lines=self.red_lines | other.red_lines,
            on_detector_error=other.on_detector_error or self.on_detector_error,
            refusal_text=other.refusal_text if other.refusal_text is not None else self.refusal_text,
            source=f"{self.source} + {other.source}",
        )
        check_not_relaxed(self, merged)
        return merged

    def with_red_lines(self, *names: str) -> Policy:
        """A new policy with more red lines."""
        return replace(self, red_lines=self.red_lines | frozenset(names))

    # -- serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": 1}
        if self.refusal_text is not None:
            out["refusal_text"] = self.refusal_text
        if self.on_detector_error is not None:
            out["on_detector_error"] = self.on_detector_error
        out["red_lines"] = sorted(self.red_lines)
        d = self.defaults.to_dict()
        if d:
            out["defaults"] = d
        if self.detectors:
            out["detectors"] = {n: dp.to_dict() for n, dp in sorted(self.detectors.items())}
        return out

    @property
    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def check_not_relaxed(old: Policy, new: Policy, thresholds: Mapping[str, float] | None = None) -> None:
    """Raise PolicyError if ``new`` relaxes any red line of ``old``.

    With the detectors' calibrated ``thresholds`` known the block thresholds are compared as
    numbers; without them a changed block tier must keep its form (absolute, or threshold +/- X)
    and not rise.
    """
    for name in sorted(old.red_lines):
        if name not in new.red_lines:
            raise PolicyError(f"red line {name!r} cannot be removed (policy {new.source})")
        ob, nb = old.for_detector(name).block_above, new.for_detector(name).block_above
        if nb is None or nb is OFF:
            raise PolicyError(f"red line {name!r}: its block tier cannot be switched off (policy {new.source})")
        if ob == nb:
            continue
        assert isinstance(ob, Threshold) and isinstance(nb, Threshold)
        # every comparison below is written "not (new <= old)" so that a NaN, whatever its
        # source, counts as a relaxation (NaN > x is False and would let it through)
        if thresholds is not None and name in thresholds:
            o, n = ob.resolve(thresholds[name]), nb.resolve(thresholds[name])
            if not math.isfinite(n) or not (n <= o):
                raise PolicyError(f"red line {name!r}: block threshold cannot be raised from {o:.4g} to {n:.4g} (policy {new.source})")
            continue
        if ob.kind != nb.kind or ob.kind == "scale":
            raise PolicyError(
                f"red line {name!r}: block_above changed from {ob} to {nb}; a red line's block threshold can only be "
                f"lowered, keeping its form (policy {new.source})"
            )
        if not math.isfinite(nb.value) or not (nb.value <= ob.value):
            raise PolicyError(f"red line {name!r}: block threshold cannot be raised from {ob} to {nb} (policy {new.source})")
