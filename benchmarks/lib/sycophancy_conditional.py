"""Sycophancy on CAA's A/B test set with the conditional (prompt x response) probe.

Trains on the first N rows of CAA's *generate* split (a user-supplied file, as a researcher would
pass with ``--data``), chooses the hook and the PCA size on a held-out part of that split (pairs
kept together), and only then scores the untouched CAA *test* split, once. Compares with a
linear probe selected the same way.

Config: ``benchmarks/configs/sycophancy_conditional.toml``.
"""

from __future__ import annotations

import json

import numpy as np

from benchmarks.registry import analysis
from benchmarks.suite import Context, Result
from circuits import capture_selections
from probe.activation_set import ActivationSet
from probe.datasets import load_dataset
from probe.metrics import (
    auroc,
    bootstrap_auroc_ci,
    calibration_report,
    threshold_at_fpr,
)
from probe.probes import make_probe
from probe.trainer import split_indices

HOOKS = [f"blocks.{i}.hook_resid_post" for i in range(14, 24, 2)]
CANDIDATES = [("conditional", {"n_components": k}) for k in (64, 96)] + [("logistic", {})]


def both_selections(model, ds, cache, hooks=HOOKS):
    # one forward pass fills the cache for both selections
    capture_selections(model, ds.items, hooks, ["response_mean", "prompt_last"], batch_size=8, cache_dir=cache, progress=True)
    resp = ActivationSet.from_dataset(model, ds, hooks, select="response_mean", batch_size=8, cache_dir=cache, progress=True)
    ctx = ActivationSet.from_dataset(model, ds, hooks, select="prompt_last", batch_size=8, cache_dir=cache, progress=True)
    return resp, ctx


def features(method, resp, ctx, h):
    return np.hstack([ctx.X[h], resp.X[h]]) if method == "conditional" else resp.X[h]


@analysis({"rows": 1000, "hooks": HOOKS, "n_components": [64, 96], "caa_generate": "{datasets}/caa/generate/sycophancy/generate_dataset.json", "caa_test": "{datasets}/caa/test/sycophancy/test_dataset_ab.json"})
def run_sycophancy_conditional(ctx: Context) -> Result:
    """Hook and PCA size chosen on the generate split's validation part, then the CAA test split once."""
    prm, model = ctx.p, ctx.model
    cache = str(ctx.cache / "acts")
    gen = load_dataset(prm.caa_generate)
    gen = gen.subset(np.arange(2 * prm.rows))
    test = load_dataset(prm.caa_test)
    g_resp, g_ctx = both_selections(model, gen, cache, prm.hooks)
    t_resp, t_ctx = both_selections(model, test, cache, prm.hooks)
    fit, val = split_indices(g_resp.y, g_resp.groups, 0.25, 0)
    results = []
    for method, params in [("conditional", {"n_components": k}) for k in prm.n_components] + [("logistic", {})]:
        best = None
        for h in prm.hooks:
            X = features(method, g_resp, g_ctx, h)
            p = make_probe(method, **params).fit(X[fit], g_resp.y[fit])
            s = p.decision_function(X[val])
            if best is None or auroc(g_resp.y[val], s) > best[0]:
                best = (auroc(g_resp.y[val], s), h, p, s)
        val_auc, h, p, s_val = best
        thr = threshold_at_fpr(s_val[g_resp.y[val] == 0], 0.01)
        s_test = p.decision_function(features(method, t_resp, t_ctx, h))
        rep = calibration_report(test.labels, s_test, thr)
        results.append({"method": method, **params, "hook": h, "val_auroc": val_auc, "test_auroc": rep["auroc"],
                        "test_auroc_ci95": bootstrap_auroc_ci(test.labels, s_test), "recall_at_1pct_val_fpr": rep["recall_at_threshold"],
                        "fpr_at_threshold": rep["fpr_at_threshold"]})
        ctx.log(json.dumps(results[-1], default=float))
    chosen = max((r for r in results if r["method"] == "conditional"), key=lambda r: r["val_auroc"])
    ctx.log(f"conditional probe chosen on validation: {chosen['hook']} k={chosen['n_components']} -> CAA test AUROC {chosen['test_auroc']:.3f}")
    data = json.loads(json.dumps({"rows": prm.rows, "results": results, "chosen": chosen}, default=float))
    lin = next(r for r in data["results"] if r["method"] == "logistic")
    figures = {"conditional_test_auroc": data["chosen"]["test_auroc"], "conditional_ci95": data["chosen"]["test_auroc_ci95"],
               "logistic_test_auroc": lin["test_auroc"], "n_test": len(test)}
    return Result(figures=figures, data=data, tables={"probes (chosen on validation)": data["results"]})
