"""What training on benign negatives does to a deployed detector: recall at its calibrated threshold,
AUROC, and the false-positive rate on benign chats it never saw.

For each detector setup the detector is trained twice, with ``negatives=None`` (the recipe or file
alone) and ``negatives="benign"`` (plus the model's own answers to the 200 shipped benign-negatives
instructions, training part only). Both are calibrated on the same shipped benign control chats
(200 other instructions, never trained on). Reported:

* ``val_auroc`` / ``val_recall_at_threshold``: the held-out part of the training data, at the
  deployed threshold;
* the out-of-distribution evaluation set (deception: the built-in role-play lies; sycophancy: the
  CAA A/B test set): AUROC, recall of positives and false-positive rate of negatives at the threshold;
* an independent benign check: the model's own greedy answers (64 tokens) to Stanford Alpaca's
  175 seed tasks (``../shared/datasets``), never used for training or calibration: the share whose
  item score exceeds the threshold, and the share on which the Guard's running mean exceeds the
  stream threshold.


Config: ``benchmarks/configs/benign_negatives.toml``.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from benchmarks.lib.benign import alpaca_chats
from benchmarks.registry import analysis
from benchmarks.suite import Context, Result
from detectors import Detector
from probe.datasets import load_dataset, recipe
from probe.metrics import auroc, running_mean_peak


def at_threshold(y: np.ndarray, s: np.ndarray, thr: float) -> dict[str, float]:
    return {"auroc": auroc(y, s), "recall": float(np.mean(s[y == 1] > thr)), "fpr": float(np.mean(s[y == 0] > thr))}


def benign_rates(model, det: Detector, chats) -> dict[str, float]:
    """Share of benign chats whose item score exceeds the threshold, and whose running mean exceeds the stream threshold."""
    out = {"item_fpr": float(np.mean(det.score(model, chats) > det.threshold))}
    if det.stream_threshold is not None:
        per = det.token_scores(model, chats)
        peaks = [running_mean_peak(s[1:], det.stream_warmup) for s in per if len(s) > 1]
        out["stream_fpr"] = float(np.mean(np.array(peaks) > det.stream_threshold))
    return out


def run_setup(ctx: Context, name: str, train_kw: dict, ood, alpaca) -> dict:
    """One detector setup trained without and with the benign negatives."""
    model, res = ctx.model, {}
    for variant, neg in (("none", None), ("benign", "benign")):
        t0 = time.time()
        det = Detector.train(model=model, negatives=neg, **train_kw)
        m = det.metrics
        s = det.score(model, ood.items)
        res[variant] = {
            "hook": det.hooks[0], "n_negatives": m["n_negatives"], "threshold": det.threshold,
            "val_auroc": m["val_auroc"], "val_recall_at_threshold": m["val_recall_at_threshold"],
            "control_fpr": m["control_fpr"], "ood": at_threshold(np.asarray(ood.labels), s, det.threshold),
            "alpaca": benign_rates(model, det, alpaca), "seconds": round(time.time() - t0, 1),
        }
        ctx.log(f"{name} {variant} {json.dumps(res[variant])}")
    return res


@analysis({"n_alpaca": 175, "max_new_tokens": 64, "caa_file": True, "setups": ["deception", "sycophancy"],
           "seed_tasks": "{datasets}/alpaca_benign/stanford_alpaca/seed_tasks.jsonl",
           "caa_test": "{datasets}/caa/test/sycophancy/test_dataset_ab.json",
           "caa_generate": "{datasets}/caa/generate/sycophancy/generate_dataset.json",
           "caa_hooks": [f"blocks.{i}.hook_resid_post" for i in range(14, 24, 2)]})
def run_benign_negatives(ctx: Context) -> Result:
    """Each setup with and without benign negatives; ``caa_file``: also the conditional sycophancy
    detector trained on CAA's generate file (at ``caa_hooks``)."""
    p, model = ctx.p, ctx.model
    alpaca = alpaca_chats(model, p.seed_tasks, p.n_alpaca, p.max_new_tokens, ctx.cache)
    caa_test = load_dataset(p.caa_test)
    res: dict[str, Any] = {"model": model.model_id, "n_alpaca": len(alpaca), "alpaca_max_new_tokens": p.max_new_tokens,
                           "ood_sets": {"deception": "recipe:roleplay_lies", "sycophancy": "caa test A/B"}}
    ood = {"deception": recipe("roleplay_lies"), "sycophancy": caa_test}
    for b in p.setups:
        res[b] = run_setup(ctx, b, {"behaviour": b}, ood[b], alpaca)
    if p.caa_file:
        gen = load_dataset(p.caa_generate)
        res["sycophancy_conditional_caa_generate"] = run_setup(
            ctx, "sycophancy_conditional", {"behaviour": "sycophancy", "data": gen, "method": "conditional",
                                            "layer": p.caa_hooks},
            caa_test, alpaca)
    setups = [k for k in res if isinstance(res[k], dict) and "none" in res[k]]
    figures = {k: {v: {"val_recall_at_threshold": res[k][v]["val_recall_at_threshold"],
                       "alpaca_item_fpr": res[k][v]["alpaca"]["item_fpr"], "ood_auroc": res[k][v]["ood"]["auroc"]}
                   for v in ("none", "benign")} for k in setups}
    table = [{"setup": k, "negatives": v, "hook": r["hook"], "n_negatives": r["n_negatives"], "val_auroc": r["val_auroc"],
              "recall@thr (held out)": r["val_recall_at_threshold"], "control FPR": r["control_fpr"],
              "OOD AUROC": r["ood"]["auroc"], "OOD recall": r["ood"]["recall"], "OOD FPR": r["ood"]["fpr"],
              "Alpaca item FPR": r["alpaca"]["item_fpr"], "Alpaca stream FPR": r["alpaca"].get("stream_fpr")}
             for k in setups for v, r in res[k].items()]
    return Result(figures=figures, data=res, tables={f"with and without benign negatives (n Alpaca = {len(alpaca)})": table})
