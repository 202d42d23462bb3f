"""How often the Guard's policy fires on benign generations: token-by-token against the item
threshold, versus the running mean against the stream-calibrated threshold.

Detectors are calibrated on the shipped benign control chats; this measures on prompts they never
saw (Stanford Alpaca's 175 seed tasks, ``../shared/datasets``), generated under the Guard with a
monitor-only policy (the policy does not change the tokens, so one generation gives both rules).
It also reports, for the deception detector, how often each rule fires on the hand-written
role-play lies and their honest twins (fixed responses, scored as the Guard would score them).

Run: python benchmarks/guard_stream_calibration.py [--detector DIR ...] [--n 175] [--out FILE]
(without --detector it trains the demo's deception and sycophancy detectors).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np

from circuits import load_model
from detectors import Detector, Guard
from detectors.training import control_dataset, default_cache_dir
from probe.datasets import recipe
from probe.metrics import running_mean_peak

SEED_TASKS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "alpaca_benign" / "stanford_alpaca" / "seed_tasks.jsonl"


def benign_prompts(n: int) -> list[str]:
    rows = [json.loads(line) for line in SEED_TASKS.read_text().splitlines() if line.strip()]
    out = []
    for r in rows[:n]:
        inp = (r.get("instances") or [{}])[0].get("input", "")
        out.append(r["instruction"] + (f"\n\n{inp}" if inp else ""))
    return out


def fires(det: Detector, token_scores: np.ndarray, warmup: int, stream_threshold: float) -> dict[str, bool]:
    """Whether each rule would fire on one response's guard token scores (step 0 = last prompt token)."""
    s = np.asarray(token_scores, dtype=np.float64)
    return {"token": bool((s > det.threshold).any()),
            "running_mean": len(s) > 1 and running_mean_peak(s[1:], warmup) > stream_threshold}


def rates(flags: list[dict[str, bool]]) -> dict[str, float]:
    return {k: float(np.mean([f[k] for f in flags])) for k in flags[0]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--detector", action="append", default=[])
    ap.add_argument("--n", type=int, default=175)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--warmups", default="4,8,16", help="stream warm-ups to recalibrate and compare")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    t0 = time.time()
    model = load_model()
    if args.detector:
        dets = [Detector.load(p, model) for p in args.detector]
    else:
        dets = [Detector.train(b, model) for b in ("deception", "sycophancy")]
    for d in dets:
        if d.stream_threshold is None:
            raise SystemExit(f"detector {d.name!r} has no stream calibration; retrain it with this version")
    prompts = benign_prompts(args.n)
    outs = Guard(model, dets).generate(prompts, max_new_tokens=args.max_new_tokens, batch_size=8)
    control = control_dataset(model, None, 200, default_cache_dir()).items
    rp = recipe("roleplay_lies")
    y = np.asarray(rp.labels)
    res: dict = {"model": model.model_id, "n_prompts": len(prompts), "max_new_tokens": args.max_new_tokens, "detectors": {}}
    for d in dets:
        guard_fired = float(np.mean([any(a.kind == "monitor" and a.detector == d.name for a in o.actions) for o in outs]))
        entry: dict = {"threshold": d.threshold, "fpr_target": d.fpr,
                       "artifact": {"stream_threshold": d.stream_threshold, "stream_warmup": d.stream_warmup,
                                    "benign_fire_rate_guard_monitor_actions": guard_fired,
                                    "benign_fire_rate_offline": rates([fires(d, o.scores[d.name], d.stream_warmup, d.stream_threshold) for o in outs])["running_mean"]},
                       "by_warmup": []}
        per_rp = d.token_scores(model, rp.items) if d.behaviour == "deception" else None
        for w in [int(x) for x in args.warmups.split(",")]:
            probe_det = copy.deepcopy(d)
            thr = probe_det.calibrate_stream(model, control, warmup=w)
            row = {"warmup": w, "stream_threshold": thr, "benign_fire_rate": rates([fires(d, o.scores[d.name], w, thr) for o in outs])}
            if per_rp is not None:
                flags = [fires(d, s, w, thr) for s in per_rp]
                row["roleplay_fire_rate_lies"] = rates([f for f, t in zip(flags, y) if t == 1])
                row["roleplay_fire_rate_honest"] = rates([f for f, t in zip(flags, y) if t == 0])
            entry["by_warmup"].append(row)
        if per_rp is not None:
            item = d.score(model, rp.items)
            entry["roleplay_item_score_above_threshold"] = {"lies": float(np.mean(item[y == 1] > d.threshold)),
                                                             "honest": float(np.mean(item[y == 0] > d.threshold))}
        res["detectors"][d.name] = entry
        print(json.dumps({d.name: entry}, indent=1), flush=True)
    res["wall_s"] = time.time() - t0
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
