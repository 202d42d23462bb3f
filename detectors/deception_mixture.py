"""The deception detector that transfers: the default recipe detector folded with a concealment one.

Instructed pairs teach "asked to deceive" (same answer, different instruction); concealment pairs
teach a response that hides what its context says (same context, different answer), which is what
a role-play lie is. Neither does both (benchmarks/README.md, "Deception: training data and transfer"), so this
trains one of each and folds them with :func:`detectors.ensemble.combine_detectors`. The weight on
the concealment part is the largest on a 0.05 grid for which the default detector's held-out
instructed and false-statement rows both keep AUROC >= ``floor``; no role-play data is used.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from circuits import HookedModel
from circuits.errors import InputError
from detectors.detector import Detector
from detectors.control import control_dataset, default_cache_dir
from detectors.training import validation_indices
from probe.datasets import LabelledDataset, recipe
from probe.metrics import auroc

CONCEALMENT_DATA = ("recipe:deception/concealment", "recipe:deception/concealment_2")
WEIGHT_GRID = tuple(round(0.05 * i, 2) for i in range(21))
FLOOR = 0.95
RULE = "largest weight on the concealment part keeping held-out instructed and false-statement AUROC >= {floor}"


def held_out_families(test_fraction: float = 0.2, seed: int = 0) -> dict[str, LabelledDataset]:
    """The rows of the instructed and false-statement families that ``Detector.train("deception")``
    holds out (the same split: pairs kept together, same seed)."""
    ds = recipe("deception", seed=seed)
    va = validation_indices(ds, test_fraction, seed)
    family = np.array([e.source.split(":")[1] for e in ds.examples])
    return {f: ds.subset(va[family[va] == f"deception/{f}"], name=f"{f} (held out)") for f in ("instructed", "false_statement")}


def choose_weight(model: HookedModel, base: Detector, concealment: Detector, floor: float = FLOOR,
                  control: Any = None, n_control: int = 200, cache_dir: str | os.PathLike | None = None,
                  seed: int = 0) -> tuple[float, list[dict[str, float]]]:
    """The mixing weight by the rule above, and the table it was read from. Scores are standardised
    on the benign control chats, as :func:`~detectors.ensemble.combine_detectors` standardises them."""
    cache = default_cache_dir() if cache_dir is None else cache_dir
    ctrl = control_dataset(model, control, n_control, cache).items
    stats = [(float(c.mean()), float(c.std()) or 1.0) for c in (d.score(model, ctrl) for d in (base, concealment))]
    held = held_out_families(seed=seed)
    z = {f: [(d.score(model, ds.items) - mu) / sd for d, (mu, sd) in zip((base, concealment), stats)] for f, ds in held.items()}
    table, chosen = [], 0.0
    for w in WEIGHT_GRID:
        row = {"weight": w, **{f: auroc(held[f].labels, (1 - w) * z[f][0] + w * z[f][1]) for f in held}}
        table.append(row)
        if min(row[f] for f in held) >= floor:
            chosen = w
    return chosen, table


def train_deception_mixture(model: HookedModel, floor: float = FLOOR, name: str = "deception_mixture",
                            concealment_data: tuple[str, ...] = CONCEALMENT_DATA, **train_kw: Any) -> Detector:
    """Train the default deception detector and a concealment detector, and fold them into one.

    Args:
        model: the hooked model.
        floor: held-out instructed and false-statement AUROC the mixture must keep.
        name: the folded detector's name.
        concealment_data: training data of the concealment part (no benign negatives: with them it
            flagged 32-55% of honest role-play answers).
        train_kw: passed to both :func:`~detectors.training.train_detector` calls (``layer``, ``fpr``,
            ``n_control``, ``control``, ``confidence``, ``cache_dir``, ``progress``, ``seed``);
            ``fpr``, ``confidence``, ``control``, ``n_control`` and ``cache_dir`` also calibrate the mixture.

    Returns:
        A :class:`Detector` (``probe_kind="ensemble"``); ``metrics`` add ``mixture_weight``,
        ``mixture_rule``, ``mixture_selection`` and ``held_out_auroc`` (per family).

    Example:
        >>> det = train_deception_mixture(model)   # mixture_2 of the README on SmolLM2
        >>> det.save("runs/deception-mixture")
    """
    for key in ("data", "negatives", "behaviour", "method", "select"):
        if key in train_kw:
            raise InputError(f"train_deception_mixture: {key!r} is fixed by the recipe (default deception detector + "
                             "concealment detector); train and combine your own detectors with Detector.combine instead")
    base = Detector.train("deception", model, **train_kw)
    concealment = Detector.train("deception", model, data=list(concealment_data), negatives=None, **train_kw)
    calib = {k: train_kw[k] for k in ("fpr", "confidence", "control", "n_control", "cache_dir") if k in train_kw}
    w, table = choose_weight(model, base, concealment, floor, calib.get("control"), calib.get("n_control", 200),
                             calib.get("cache_dir"), train_kw.get("seed", 0))
    mix = Detector.combine([base, concealment], model, weights=[1 - w, w], name=name, **calib)
    held = held_out_families(seed=train_kw.get("seed", 0))
    mix.metrics |= {
        "mixture_weight": w, "mixture_rule": RULE.format(floor=floor), "mixture_selection": table,
        "held_out_auroc": {f: auroc(ds.labels, mix.score(model, ds.items)) for f, ds in held.items()},
    }
    return mix
