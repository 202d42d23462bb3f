"""The Guard's warning that the text it guards differs from what its detectors were calibrated on.

``Detector.score`` warns per batch (:func:`detectors.calibration.drift_warning`); a Guard sees one or a
few responses at a time, so it keeps the mean token score of each finished response (for detectors
with a mean read-out, whose item score is that mean) in a window of the last ``window`` responses per
detector and judges the window instead. It warns when a detector's window turns from plausible to
implausible, once per turn, so a serving loop is told without being flooded.
"""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np

from detectors.calibration import MIN_BATCH, drift_warning
from detectors.kinds import MEAN_SELECTIONS


class DriftMonitor:
    """Rolling windows of per-response mean scores, one per detector with a mean read-out and a stored
    calibration summary; ``observe`` returns the warning it raised, if any."""

    def __init__(self, names: Sequence[str], detectors: Sequence[Any], window: int = 50) -> None:
        self.detectors = {n: d for n, d in zip(names, detectors)
                          if getattr(d, "select", None) in MEAN_SELECTIONS and getattr(d, "metrics", {}).get("control_summary")}
        self.windows: dict[str, deque[float]] = {n: deque(maxlen=max(window, MIN_BATCH)) for n in self.detectors}
        self.drifting: dict[str, bool] = dict.fromkeys(self.detectors, False)

    def observe(self, name: str, token_scores: np.ndarray) -> str | None:
        """Add one finished response (its token scores; entry 0 reads the last prompt token and is skipped)."""
        if name not in self.detectors:
            return None
        s = np.asarray(token_scores, dtype=np.float64)[1:]
        s = s[np.isfinite(s)]
        if s.size == 0:
            return None
        self.windows[name].append(float(s.mean()))
        message = drift_warning(self.detectors[name], np.asarray(self.windows[name]))
        was, self.drifting[name] = self.drifting[name], message is not None
        if message is None or was:
            return None
        message = f"Guard, over its last {len(self.windows[name])} responses: {message}"
        warnings.warn(message, RuntimeWarning, stacklevel=4)
        return message
