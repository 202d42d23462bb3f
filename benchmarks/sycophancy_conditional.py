"""Sycophancy on CAA's A/B test set with the conditional (prompt x response) probe.

Trains on the first N rows of CAA's *generate* split (a user-supplied file, as a researcher would
pass with ``--data``), chooses the hook and the PCA size on a held-out part of that split (pairs
kept together), and only then scores the untouched CAA *test* split, once. Compares with a
linear probe selected the same way.

Run: python benchmarks/sycophancy_conditional.py [--rows 1000] [--cache DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from circuits import capture_selections, load_model
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

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "caa"
HOOKS = [f"blocks.{i}.hook_resid_post" for i in range(14, 24, 2)]
CANDIDATES = [("conditional", {"n_components": k}) for k in (64, 96)] + [("logistic", {})]


def both_selections(model, ds, cache):
    # one forward pass fills the cache for both selections
    capture_selections(model, ds.items, HOOKS, ["response_mean", "prompt_last"], batch_size=8, cache_dir=cache, progress=True)
    resp = ActivationSet.from_dataset(model, ds, HOOKS, select="response_mean", batch_size=8, cache_dir=cache, progress=True)
    ctx = ActivationSet.from_dataset(model, ds, HOOKS, select="prompt_last", batch_size=8, cache_dir=cache, progress=True)
    return resp, ctx


def features(method, resp, ctx, h):
    return np.hstack([ctx.X[h], resp.X[h]]) if method == "conditional" else resp.X[h]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1000, help="rows (pairs) of the generate split used")
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "coalign" / "acts"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    model = load_model()
    gen = load_dataset(SHARED / "generate" / "sycophancy" / "generate_dataset.json")
    gen = gen.subset(np.arange(2 * args.rows))
    test = load_dataset(SHARED / "test" / "sycophancy" / "test_dataset_ab.json")
    g_resp, g_ctx = both_selections(model, gen, args.cache)
    t_resp, t_ctx = both_selections(model, test, args.cache)
    fit, val = split_indices(g_resp.y, g_resp.groups, 0.25, 0)
    results = []
    for method, params in CANDIDATES:
        best = None
        for h in HOOKS:
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
        print(json.dumps(results[-1], default=float), flush=True)
    chosen = max((r for r in results if r["method"] == "conditional"), key=lambda r: r["val_auroc"])
    print(f"conditional probe chosen on validation: {chosen['hook']} k={chosen['n_components']} -> CAA test AUROC {chosen['test_auroc']:.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": args.rows, "results": results, "chosen": chosen}, indent=2, default=float))


if __name__ == "__main__":
    main()
