"""Leave-one-family-out model selection for the deception probe.

For each method x C x hook, fit on two of the built-in recipe's three families (instructed,
false_statement, concealment) and score the third; the configuration with the best mean of those
three AUROCs is chosen, refitted on all three, and only then scored on the role-play lies.
(The role-play AUROC of every configuration is also written, for information; choosing by it
would be selection on the test set.)

Config: ``benchmarks/configs/deception_lofo.toml``.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import numpy as np

from benchmarks.registry import analysis
from benchmarks.suite import Context, Result
from probe.activation_set import ActivationSet
from probe.datasets import recipe
from probe.metrics import auroc
from probe.probes import make_probe

FAMILIES = ("instructed", "false_statement", "concealment")


@analysis({"layers": list(range(4, 28, 2)), "logistic_C": [0.001, 0.01, 0.1, 1.0], "other_methods": ["mass_mean", "mass_mean_cov"]})
def run_deception_lofo(ctx: Context) -> Result:
    """Every method x C x hook scored leave-one-family-out; the choice by the mean (and by the worst)
    of the three, with the role-play AUROC of every configuration for information."""
    p, model = ctx.p, ctx.model
    cache = str(ctx.cache / "acts")
    hooks = [f"blocks.{i}.hook_resid_post" for i in p.layers]
    fams = {f: recipe(f"deception/{f}") for f in FAMILIES}
    acts = {f: ActivationSet.from_dataset(model, d, hooks, select="response_mean", cache_dir=cache, progress=False) for f, d in fams.items()}
    rp = ActivationSet.from_dataset(model, recipe("roleplay_lies"), hooks, select="response_mean", cache_dir=cache, progress=False)
    cands = [("logistic", {"C": c}) for c in p.logistic_C] + [(m, {}) for m in p.other_methods]
    rows = []
    for (m, kw), h in itertools.product(cands, hooks):
        lofo = []
        for f in fams:
            tr = [g for g in fams if g != f]
            X = np.vstack([acts[g].X[h] for g in tr])
            y = np.concatenate([acts[g].y for g in tr])
            probe = make_probe(m, **kw).fit(X, y)
            lofo.append(auroc(acts[f].y, probe.decision_function(acts[f].X[h])))
        X = np.vstack([acts[g].X[h] for g in fams])
        y = np.concatenate([acts[g].y for g in fams])
        probe = make_probe(m, **kw).fit(X, y)
        r = auroc(rp.y, probe.decision_function(rp.X[h]))
        rows.append(dict(method=m, **kw, hook=h, lofo=lofo, lofo_mean=float(np.mean(lofo)), lofo_min=float(np.min(lofo)), roleplay=r))
        ctx.log(json.dumps(rows[-1]))
    by_mean = max(rows, key=lambda r: r["lofo_mean"])
    by_min = max(rows, key=lambda r: r["lofo_min"])
    figures: dict[str, Any] = {"chosen_by_lofo_mean": {k: by_mean[k] for k in ("method", "hook", "lofo_mean", "roleplay")},
                               "chosen_by_lofo_min": {k: by_min[k] for k in ("method", "hook", "lofo_min", "roleplay")}}
    return Result(figures=figures, data={"rows": rows, "n_roleplay": len(rp)})
