"""detectors: calibrated Detector artifacts, the Guard around generation, policies, routing, CLI.

Names are imported on first use (see :mod:`circuits.lazy_exports`).
"""

from __future__ import annotations

from circuits.lazy_exports import lazy_exports

_EXPORTS = {
    "AuditLog": "detectors.audit",
    "ConditionalDetector": "detectors.conditional",
    "train_deception_mixture": "detectors.deception_mixture",
    "Detector": "detectors.detector",
    "EscalationContext": "detectors.guard",
    "Guard": "detectors.guard",
    "GuardOutput": "detectors.guard",
    "Decision": "detectors.policy",
    "Policy": "detectors.policy",
    "PolicyError": "detectors.policy",
    "Router": "detectors.router",
    "TrainingConfig": "detectors.train_config",
    "train_detector": "detectors.training",
    "retrain": "detectors.training",
    "recalibrate": "detectors.calibration",
    "register_detector_kind": "detectors.kinds",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
