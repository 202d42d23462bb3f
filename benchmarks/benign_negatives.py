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

Run: python benchmarks/benign_negatives.py [--out benchmarks/results/benign_negatives.json] [--skip-caa-file]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from circuits import load_model
from circuits.generation import complete
from detectors import Detector
from detectors.training import default_cache_dir
from probe.datasets import load_dataset, recipe
from probe.metrics import auroc, running_mean_peak

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
SEED_TASKS = SHARED / "alpaca_benign" / "stanford_alpaca" / "seed_tasks.jsonl"
CAA = SHARED / "caa"
CAA_HOOKS = [f"blocks.{i}.hook_resid_post" for i in range(14, 24, 2)]


def alpaca_chats(model, n: int, max_new_tokens: int) -> list[list[dict[str, str]]]:
    rows = [json.loads(line) for line in SEED_TASKS.read_text().splitlines() if line.strip()][:n]
    prompts = []
    for r in rows:
        inp = (r.get("instances") or [{}])[0].get("input", "")
        prompts.append([{"role": "user", "content": r["instruction"] + (f"\n\n{inp}" if inp else "")}])
    answers = complete(model, prompts, max_new_tokens=max_new_tokens, cache_dir=default_cache_dir() / "completions")
    return [p + [{"role": "assistant", "content": a or "OK."}] for p, a in zip(prompts, answers)]


def at_threshold(y: np.ndarray, s: np.ndarray, thr: float) -> dict[str, float]:
    return {"auroc": auroc(y, s), "recall": float(np.mean(s[y == 1] > thr)), "fpr": float(np.mean(s[y == 0] > thr))}


def benign_rates(model, det: Detector, chats) -> dict[str, float]:
    out = {"item_fpr": float(np.mean(det.score(model, chats) > det.threshold))}
    if det.stream_threshold is not None:
        per = det.token_scores(model, chats)
        peaks = [running_mean_peak(s[1:], det.stream_warmup) for s in per if len(s) > 1]
        out["stream_fpr"] = float(np.mean(np.array(peaks) > det.stream_threshold))
    return out


def run_setup(model, name: str, train_kw: dict, ood, alpaca) -> dict:
    res = {}
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
        print(name, variant, json.dumps(res[variant]), flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--n-alpaca", type=int, default=175)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--skip-caa-file", action="store_true", help="skip the conditional detector trained on CAA generate")
    args = ap.parse_args()
    t0 = time.time()
    model = load_model()
    alpaca = alpaca_chats(model, args.n_alpaca, args.max_new_tokens)
    caa_test = load_dataset(CAA / "test" / "sycophancy" / "test_dataset_ab.json")
    res: dict = {"model": model.model_id, "n_alpaca": len(alpaca), "alpaca_max_new_tokens": args.max_new_tokens,
                 "ood_sets": {"deception": "recipe:roleplay_lies", "sycophancy": "caa test A/B"}}
    res["deception"] = run_setup(model, "deception", {"behaviour": "deception"}, recipe("roleplay_lies"), alpaca)
    res["sycophancy"] = run_setup(model, "sycophancy", {"behaviour": "sycophancy"}, caa_test, alpaca)
    if not args.skip_caa_file:
        gen = load_dataset(CAA / "generate" / "sycophancy" / "generate_dataset.json")
        res["sycophancy_conditional_caa_generate"] = run_setup(
            model, "sycophancy_conditional", {"behaviour": "sycophancy", "data": gen, "method": "conditional",
                                              "layer": CAA_HOOKS}, caa_test, alpaca)
    res["wall_s"] = round(time.time() - t0, 1)
    print(json.dumps(res, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
