"""SAE-feature probes beside the dense logistic probe, on the same splits.

Training: the built-in deception recipe (instructed / false-statement / concealment chats), split
70/30 by group (a fact's honest and dishonest answers stay on one side). In distribution: the 30%.
Transfer: every role-play set the project has (roleplay_lies, _2 .. _7), never trained on.

Both probes read the SAE's hook from one capture (bf16 autocast, as the SAE's training data) of every response token: the dense probe the
mean activation (``response_mean``), the SAE probe the mean of the SAE codes over the same tokens.
SAE probe: k latents (k in 1, 4, 16, 64) ranked on the training rows, L1 logistic head (C=1); and every latent
under the dense probe's own estimator (``SAE all latents``: the same L2 logistic, fitted on the pooled codes), which
separates "the SAE loses the signal" from "a handful of latents cannot carry it"; and the dense estimator on the
SAE's reconstruction and on its error (``x - x_hat``), which says which part carries the signal.
AUROC with a 95% stratified-bootstrap CI, recall at 1% FPR (in-sample threshold on each set's negatives).

Run: python benchmarks/sae_probe.py --sae circuits/data/saes/smollm2-135m-instruct/blocks.16.hook_resid_post --out benchmarks/results/sae/sae_probe.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from circuits import capture, load_model
from circuits.sae import load_sae
from probe.datasets import recipe
from probe.metrics import auroc, bootstrap_auroc_ci, recall_at_fpr
from probe.probes import make_probe
from probe.sae_probe import K_GRID, SAEFeatureProbe

SETS = ["roleplay_lies"] + [f"roleplay_lies_{i}" for i in range(2, 8)]


def pooled(model, sae, items, cache):
    with torch.autocast("cpu", torch.bfloat16):  # as the SAE's training data was captured (~5x faster on this CPU)
        acts = capture(model, items, sae.hook, select="response_each", cache_dir=cache, progress=True)
    X = acts[sae.hook]
    codes = sae.encode(torch.from_numpy(X)).float().numpy()
    dense = np.stack([X[acts.index == i].mean(0) for i in range(len(items))]).astype(np.float64)
    sparse = np.stack([codes[acts.index == i].mean(0) for i in range(len(items))]).astype(np.float64)
    return dense, sparse


def row(name, y, s):
    lo, hi = bootstrap_auroc_ci(y, s, n_boot=1000)
    return {"set": name, "auroc": auroc(y, s), "ci95": [lo, hi], "recall_at_1pct_fpr": recall_at_fpr(y, s, 0.01), "n": int(len(y))}


def explain_flags(model, sae, dense, sets, n=20, k=5):
    """The dense probe as a detector (threshold: 1% FPR on the in-distribution negatives); on the
    role-play lies it flags, explain in SAE features and zero the top-5 vs 5 random active latents."""
    from detectors import Detector
    from detectors.explain import explain
    from probe.metrics import threshold_at_fpr

    Dn, _, yn = sets["in distribution (recipe, 30% held out)"]
    thr = threshold_at_fpr(dense.decision_function(Dn[yn == 0]), 0.01, confidence=None)
    det = Detector.from_linear("deception-dense", model, sae.hook, dense.coef_, bias=float(dense.intercept_), threshold=thr)
    d = recipe("roleplay_lies")
    s = det.score(model, d.items)
    flagged = [i for i in np.argsort(-s) if s[i] > thr and d.labels[i] == 1][:n]
    ex = explain(model, det, [d.items[i] for i in flagged], [sae], causal_k=k, components=False)
    top = np.array([e["causal"]["drop_top"] for e in ex])
    rnd = np.array([e["causal"]["drop_random"] for e in ex])
    err = np.array([e["error_share"] for e in ex])
    out = {"threshold": thr, "n_flagged": len(ex), "mean_drop_top5": float(top.mean()), "mean_drop_random5": float(rnd.mean()),
           "ratio": float(top.mean() / rnd.mean()) if rnd.mean() else float("inf"),
           "ci95_drop_top5": [float(top.mean() - 1.96 * top.std(ddof=1) / np.sqrt(len(top))), float(top.mean() + 1.96 * top.std(ddof=1) / np.sqrt(len(top)))] if len(top) > 1 else None,
           "median_error_share": float(np.median(err)), "mean_score": float(np.mean([e["score"] for e in ex])),
           "items": [{"score": e["score"], "drop_top5": e["causal"]["drop_top"], "drop_random5": e["causal"]["drop_random"],
                      "error_share": e["error_share"], "top_features": [f["id"] for f in e["features"][:5]]} for e in ex]}
    print(f"causal check on {len(ex)} flagged role-play lies: zeroing top-5 drops the score {out['mean_drop_top5']:.3f}, "
          f"5 random active {out['mean_drop_random5']:.3f} (ratio {out['ratio']:.2f}); median error share {out['median_error_share']:.2f}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sae", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--cache", default=str(Path.home() / ".cache/coalign/acts_bf16"))  # the cache key does not record autocast
    ap.add_argument("--no-causal", action="store_true")
    ap.add_argument("--n-groups", type=int, default=0, help="use a seeded subset of this many recipe groups (0: all)")
    ap.add_argument("--sets", default=",".join(SETS), help="comma-separated transfer sets")
    ap.add_argument("--n-causal", type=int, default=20)
    args = ap.parse_args()
    t0 = time.time()
    model = load_model()
    sae = load_sae(args.sae, model)
    data = recipe("deception")
    groups = np.array([e.group for e in data.examples])
    uniq = np.unique(groups)
    rng = np.random.default_rng(0)
    if args.n_groups:
        keep_groups = set(rng.choice(uniq, size=min(args.n_groups, len(uniq)), replace=False).tolist())
        data = data.subset([i for i, g in enumerate(groups) if g in keep_groups]) if hasattr(data, "subset") else data
        groups = np.array([e.group for e in data.examples])
        uniq = np.unique(groups)
    test_groups = set(rng.choice(uniq, size=int(0.3 * len(uniq)), replace=False).tolist())
    te = np.array([g in test_groups for g in groups])
    y = np.asarray(data.labels)
    D, S = pooled(model, sae, data.items, args.cache)
    probes = {"dense logistic": ("dense", make_probe("logistic").fit(D[~te], y[~te]))}
    for k in K_GRID:
        probes[f"SAE k={k}"] = ("sae", SAEFeatureProbe(k=k).fit(S[~te], y[~te]))
    probes["SAE all latents"] = ("sae", make_probe("logistic").fit(S[~te], y[~te]))
    # where the signal lives: decoding is affine, so the mean reconstruction is decode(mean code) and the mean
    # SAE error is the mean activation minus it -- the dense estimator on each part
    W, b = (t.detach().float().numpy().astype(np.float64) for t in (sae.W_dec, sae.b_dec))
    parts = {"recon": lambda Dn, Sn: Sn @ W + b, "error": lambda Dn, Sn: Dn - (Sn @ W + b), "dense": lambda Dn, Sn: Dn,
             "sae": lambda Dn, Sn: Sn}
    probes["dense on SAE reconstruction"] = ("recon", make_probe("logistic").fit(parts["recon"](D, S)[~te], y[~te]))
    probes["dense on SAE error"] = ("error", make_probe("logistic").fit(parts["error"](D, S)[~te], y[~te]))
    sets = {"in distribution (recipe, 30% held out)": (D[te], S[te], y[te])}
    for name in [x for x in args.sets.split(",") if x]:
        d = recipe(name)
        Dn, Sn = pooled(model, sae, d.items, args.cache)
        sets[name] = (Dn, Sn, np.asarray(d.labels))
    results = []
    for pname, (kind, p) in probes.items():
        for sname, (Dn, Sn, yn) in sets.items():
            results.append({"probe": pname, **row(sname, yn, p.decision_function(parts[kind](Dn, Sn)))})
            r = results[-1]
            print(f"{pname:28s} {sname:40s} AUROC {r['auroc']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] "
                  f"recall@1%FPR {r['recall_at_1pct_fpr']:.2f} n={r['n']}", flush=True)
    causal = explain_flags(model, sae, probes["dense logistic"][1], sets, n=args.n_causal) if not args.no_causal else None
    feats = {f"SAE k={k}": probes[f"SAE k={k}"][1].features_.tolist() for k in (1, 4, 16)}
    out = {"sae": args.sae, "sae_fingerprint": sae.fingerprint, "hook": sae.hook, "n_train": int((~te).sum()),
           "results": results, "sae_features": feats, "causal": causal, "seconds": round(time.time() - t0, 1)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
