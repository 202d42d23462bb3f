"""detectors: calibrated Detector artifacts, the Guard around generation, policies, routing, CLI."""

from detectors.detector import Detector

__all__ = ["Detector"]
