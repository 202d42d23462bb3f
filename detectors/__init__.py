"""detectors: calibrated Detector artifacts, the Guard around generation, policies, routing, CLI."""

from detectors.audit import AuditLog
from detectors.conditional import ConditionalDetector
from detectors.deception_mixture import train_deception_mixture
from detectors.detector import Detector
from detectors.guard import EscalationContext, Guard, GuardOutput
from detectors.policy import Decision, Policy, PolicyError
from detectors.router import Router

__all__ = [
    "AuditLog",
    "ConditionalDetector",
    "Decision",
    "Detector",
    "EscalationContext",
    "Guard",
    "GuardOutput",
    "Policy",
    "PolicyError",
    "Router",
    "train_deception_mixture",
]
