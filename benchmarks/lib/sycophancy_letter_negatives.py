"""Can the A/B-letter sycophancy detector learn to stay quiet outside A/B answers? (issue 3)

The detector of the ``sycophancy_rewind_correction`` config (conditional probe, letter read with the state
that chose it) was trained on A/B letters only. At log-odds 0 it flags some token in most ordinary
answers, so a Guard that acts on it takes back about one token per benign text. This benchmark adds
benign rows read *the way a Guard reads them* (the prompt state bound at the last prompt token,
each generated token scored against it: ``prompt_last`` + ``decode_each``) to the training part, and
measures the trade:

- A/B ranking: validation AUROC (the generate file's held-out questions) and CAA *test* AUROC;
- how often it fires on benign answers it never saw: the share of the 200 shipped control answers
  with any token above log-odds 0, and the share of all their tokens.

Negative rows come from the shipped ``benign_negatives`` instructions (the model's own answers),
disjoint from the control set, ``per_answer`` tokens from each answer (a random subset).
Hook: the one the rewind benchmark chose (``blocks.22``). Probe settings are the detector's defaults.

Config: ``benchmarks/configs/sycophancy_letter_negatives.toml`` (the letters file the rewind benchmark wrote).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from benchmarks.lib.steering_eval import caa_test_items
from benchmarks.registry import analysis
from benchmarks.suite import Context, Result
from circuits.capture import capture_selections
from detectors.training import control_items, training_data, validation_indices
from probe.probes.conditional import ConditionalProbe


def guard_rows(model: Any, items: Sequence[Any], hook: str, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """``[prompt state | token state]`` for every token a Guard scores while generating each item's
    response, and the item index of each row."""
    s = capture_selections(model, items, hook, ["prompt_last", "decode_each"], cache_dir=cache / "acts")
    each = s["decode_each"]
    return np.hstack([s["prompt_last"][hook][each.index], each[hook]]), each.index


def letter_rows(model: Any, items: Sequence[Any], hook: str, cache: Path) -> np.ndarray:
    """``[state that chose the letter | letter state]``, as the detector is trained."""
    s = capture_selections(model, items, hook, ["before_last", "last"], cache_dir=cache / "acts")
    return np.hstack([s["before_last"][hook], s["last"][hook]])


@analysis({"letters": "{repo}/benchmarks/results/sycophancy_rewind_correction/generate_letters.jsonl",
           "caa_test": "{datasets}/caa/test/sycophancy/test_dataset_ab.json", "hook": "blocks.22.hook_resid_post",
           "per_answer": [4, 16, "all"], "rows": None, "n_negatives": 200, "n_control": 200, "threads": 2})
def run_sycophancy_letter_negatives(ctx: Context) -> Result:
    """The letter probe refitted with ``per_answer`` benign tokens per answer added as negatives (0 first)."""
    p = ctx.p
    t0 = time.time()
    torch.set_num_threads(p.threads)
    model, cache, hook = ctx.model, ctx.cache, p.hook
    ds = training_data("sycophancy", [p.letters], 0)
    if p.rows is not None:  # the first rows of the letters file only
        ds = ds.subset(np.arange(p.rows))
    X, y = letter_rows(model, ds.items, hook, cache), np.asarray(ds.labels)
    va = validation_indices(ds)
    tr = np.setdiff1d(np.arange(len(y)), va)
    test = caa_test_items(p.caa_test)
    t_items = [[{"role": "user", "content": it["question"]}, {"role": "assistant", "content": "(" + L}] for it in test for L in "AB"]
    XT, yt = letter_rows(model, t_items, hook, cache), np.array([int(L == it["syc"]) for it in test for L in "AB"])
    negs = control_items(model, p.n_negatives, cache / "completions", source="benign_negatives")
    NX, nidx = guard_rows(model, negs, hook, cache)
    ctrl = control_items(model, p.n_control, cache / "completions")
    CX, cidx = guard_rows(model, ctrl, hook, cache)
    rng = np.random.default_rng(0)
    rows = []
    for per in ["0", *[str(x) for x in p.per_answer]]:
        k = len(NX) if per == "all" else int(per)
        keep = np.concatenate([rng.permutation(np.flatnonzero(nidx == i))[:k] for i in range(len(negs))]).astype(int)
        Xa, ya = np.vstack([X[tr], NX[keep]]), np.concatenate([y[tr], np.zeros(len(keep), int)])
        probe = ConditionalProbe().fit(Xa, ya)
        cs = probe.decision_function(CX)
        r = {"negatives_per_answer": per, "n_negative_rows": int(len(keep)),
             "val_auroc": float(roc_auc_score(y[va], probe.decision_function(X[va]))),
             "caa_test_auroc": float(roc_auc_score(yt, probe.decision_function(XT))),
             "caa_test_flagged": float(np.mean(probe.decision_function(XT) > 0)),
             "control_answers_with_a_flag": float(np.mean([(cs[cidx == i] > 0).any() for i in range(len(ctrl))])),
             "control_tokens_flagged": float(np.mean(cs > 0))}
        rows.append(r)
        ctx.log(json.dumps(r))
    res = {"command": ctx.command,
           "model": {"id": model.model_id, "fingerprint": model.fingerprint}, "hook": hook,
           "n_train_rows": int(len(tr)), "n_control_answers": len(ctrl), "rows": rows, "seconds": round(time.time() - t0, 1)}
    figures = {f"per_answer={r['negatives_per_answer']}": {k: r[k] for k in ("caa_test_auroc", "control_answers_with_a_flag")}
               for r in rows}
    return Result(figures=figures, data=res, tables={"negatives per benign answer": rows})
