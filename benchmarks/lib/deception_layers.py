"""Does reading several layers help a deception detector transfer to role-play lies?

The default recipe detector and the concealment detector (both concealment parts, no negatives;
``concealment_all`` in the ``deception_training_data`` config) are trained at each layer of ``layers``
on their own, with the layer fixed (``Detector.train(..., layer=hook)``). Each is scored on the
held-out instructed and false-statement rows of the default recipe and on the role-play sets.

Then multi-layer mixtures: each side is an equal-weight ``Detector.combine`` of its per-layer
detectors (one read-out per hook, standardised on the benign control chats), and the two sides
are folded by the shipped mixture rule (``detectors.deception_mixture.choose_weight``: the largest
concealment weight keeping held-out instructed and false-statement AUROC >= 0.95). The single-layer
pair ``16 | 16`` is ``mixture_2`` of the README, for reference.

The mixture configurations were fixed, and tried on role-play sets 1-4, before ``roleplay_lies_5``
was first scored.

Config: ``benchmarks/configs/deception_layers.toml``.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from benchmarks.registry import analysis
from benchmarks.suite import BenchmarkConfigError, Context, Result
from detectors import Detector
from detectors.deception_mixture import (
    CONCEALMENT_DATA,
    FLOOR,
    RULE,
    choose_weight,
    held_out_families,
)
from probe.datasets import recipe
from probe.metrics import auroc

ROLEPLAY = ("roleplay_lies", "roleplay_lies_2", "roleplay_lies_3", "roleplay_lies_4", "roleplay_lies_5")
LAYERS = (8, 10, 12, 14, 16, 18, 20, 22)
# "base layers | concealment layers"
MIXES = ("16|16", "12,16,20|12,16,20", "16|12,16,20", "12,16,20|16", "14,16,18|14,16,18", "10,14,18,22|10,14,18,22")
SIDES = {"base": dict(negatives="auto"), "concealment": dict(data=list(CONCEALMENT_DATA), negatives=None)}


def hook(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_post"


def parse_mix(spec: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    base, conc = spec.split("|")
    return tuple(int(x) for x in base.split(",")), tuple(int(x) for x in conc.split(","))


def side(model: Any, dets: dict[tuple[str, int], Detector], kind: str, layers: Sequence[int]) -> Detector:
    """One layer's detector, or an equal-weight fold of several."""
    if len(layers) == 1:
        return dets[(kind, layers[0])]
    return Detector.combine([dets[(kind, L)] for L in layers], model, name=f"{kind}@{','.join(map(str, layers))}")


def _check(p: dict[str, Any]) -> None:
    for m in p["mixes"]:
        missing = set(sum(parse_mix(m), ())) - set(p["layers"])
        if missing:
            raise BenchmarkConfigError(f"mixes {m!r} uses layers {sorted(missing)} that layers does not train")


@analysis({"layers": list(LAYERS), "mixes": list(MIXES), "roleplay": list(ROLEPLAY)}, _check)
def run_deception_layers(ctx: Context) -> Result:
    """Per-layer detectors of both sides, then the multi-layer mixtures ``"base layers|concealment layers"``."""
    p, model = ctx.p, ctx.model
    layers, mixes = list(p.layers), list(p.mixes)
    t0 = time.perf_counter()
    evals = {**held_out_families(), **{name: recipe(name) for name in p.roleplay}}

    def scores(det: Detector) -> dict[str, float]:
        return {n: auroc(ds.labels, np.asarray(det.score(model, ds.items))) for n, ds in evals.items()}

    dets: dict[tuple[str, int], Detector] = {}
    per_layer: dict[str, dict[str, Any]] = {}
    for L in layers:
        for kind, kw in SIDES.items():
            det = Detector.train("deception", model, layer=hook(L), **kw)
            dets[(kind, L)] = det
            per_layer[f"{kind}@{L}"] = {"hook": hook(L), "id": det.id, "auroc": scores(det)}
            ctx.log(f"{kind:12s} {L:3d} " + " ".join(f"{n} {v:.3f}" for n, v in per_layer[f"{kind}@{L}"]["auroc"].items()))
    mixed: dict[str, dict[str, Any]] = {}
    for spec in mixes:
        bl, cl = parse_mix(spec)
        base, conc = side(model, dets, "base", bl), side(model, dets, "concealment", cl)
        w, table = choose_weight(model, base, conc)
        mix = Detector.combine([base, conc], model, weights=[1 - w, w], name=f"mixture {spec}")
        mixed[spec] = {"base_layers": bl, "concealment_layers": cl, "weight": w, "selection": table, "id": mix.id,
                       "hooks": mix.hooks, "auroc": scores(mix)}
        ctx.log(f"mixture {spec:28s} w {w:.2f} " + " ".join(f"{n} {v:.3f}" for n, v in mixed[spec]["auroc"].items()))
    out = {"model": model.model_id, "fingerprint": model.fingerprint, "seconds": round(time.perf_counter() - t0, 1),
           "rule": RULE.format(floor=FLOOR), "layers": layers, "per_layer": per_layer, "mixtures": mixed}
    rows = [{"detector": k, **v["auroc"]} for k, v in per_layer.items()] + [{"detector": f"mixture {k} (w {v['weight']:.2f})", **v["auroc"]}
                                                                           for k, v in mixed.items()]
    return Result(figures={f"mixture {k}": v["auroc"] for k, v in mixed.items()}, data=out, tables={"AUROC": rows})
