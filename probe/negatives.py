"""Benign training negatives: which probes can take them, and which behaviours use them by default.

Extra label-0 rows (the model's own answers to everyday instructions) teach a probe what ordinary
chats look like, so its threshold, calibrated on other benign chats, does not sit above most
positives. Measured on SmolLM2 (benchmarks/README.md, "Benign training negatives"): they help deception and
hurt sycophancy, hence the per-behaviour default.
"""

from probe.probes import PROBES, tags_of


def negative_methods() -> tuple[str, ...]:
    """Registered probes that accept extra unpaired negatives (their tags' ``unpaired_negatives``)."""
    return tuple(m for m in PROBES if tags_of(m).unpaired_negatives)


#: the built-ins that accept them (LAT and CCS need pairs, TTPD needs polarity); see negative_methods()
NEGATIVE_METHODS = negative_methods()

#: what ``negatives="auto"`` means per behaviour (absent: none). Measured with
#: benchmarks/benign_negatives.py: deception recall at the deployed threshold 0.04 -> 0.96 with 1.1%
#: false positives on Alpaca tasks; for sycophancy that rate rose instead (8% -> 22%).
DEFAULT_NEGATIVES = {"deception": "benign"}
