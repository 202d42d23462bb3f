"""How often the Guard's policy fires on benign generations: token-by-token against the item
threshold, versus the running mean against the stream-calibrated threshold.

Detectors are calibrated on the shipped benign control chats; this measures on prompts they never
saw (Stanford Alpaca's 175 seed tasks, ``../shared/datasets``), generated under the Guard with a
monitor-only policy (the policy does not change the tokens, so one generation gives both rules).
It also reports, for the deception detector, how often each rule fires on the hand-written
role-play lies and their honest twins (fixed responses, scored as the Guard would score them).


Config: ``benchmarks/configs/guard_stream_calibration.toml``.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np

from benchmarks.lib.benign import alpaca_prompts
from benchmarks.registry import analysis
from benchmarks.suite import BenchmarkConfigError, Context, Result
from detectors import Detector, Guard
from detectors.training import control_dataset
from probe.datasets import recipe
from probe.metrics import running_mean_peak


def fires(det: Detector, token_scores: np.ndarray, warmup: int, stream_threshold: float) -> dict[str, bool]:
    """Whether each rule would fire on one response's guard token scores (step 0 = last prompt token)."""
    s = np.asarray(token_scores, dtype=np.float64)
    return {"token": bool((s > det.threshold).any()),
            "running_mean": len(s) > 1 and running_mean_peak(s[1:], warmup) > stream_threshold}


def rates(flags: list[dict[str, bool]]) -> dict[str, float]:
    return {k: float(np.mean([f[k] for f in flags])) for k in flags[0]}


@analysis({"detectors": ["train:deception", "train:sycophancy"], "n": 175, "max_new_tokens": 64, "warmups": [4, 8, 16],
           "seed_tasks": "{datasets}/alpaca_benign/stanford_alpaca/seed_tasks.jsonl", "n_control": 200})
def run_guard_stream_calibration(ctx: Context) -> Result:
    """``detectors``: artifact folders, or ``train:BEHAVIOUR`` to train one with the defaults."""
    p, model = ctx.p, ctx.model
    dets = [ctx.detector(s) for s in p.detectors]
    for d in dets:
        if d.stream_threshold is None:
            raise BenchmarkConfigError(f"detector {d.name!r} has no stream calibration; retrain it with this version")
    prompts = alpaca_prompts(p.seed_tasks, p.n)
    outs = Guard(model, dets).generate(prompts, max_new_tokens=p.max_new_tokens, batch_size=8)
    control = control_dataset(model, None, p.n_control, ctx.cache).items
    rp = recipe("roleplay_lies")
    y = np.asarray(rp.labels)
    res: dict[str, Any] = {"model": model.model_id, "n_prompts": len(prompts), "max_new_tokens": p.max_new_tokens, "detectors": {}}
    for d in dets:
        guard_fired = float(np.mean([any(a.kind == "monitor" and a.detector == d.name for a in o.actions) for o in outs]))
        entry: dict = {"threshold": d.threshold, "fpr_target": d.fpr,
                       "artifact": {"stream_threshold": d.stream_threshold, "stream_warmup": d.stream_warmup,
                                    "benign_fire_rate_guard_monitor_actions": guard_fired,
                                    "benign_fire_rate_offline": rates([fires(d, o.scores[d.name], d.stream_warmup, d.stream_threshold) for o in outs])["running_mean"]},
                       "by_warmup": []}
        per_rp = d.token_scores(model, rp.items) if d.behaviour == "deception" else None
        for w in p.warmups:
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
        ctx.log(json.dumps({d.name: entry}))
    figures = {name: {"benign_fire_rate_running_mean": e["artifact"]["benign_fire_rate_offline"],
                      "benign_fire_rate_token": next((r["benign_fire_rate"]["token"] for r in e["by_warmup"]), None)}
               for name, e in res["detectors"].items()}
    table = [{"detector": name, "warm-up": r["warmup"], "stream threshold": r["stream_threshold"],
              "benign fire: token": r["benign_fire_rate"]["token"], "benign fire: running mean": r["benign_fire_rate"]["running_mean"],
              "role-play lies: running mean": (r.get("roleplay_fire_rate_lies") or {}).get("running_mean"),
              "role-play honest: running mean": (r.get("roleplay_fire_rate_honest") or {}).get("running_mean")}
             for name, e in res["detectors"].items() for r in e["by_warmup"]]
    return Result(figures=figures, data=res, tables={f"fire rates on {len(prompts)} benign generations": table})
