"""A request's policy overlay: it may only tighten the server's policy, never relax it.

The overlay is the keys of a policy file (``coalign.policy`` in the request body). It is merged on
top of the server's policy with :meth:`Policy.merge` (which already refuses to relax a red line)
and then compared detector by detector, in numbers: no tier threshold may rise or be switched off,
``patience`` may not grow, the failure mode may only become ``fail_closed``. Settings that are not
a matter of "more or less strict" (corrector, dose, positions, timing, refusal text) and the
escalate tier (which hands the decision to a person, whose "allow" could lift a block) stay the
operator's: an overlay naming them is refused rather than judged.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from detectors.policy import TIERS, Policy, PolicyError
from detectors.server.errors import ApiError

_TOP = {"version", "red_lines", "on_detector_error", "defaults", "detectors"}
_PER_DETECTOR = {"monitor_above", "correct_above", "block_above", "patience"}


def policy_thresholds(detectors: Sequence[Any], scoring: str = "calibrated") -> dict[str, float]:
    """What ``"threshold"`` means in a policy for each detector, as the Guard resolves it: the
    stream threshold of stream-calibrated mean detectors under calibrated scoring, else the
    item threshold (see :mod:`detectors.guard`)."""
    out = {}
    for d in detectors:
        mean = scoring == "calibrated" and bool(getattr(d, "streams_mean", False))
        out[str(d.name)] = float(d.stream_threshold if mean else d.threshold)
    return out


def _check_keys(overlay: Mapping[str, Any], names: Sequence[str]) -> None:
    bad = sorted(set(overlay) - _TOP)
    if bad:
        raise ApiError(403, f"coalign.policy: {bad[0]!r} is the operator's to set; a request may set {', '.join(sorted(_TOP))}",
                       "coalign.policy", "permission_error")
    tables = [("defaults", overlay.get("defaults") or {})]
    dets = overlay.get("detectors") or {}
    if not isinstance(dets, Mapping):
        raise ApiError(400, "coalign.policy.detectors must be an object of detector name -> settings", "coalign.policy")
    for name, t in dets.items():
        if name not in names:
            raise ApiError(400, f"coalign.policy.detectors: no detector {name!r} on this server (detectors: {', '.join(names)})",
                           "coalign.policy")
        tables.append((f"detectors.{name}", t or {}))
    for where, t in tables:
        if not isinstance(t, Mapping):
            raise ApiError(400, f"coalign.policy.{where} must be an object", "coalign.policy")
        bad = sorted(set(t) - _PER_DETECTOR)
        if bad:
            raise ApiError(403, f"coalign.policy.{where}.{bad[0]} is the operator's to set; a request may set "
                           f"{', '.join(sorted(_PER_DETECTOR))}", "coalign.policy", "permission_error")
    err = overlay.get("on_detector_error")
    if err is not None and err != "fail_closed":
        raise ApiError(403, f"coalign.policy.on_detector_error: a request may only ask for 'fail_closed', got {err!r:.30}",
                       "coalign.policy", "permission_error")


def tighten(server: Policy, overlay: Mapping[str, Any], thresholds: Mapping[str, float]) -> Policy:
    """The server policy with ``overlay`` on top; raises :class:`ApiError` (400 malformed, 403 a
    relaxation) naming the detector and tier."""
    names = list(thresholds)
    _check_keys(overlay, names)
    try:
        merged = server.merge(Policy.from_dict(overlay, source="request"))
    except PolicyError as e:
        status = 403 if "red line" in str(e) else 400
        raise ApiError(status, f"coalign.policy: {e}", "coalign.policy", "permission_error" if status == 403 else "invalid_request_error") from e
    if server.error_mode == "fail_closed" and merged.error_mode != "fail_closed":  # pragma: no cover - _check_keys
        raise ApiError(403, "coalign.policy: the failure mode cannot be relaxed", "coalign.policy", "permission_error")
    for name in names:
        try:
            old, new = server.resolve(name, thresholds[name]), merged.resolve(name, thresholds[name])
        except PolicyError as e:
            raise ApiError(400, f"coalign.policy: {e}", "coalign.policy") from e
        for tier in TIERS:
            o, n = old.threshold_of(tier), new.threshold_of(tier)
            if n > o:
                what = "switch off" if math.isinf(n) else f"raise from {o:.4g} to {n:.4g}"
                raise ApiError(403, f"coalign.policy would {what} detector {name!r}'s {tier} threshold; a request may only "
                               "tighten the server policy", "coalign.policy", "permission_error")
        if new.patience > old.patience:
            raise ApiError(403, f"coalign.policy would raise detector {name!r}'s patience from {old.patience} to {new.patience}; "
                           "a request may only tighten the server policy", "coalign.policy", "permission_error")
    return merged
