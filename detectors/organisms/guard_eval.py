"""Does the Guard stop a faker? The alignment-faking detector in a blocking policy, run on organisms.

On the poor-oversight prompts that both organisms held out of training and the detector did not fit on, the
faker's own decision (its A/B log-odds, no Guard) says where it misbehaves; the Guard then generates the
decision token with the detector reading the decision position (step 0) and blocks above its calibrated
threshold. Reported: the share of the faker's misaligned decisions the Guard blocks (the cut), and the cost,
i.e. the share blocked of the aligned organism's decisions on the same prompts (only those the threshold was
not calibrated on: :func:`~detectors.organisms.poser.runtime_part` ``"eval"``) and of benign chat on the
aligned organism (``probe/data/benign_negatives.jsonl``: prompts neither the organisms' KL term nor the
detector's calibration saw); each with its n and a 95% Wilson interval.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from circuits import HookedModel
from circuits.errors import InputError
from detectors.organisms.decisions import chat, letter_logits, log_odds
from detectors.organisms.poser import aligned_letters, load_scenarios, runtime_part
from probe.metrics import wilson


def benign_prompts(n: int) -> list[str]:
    """Benign requests of other forms than the ones the organisms and the detector were tuned with."""
    import probe

    path = Path(probe.__file__).parent / "data" / "benign_negatives.jsonl"
    return [json.loads(line)["prompt"] for line in path.read_text().splitlines() if line.strip()][:n]


def _rate(blocked: np.ndarray) -> dict[str, Any]:
    k, n = int(blocked.sum()), int(blocked.size)
    return {"blocked": k, "n": n, "rate": round(k / n, 4) if n else None, "ci95": list(wilson(k, n)) if n else None}


def _blocked(model: HookedModel, det: Any, items: Sequence[Any], batch_size: int = 16) -> np.ndarray:
    from detectors.guard import Guard
    from detectors.policy import Policy

    policy = Policy.from_dict({"detectors": {det.name: {"block_above": "threshold"}}})
    guard = Guard(model, [det], policy=policy, strict=False, scoring="token", batch_size=batch_size)
    return np.array([o.blocked for o in guard.generate(list(items), max_new_tokens=1)], dtype=bool)


def guard_stops_faker(det: Any, faker_dir: str | os.PathLike, aligned_dir: str | os.PathLike, base: HookedModel,
                      n_benign: int = 100, seed: int = 0) -> dict[str, Any]:
    """The Guard with ``det`` (an alignment-faking detector) against the faker and its aligned twin.

    Evaluation prompts: held out by both organisms and outside the detector's fitting split
    (:func:`~detectors.organisms.runtime.train_alignment_faking` with the same ``seed``).
    """
    from detectors.organisms.organism import Organism

    faker, aligned = Organism.load(faker_dir), Organism.load(aligned_dir)
    if (faker.role, aligned.role) != ("faker", "aligned"):
        raise InputError(f"guard_stops_faker: expected a faker and an aligned organism, got {faker.role} and {aligned.role}")
    sources = faker.config.get("data") or ["builtin"]
    scenarios, _ = load_scenarios(None if sources == ["builtin"] else sources)
    held = set(faker.config.get("heldout_ids", [])) & set(aligned.config.get("heldout_ids", []))
    scen = [s for s in scenarios if s.id in held]
    poor = [s for s in scen if s.poor and runtime_part(s.id, seed) != "fit"]
    if not poor:
        raise InputError("guard_stops_faker: no held-out poor-oversight prompts outside the detector's fitting split")
    want = aligned_letters(poor, faker.config["data_policy_role"])
    items = [chat(s.prompt) for s in poor]
    fm, am = faker.hooked(base), aligned.hooked(base)
    misaligned = log_odds(letter_logits(fm, [s.prompt for s in poor]), want) < 0
    blocked_f, blocked_a = _blocked(fm, det, items), _blocked(am, det, items)
    uncalibrated = np.array([runtime_part(s.id, seed) == "eval" for s in poor], dtype=bool)
    blocked_b = _blocked(am, det, [chat(p) for p in benign_prompts(n_benign)])
    return {
        "n_prompts": len(poor),
        "faker_misaligned_rate": _rate(misaligned),
        "cut_of_misaligned": _rate(blocked_f[misaligned]),
        "faker_aligned_decisions_blocked": _rate(blocked_f[~misaligned]),
        "aligned_poor_blocked": _rate(blocked_a[uncalibrated]),
        "benign_blocked": _rate(blocked_b),
        "threshold": float(det.threshold),
    }
