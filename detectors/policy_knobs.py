"""Every per-detector policy knob, declared once.

:data:`KNOBS` is the single declaration of the settings a policy gives a detector (in ``[defaults]``
or ``[detectors.NAME]``): it drives parsing and validation (:meth:`DetectorPolicy.from_dict`), the
built-in defaults (:data:`BUILTIN`), the fields of :class:`DetectorPolicy` and :class:`Resolved`,
and the documentation (``detectors/POLICY.md``, written by :func:`knobs_markdown`; a test checks
the committed file is current). To add a knob: add one :class:`Knob` row (and use it where the Guard
acts on it). :data:`TIMINGS` is the one description of the Guard's timing modes.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, make_dataclass
from typing import Any

from circuits.errors import CoalignError

TIERS = ("monitor", "correct", "escalate", "block")
POSITIONS = ("response", "all")
DEFAULT_DOSE = 16.0
DEFAULT_PATIENCE = 8
MAX_DOSE = 1000.0


class PolicyError(CoalignError, ValueError):
    """An invalid policy, or an attempt to relax a red line."""


# --------------------------------------------------------------------------------------------
# thresholds
# --------------------------------------------------------------------------------------------
class Off:
    """A tier switched off explicitly (as opposed to not set, which inherits)."""

    _inst: Off | None = None

    def __new__(cls) -> Off:
        if cls._inst is None:
            cls._inst = super().__new__(cls)
        return cls._inst

    def __repr__(self) -> str:
        return "OFF"

    def __str__(self) -> str:
        return "off"

    def __reduce__(self) -> str:
        return "OFF"


OFF = Off()
_Off = Off  # the old private name
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
    def parse(cls, value: Any, where: str) -> Threshold | Off:
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
                x = float(s)  # also parses "nan", "inf", "1e400": refused here, not passed on
            except ValueError:
                pass
            else:
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
# value parsers: (value, where) -> value, raising PolicyError naming ``where``
# --------------------------------------------------------------------------------------------
def _threshold(v: Any, where: str) -> Any:
    return Threshold.parse(v, where)


def _corrector(v: Any, where: str) -> str:
    if not isinstance(v, str) or not v.strip():
        raise PolicyError(f"{where}: expected a string, got {v!r}")
    return v.strip()


def _text(v: Any, where: str) -> str:
    if not isinstance(v, str):
        raise PolicyError(f"{where}: expected a string, got {v!r}")
    return v


def _dose(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise PolicyError(f"{where}: expected a number, got {v!r}")
    if not (0.0 <= v <= MAX_DOSE):  # also catches NaN
        raise PolicyError(
            f"{where}: dose {v!r} is out of range; it must be a finite number from 0 to {MAX_DOSE:g} "
            "(residual-stream units: token norms are ~100-250 in SmolLM2, so a far larger dose swamps the "
            "activation and overflows to NaN logits; a negative one would steer toward the behaviour)"
        )
    return float(v)


def _patience(v: Any, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise PolicyError(f"{where}: expected a positive integer, got {v!r}")
    return int(v)


def _choice(options: tuple[str, ...]) -> Callable[[Any, str], str]:
    def parse(v: Any, where: str) -> str:
        if v not in options:
            raise PolicyError(f"{where}: expected one of {', '.join(options)}, got {v!r}")
        return str(v)

    return parse


TIMINGS = {
    "next": "a correction switched on by the flag at step `t` steers from token `t + 1` on (no extra "
            "forward pass).",
    "immediate": "the step that tripped the correction is re-run with the corrector on and its token is "
                 "chosen from the corrected logits: the correction reaches token `t` itself (one extra "
                 "forward pass, only at the step a correction starts). For answers one token long.",
    "rewind": "the token whose position step `t` read (token `t - 1`, already said) is taken back: dropped "
              "from the KV cache, its step re-run with the corrector on and re-chosen, then step `t` re-run "
              "(two extra passes at the step a correction starts; a flag at step 0 starts no correction, "
              "nothing has been said). For detectors that judge a token once it is out (an A/B letter "
              "read with its question); the corrector `avoid_token` needs it.",
    "regenerate": "response-mean detectors only, in `generate` and `stream`: a finished response whose mean "
                  "token score is above `correct_above` (where `\"threshold\"` means the item threshold) is "
                  "generated again from its first token with the corrector on (once); a flag in the correct "
                  "tier during the response stops it and regenerates it the same way. A regenerated response "
                  "still flagged at its end moves up a tier. A stream's first event of the new attempt "
                  "carries `retract`.",
}
LEGACY_TIMING = ("regenerate", "rewind", "immediate")  # the old booleans, in order of precedence


@dataclass(frozen=True)
class Knob:
    """One per-detector setting: its name, built-in default (as parsed), parser and documentation."""

    name: str
    default: Any
    parse: Callable[[Any, str], Any]
    doc: str
    toml: str  # the default as a policy file writes it
    threshold: bool = False


KNOBS: tuple[Knob, ...] = (
    Knob("monitor_above", Threshold("offset", 0.0), _threshold,
         "log only (in the output and the audit log)", '"threshold"', threshold=True),
    Knob("correct_above", OFF, _threshold,
         "switch the corrector on for that row; if the flag persists `patience` tokens, move up a tier",
         '"off"', threshold=True),
    Knob("escalate_above", OFF, _threshold,
         "ask `on_escalate(context)`: allow, correct or block (no callback: block, failing closed)",
         '"off"', threshold=True),
    Knob("block_above", OFF, _threshold,
         "stop the row and return the refusal text (a red line without one blocks at `\"threshold\"`)",
         '"off"', threshold=True),
    Knob("corrector", "addition", _corrector,
         "`addition`, `ablation`, `vector:PATH`, `sae`, `avoid_token` or a registered name "
         "(see `detectors.router`)", '"addition"'),
    Knob("dose", DEFAULT_DOSE, _dose,
         f"corrector strength, 0 to {MAX_DOSE:g} (residual-stream units for additions; a fraction for "
         "ablation)", repr(DEFAULT_DOSE)),
    Knob("patience", DEFAULT_PATIENCE, _patience,
         "tokens a corrected flag may persist before the Guard moves up a tier", str(DEFAULT_PATIENCE)),
    Knob("positions", "response", _choice(POSITIONS),
         "where a corrector edits: `response` (every position whose output is a generated token) or "
         "`all` (the prompt too, as CAA does; only differs for a correction on before the prompt is read)",
         '"response"'),
    Knob("timing", "next", _choice(tuple(TIMINGS)),
         "when a correction takes effect: " + ", ".join(f"`{t}`" for t in TIMINGS) + " (see the timing "
         "table); replaces the booleans `immediate`, `rewind`, `regenerate`, which still load with a "
         "DeprecationWarning", '"next"'),
    Knob("refusal_text", None, _text,
         "text returned for a row this detector blocked (default: the policy's `refusal_text`)", "(unset)"),
)
KNOB = {k.name: k for k in KNOBS}


# --------------------------------------------------------------------------------------------
# per-detector settings
# --------------------------------------------------------------------------------------------
class _DetectorPolicyBase:
    """Tiers and correction settings for one detector (fields: :data:`KNOBS`). ``None`` = not set
    here (inherited)."""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> DetectorPolicy:
        if not isinstance(d, Mapping):
            raise PolicyError(f"{where}: expected a table of settings, got {type(d).__name__}")
        kw: dict[str, Any] = {}
        legacy = {k: d[k] for k in LEGACY_TIMING if k in d}
        for k, v in d.items():
            if k in legacy:
                continue
            if k not in KNOB:
                raise PolicyError(f"{where}: unknown key {k!r} (expected one of {', '.join(sorted(KNOB))})")
            kw[k] = None if v is None else KNOB[k].parse(v, f"{where}.{k}")
        if legacy:
            kw["timing"] = _legacy_timing(legacy, "timing" in d, where)
        return cls(**kw)  # type: ignore[return-value]

    def over(self, base: DetectorPolicy) -> DetectorPolicy:
        """These settings on top of ``base`` (fields set here win)."""
        return type(self)(**{f.name: (getattr(self, f.name) if getattr(self, f.name) is not None else getattr(base, f.name))
                             for f in fields(self)})  # type: ignore[arg-type, return-value]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if v is None:
                continue
            out[f.name] = "off" if v is OFF else v.to_json() if isinstance(v, Threshold) else v
        return out


def _legacy_timing(legacy: Mapping[str, Any], has_timing: bool, where: str) -> str:
    for k, v in legacy.items():
        if not isinstance(v, bool):
            raise PolicyError(f"{where}.{k}: expected true or false, got {v!r}")
    if has_timing:
        raise PolicyError(f"{where}: give timing, not both timing and {', '.join(legacy)}")
    timing = next((k for k in LEGACY_TIMING if legacy.get(k)), "next")
    warnings.warn(f"{where}: {', '.join(f'{k} = {str(v).lower()}' for k, v in legacy.items())} is deprecated; "
                  f"write timing = {timing!r}", DeprecationWarning, stacklevel=5)
    return timing


DetectorPolicy = make_dataclass(
    "DetectorPolicy", [(k.name, Any, field(default=None)) for k in KNOBS], bases=(_DetectorPolicyBase,),
    frozen=True,
)
DetectorPolicy.__module__ = __name__
DetectorPolicy.__doc__ = _DetectorPolicyBase.__doc__
BUILTIN = DetectorPolicy(**{k.name: k.default for k in KNOBS if k.default is not None})


# --------------------------------------------------------------------------------------------
# resolved: a detector's policy in numbers
# --------------------------------------------------------------------------------------------
class _ResolvedBase:
    """A detector's policy in numbers (``inf`` = tier off). Fields: ``name``, one float per tier,
    the other knobs, ``red_line``."""

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
        return min(self.correct, self.escalate, self.block)  # type: ignore[attr-defined]

    @property
    def immediate(self) -> bool:
        """The flagged step is re-run corrected (``timing`` ``immediate`` or ``rewind``)."""
        return self.timing in ("immediate", "rewind")  # type: ignore[attr-defined]

    @property
    def rewind(self) -> bool:
        return self.timing == "rewind"  # type: ignore[attr-defined]

    @property
    def regenerate(self) -> bool:
        return self.timing == "regenerate"  # type: ignore[attr-defined]


# positional order kept from before the table (name, tiers, corrector, dose, patience, refusal_text,
# red_line); the later knobs are keyword fields with their built-in defaults
_POSITIONAL = ("corrector", "dose", "patience", "refusal_text")
Resolved = make_dataclass(
    "Resolved",
    [("name", str), *[(t, float) for t in TIERS], *[(k, Any) for k in _POSITIONAL], ("red_line", bool),
     *[(k.name, Any, field(default=k.default)) for k in KNOBS if not k.threshold and k.name not in _POSITIONAL]],
    bases=(_ResolvedBase,), frozen=True,
)
Resolved.__module__ = __name__
Resolved.__doc__ = _ResolvedBase.__doc__


# --------------------------------------------------------------------------------------------
# documentation
# --------------------------------------------------------------------------------------------
def knobs_markdown() -> str:
    """The knob and timing tables, as committed in ``detectors/POLICY.md``."""
    lines = [
        "# Policy knobs",
        "",
        "Generated from `detectors.policy_knobs.KNOBS` by",
        "`python -c \"import detectors.policy_knobs as k; print(k.knobs_markdown(), end='')\" > detectors/POLICY.md`;",
        "do not edit by hand. Each knob may be set in `[defaults]` (every detector) or `[detectors.NAME]`.",
        "Thresholds are a finite number, `\"threshold\"`, `\"threshold + X\"`, `\"threshold - X\"`,",
        "`\"threshold * X\"` or `\"off\"`; `\"threshold\"` is the detector's calibrated threshold of the statistic",
        "the Guard compares.",
        "",
        "| knob | default | meaning |",
        "|---|---|---|",
        *[f"| `{k.name}` | `{k.toml}` | {k.doc} |" for k in KNOBS],
        "",
        "## Timing (`timing = ...`)",
        "",
        "| timing | what happens when a correction starts at step `t` |",
        "|---|---|",
        *[f"| `{t}` | {d} |" for t, d in TIMINGS.items()],
        "",
    ]
    return "\n".join(lines)
