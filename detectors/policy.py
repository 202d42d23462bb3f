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

``positions``: where a corrector edits. ``"response"`` (default): every position whose output is
a generated token (the last prompt token and each new one). ``"all"``: the prompt's tokens too,
as CAA adds its vectors; this only differs when the correction is on before the prompt is read
(``generate(..., correct=True)``), because a correction switched on by a flag cannot reach prompt
positions already in the KV cache.

``immediate``: when true, a correction also reaches the token whose step tripped it. The Guard
re-runs that step's forward pass with the corrector on (one extra pass, only at the step a
correction starts) and chooses the token from the corrected logits. Without it (the default) a
correction switched on at step ``t`` steers from token ``t + 1`` on, which is too late when one
token is the whole answer (an A/B letter).

``rewind``: when true, a correction takes back the token that tripped it. A token's score is read
at its own position, one step after the token was chosen, so a detector that judges what was just
said (an A/B letter read with its question) can only flag it once it is out. With ``rewind`` the
Guard drops that token from the KV cache, re-runs the step that chose it with the corrector on,
re-chooses it, and goes on from there (two extra forward passes, only at the step a correction
starts; a flag at step 0, the prompt's last token, starts no correction: nothing has been said).
It implies ``immediate``. The corrector ``avoid_token`` (see :mod:`detectors.router`) needs it.

``regenerate``: when true, :meth:`Guard.generate <detectors.guard.Guard.generate>` also judges each
*finished* response as a whole: the mean of the detector's token scores over the response (the
statistic a response-mean detector's item threshold is calibrated on) against ``correct_above``,
where ``"threshold"`` now means the detector's item threshold. A response above it, on which no
correction ran, is generated again from its first token with the corrector on (once; the discarded
attempt is kept in the ``regenerate`` action and in its own audit record). A flag in the correct
tier *during* the response (the running mean against the stream threshold) stops the row there and
regenerates it the same way, instead of steering the rest of it. If the new response is still above
the correct tier at its end, the row moves up a tier (``block``, or ``escalate`` to the callback);
during it, the patience rule applies as for any correction. Only for response-mean detectors. In
:meth:`Guard.stream` the first event of the new attempt carries ``retract``: the characters the
discarded attempt showed.

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
    positions = "response"          # response | all (see below)
    immediate = false               # true: re-run the flagged step under correction (see below)
    rewind = false                  # true: take back the flagged token and re-choose it corrected
    regenerate = false              # true: a finished response still flagged is generated again, corrected

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
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from circuits.errors import CoalignError

TIERS = ("monitor", "correct", "escalate", "block")
POSITIONS = ("response", "all")
ERROR_MODES = ("fail_closed", "fail_open", "raise")
DEFAULT_REFUSAL = "I'm sorry, but I can't continue with this response."
DEFAULT_DOSE = 16.0
DEFAULT_PATIENCE = 8
MAX_DOSE = 1000.0
DEFAULT_POLICY_FILE = Path(__file__).parent / "data" / "default_policy.toml"
_TOP_KEYS = {"version", "refusal_text", "on_detector_error", "red_lines", "defaults", "detectors"}


class PolicyError(CoalignError, ValueError):
    """An invalid policy, or an attempt to relax a red line."""


class Decision(str, enum.Enum):
    """A person's decision on an escalation."""

    ALLOW = "allow"
    CORRECT = "correct"
    BLOCK = "block"

    @classmethod
    def parse(cls, value: Any) -> "Decision":
        if isinstance(value, Decision):
            return value
        v = getattr(value, "decision", value)
        if isinstance(v, Decision):
            return v
        if isinstance(v, str) and v.strip().lower() in ("allow", "correct", "block"):
            return cls(v.strip().lower())
        raise PolicyError(f"escalation callback returned {value!r}; expected 'allow', 'correct' or 'block'")


# --------------------------------------------------------------------------------------------
# thresholds
# --------------------------------------------------------------------------------------------
class _Off:
    """A tier switched off explicitly (as opposed to not set, which inherits)."""

    _inst: "_Off | None" = None

    def __new__(cls) -> "_Off":
        if cls._inst is None:
            cls._inst = super().__new__(cls)
        return cls._inst

    def __repr__(self) -> str:
        return "OFF"

    def __str__(self) -> str:
        return "off"

    def __reduce__(self) -> str:
        return "OFF"


OFF = _Off()
_REL = re.compile(r"^threshold\s*(?:([+\-*])\s*([0-9]*\.?[0-9]+(?:[eE][+\-]?[0-9]+)?))?$")


@dataclass(frozen=True)
class Threshold:
    """A tier threshold: absolute (``kind="abs"``) or relative to the detector's threshold
    (``"offset"``: threshold + value, ``"scale"``: threshold * value)."""

    kind: str
    value: float

    def __post_init__(self) -> None:
        # a NaN here would make every comparison False: a red line that never blocks (issue 24)
        if self.kind not in ("abs", "offset", "scale"):
            raise PolicyError(f"threshold kind must be 'abs', 'offset' or 'scale', got {self.kind!r}")
        if isinstance(self.value, bool) or not isinstance(self.value, (int, float)) or not math.isfinite(self.value):
            raise PolicyError(f"threshold must be a finite number, got {self.value!r}")

    def resolve(self, detector_threshold: float) -> float:
        if self.kind == "abs":
            return self.value
        if self.kind == "offset":
            return detector_threshold + self.value
        return detector_threshold * self.value

    def __str__(self) -> str:
        if self.kind == "abs":
            return repr(self.value)
        if self.kind == "offset":
            if self.value == 0:
                return "threshold"
            return f"threshold {'+' if self.value > 0 else '-'} {abs(self.value)!r}"
        return f"threshold * {self.value!r}"

    def to_json(self) -> Any:
        return self.value if self.kind == "abs" else str(self)

    @classmethod
    def parse(cls, value: Any, where: str) -> "Threshold | _Off":
        if value is OFF or value is False:
            return OFF
        if isinstance(value, Threshold):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise PolicyError(f"{where}: threshold must be finite, got {value!r}")
            return cls("abs", float(value))
        if isinstance(value, str):
            s = value.strip().lower()
            if s in ("off", "none", "never", ""):
                return OFF
            try:
                x = float(s)  # also parses "nan", "inf", "1e400": refused below, not passed on
            except ValueError:
                x = None
            if x is not None:
                if not math.isfinite(x):
                    raise PolicyError(f"{where}: threshold must be finite, got {value!r}")
                return cls("abs", x)
            m = _REL.match(s)
            if m:
                op, num = m.group(1), m.group(2)
                if op is None:
                    return cls("offset", 0.0)
                x = float(num)
                if not math.isfinite(x):
                    raise PolicyError(f"{where}: threshold must be finite, got {value!r}")
                return cls("offset", x) if op == "+" else cls("offset", -x) if op == "-" else cls("scale", x)
        raise PolicyError(
            f"{where}: bad threshold {value!r}; use a number, 'threshold', 'threshold + X', "
            "'threshold - X', 'threshold * X' or 'off'"
        )


# --------------------------------------------------------------------------------------------
# per-detector settings
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DetectorPolicy:
    """Tiers and correction settings for one detector. ``None`` = not set here (inherited)."""

    monitor_above: Threshold | _Off | None = None
    correct_above: Threshold | _Off | None = None
    escalate_above: Threshold | _Off | None = None
    block_above: Threshold | _Off | None = None
    corrector: str | None = None
    dose: float | None = None
    patience: int | None = None
    positions: str | None = None
    immediate: bool | None = None
    rewind: bool | None = None
    regenerate: bool | None = None
    refusal_text: str | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> "DetectorPolicy":
        if not isinstance(d, Mapping):
            raise PolicyError(f"{where}: expected a table of settings, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        kw: dict[str, Any] = {}
        for k, v in d.items():
            if k not in known:
                raise PolicyError(f"{where}: unknown key {k!r} (expected one of {', '.join(sorted(known))})")
            kw[k] = _field_value(k, v, f"{where}.{k}")
        return cls(**kw)

    def over(self, base: "DetectorPolicy") -> "DetectorPolicy":
        """These settings on top of ``base`` (fields set here win)."""
        return DetectorPolicy(**{f.name: (getattr(self, f.name) if getattr(self, f.name) is not None else getattr(base, f.name)) for f in fields(self)})

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None:
                continue
            out[f.name] = "off" if v is OFF else v.to_json() if isinstance(v, Threshold) else v
        return out


def _field_value(key: str, v: Any, where: str) -> Any:
    if key.endswith("_above"):
        return None if v is None else Threshold.parse(v, where)
    if v is None:
        return None
    if key in ("corrector", "refusal_text"):
        if not isinstance(v, str) or (key == "corrector" and not v.strip()):
            raise PolicyError(f"{where}: expected a string, got {v!r}")
        return v.strip() if key == "corrector" else v
    if key == "dose":
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise PolicyError(f"{where}: expected a number, got {v!r}")
        if not (0.0 <= v <= MAX_DOSE):  # also catches NaN
            raise PolicyError(
                f"{where}: dose {v!r} is out of range; it must be a finite number from 0 to {MAX_DOSE:g} "
                "(residual-stream units: token norms are ~100-250 in SmolLM2, so a far larger dose swamps the "
                "activation and overflows to NaN logits; a negative one would steer toward the behaviour)"
            )
        return float(v)
    if key == "positions":
        if v not in POSITIONS:
            raise PolicyError(f"{where}: expected one of {', '.join(POSITIONS)}, got {v!r}")
        return str(v)
    if key in ("immediate", "rewind", "regenerate"):
        if not isinstance(v, bool):
            raise PolicyError(f"{where}: expected true or false, got {v!r}")
        return v
    if key == "patience":
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise PolicyError(f"{where}: expected a positive integer, got {v!r}")
        return int(v)
    raise PolicyError(f"{where}: unknown key")


BUILTIN = DetectorPolicy(
    monitor_above=Threshold("offset", 0.0),
    correct_above=OFF,
    escalate_above=OFF,
    block_above=OFF,
    corrector="addition",
    dose=DEFAULT_DOSE,
    patience=DEFAULT_PATIENCE,
    positions="response",
    immediate=False,
    rewind=False,
    regenerate=False,
)


@dataclass(frozen=True)
class Resolved:
    """A detector's policy in numbers (``inf`` = tier off)."""

    name: str
    monitor: float
    correct: float
    escalate: float
    block: float
    corrector: str
    dose: float
    patience: int
    refusal_text: str
    red_line: bool
    positions: str = "response"
    immediate: bool = False
    rewind: bool = False
    regenerate: bool = False

    def threshold_of(self, tier: str) -> float:
        return float(getattr(self, tier))

    def tier_of(self, score: float, lowest: str = "monitor") -> str | None:
        """Highest tier whose threshold ``score`` is above (tiers below ``lowest`` ignored)."""
        for tier in reversed(TIERS[TIERS.index(lowest):]):
            if score > getattr(self, tier):
                return tier
        return None

    def next_tier(self, tier: str) -> str:
        """The next configured tier above ``tier`` (``block`` if none is configured)."""
        for t in TIERS[TIERS.index(tier) + 1:]:
            if math.isfinite(getattr(self, t)):
                return t
        return "block"

    @property
    def action_threshold(self) -> float:
        """Lowest threshold that needs an action (correct, escalate or block)."""
        return min(self.correct, self.escalate, self.block)


def _num(t: Threshold | _Off | None, thr: float) -> float:
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
    def from_dict(cls, d: Mapping[str, Any], source: str = "code") -> "Policy":
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
    def load(cls, path: str | os.PathLike) -> "Policy":
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
    def default(cls) -> "Policy":
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
        if dp.corrector == "avoid_token" and not dp.rewind:
            raise PolicyError(f"{self.source}: detector {name!r}: corrector 'avoid_token' needs rewind = true "
                              "(it steers away from the token the correction takes back)")
        thr = float(detector_threshold)
        tiers = {}
        for tier in TIERS:
            t = getattr(dp, f"{tier}_above")
            x = _num(t, thr)
            if t not in (None, OFF) and not math.isfinite(x):
                # inf means "tier off" below, NaN compares False: either would silently disable a tier
                raise PolicyError(f"{self.source}: detector {name!r}: {tier}_above = {t} resolves to {x} "
                                  f"(detector threshold {thr}); tier thresholds must be finite")
            tiers[tier] = x
        return Resolved(
            name=name,
            monitor=tiers["monitor"],
            correct=tiers["correct"],
            escalate=tiers["escalate"],
            block=tiers["block"],
            corrector=str(dp.corrector),
            dose=float(dp.dose),  # type: ignore[arg-type]
            patience=int(dp.patience),  # type: ignore[arg-type]
            refusal_text=dp.refusal_text if dp.refusal_text is not None else self.refusal,
            red_line=name in self.red_lines,
            positions=str(dp.positions),
            immediate=bool(dp.immediate) or bool(dp.rewind),
            rewind=bool(dp.rewind),
            regenerate=bool(dp.regenerate),
        )

    @property
    def has_escalation(self) -> bool:
        return any(dp.escalate_above not in (None, OFF) for dp in [self.defaults, *self.detectors.values()])

    # -- changes (red lines enforced) ----------------------------------------------------------
    def update(self, detector: str | None = None, **settings: Any) -> "Policy":
        """A new policy with ``settings`` changed for ``detector`` (or, with no detector, the
        top-level keys ``on_detector_error``, ``refusal_text``, ``red_lines`` (added) or
        ``defaults`` settings given as ``defaults={...}``). Raises PolicyError if a red line would be relaxed."""
        if detector is not None:
            other = Policy.from_dict({"detectors": {detector: settings}}, source=f"update({detector!r})")
        else:
            other = Policy.from_dict(settings, source="update()")
        return self.merge(other)

    def merge(self, other: "Policy") -> "Policy":
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

    def with_red_lines(self, *names: str) -> "Policy":
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
