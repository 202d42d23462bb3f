"""Can the A/B-letter sycophancy detector learn to stay quiet outside A/B answers? (issue 3)

The detector of ``sycophancy_rewind_correction.py`` (conditional probe, letter read with the state
that chose it) was trained on A/B letters only. At log-odds 0 it flags some token in most ordinary
answers, so a Guard that acts on it takes back about one token per benign text. This script adds
benign rows read *the way a Guard reads them* (the prompt state bound at the last prompt token,
each generated token scored against it: ``prompt_last`` + ``decode_each``) to the training part, and
measures the trade:

- A/B ranking: validation AUROC (the generate file's held-out questions) and CAA *test* AUROC;
- how often it fires on benign answers it never saw: the share of the 200 shipped control answers
  with any token above log-odds 0, and the share of all their tokens.

Negative rows come from the shipped ``benign_negatives`` instructions (the model's own answers),
disjoint from the control set, ``--per-answer`` tokens from each answer (a random subset).
Hook: the one the rewind benchmark chose (``blocks.22``). Probe settings are the detector's defaults.

Run::

    python benchmarks/sycophancy_letter_negatives.py --letters benchmarks/results/sycophancy_rewind_correction/generate_letters.jsonl --out benchmarks/results/sycophancy_letter_negatives.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).parent))

from correction import caa_test_items  # noqa: E402

from circuits import load_model  # noqa: E402
from circuits.capture import capture_selections  # noqa: E402
from detectors.training import (  # noqa: E402
    control_items,
    default_cache_dir,
    training_data,
    validation_indices,
)
from probe.probes.conditional import ConditionalProbe  # noqa: E402


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


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--letters", required=True, help="the chat JSONL that sycophancy_rewind_correction.py writes")
    ap.add_argument("--out", required=True, help="results JSON")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--hook", default="blocks.22.hook_resid_post")
    ap.add_argument("--per-answer", default="4,16,all", help="negative tokens kept per benign answer")
    args = ap.parse_args(argv)
    t0 = time.time()
    torch.set_num_threads(2)
    model, cache, hook = load_model(args.model), default_cache_dir(), args.hook
    ds = training_data("sycophancy", [args.letters], 0)
    X, y = letter_rows(model, ds.items, hook, cache), np.asarray(ds.labels)
    va = validation_indices(ds)
    tr = np.setdiff1d(np.arange(len(y)), va)
    test = caa_test_items()
    t_items = [[{"role": "user", "content": it["question"]}, {"role": "assistant", "content": "(" + L}] for it in test for L in "AB"]
    XT, yt = letter_rows(model, t_items, hook, cache), np.array([int(L == it["syc"]) for it in test for L in "AB"])
    negs = control_items(model, 200, cache / "completions", source="benign_negatives")
    NX, nidx = guard_rows(model, negs, hook, cache)
    ctrl = control_items(model, 200, cache / "completions")
    CX, cidx = guard_rows(model, ctrl, hook, cache)
    rng = np.random.default_rng(0)
    rows = []
    for per in ["0", *args.per_answer.split(",")]:
        k = len(NX) if per == "all" else int(per)
        keep = np.concatenate([rng.permutation(np.flatnonzero(nidx == i))[:k] for i in range(len(negs))]).astype(int)
        Xa, ya = np.vstack([X[tr], NX[keep]]), np.concatenate([y[tr], np.zeros(len(keep), int)])
        p = ConditionalProbe().fit(Xa, ya)
        cs = p.decision_function(CX)
        r = {"negatives_per_answer": per, "n_negative_rows": int(len(keep)),
             "val_auroc": float(roc_auc_score(y[va], p.decision_function(X[va]))),
             "caa_test_auroc": float(roc_auc_score(yt, p.decision_function(XT))),
             "caa_test_flagged": float(np.mean(p.decision_function(XT) > 0)),
             "control_answers_with_a_flag": float(np.mean([(cs[cidx == i] > 0).any() for i in range(len(ctrl))])),
             "control_tokens_flagged": float(np.mean(cs > 0))}
        rows.append(r)
        print(json.dumps(r), flush=True)
    res = {"command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
           "model": {"id": model.model_id, "fingerprint": model.fingerprint}, "hook": hook,
           "n_train_rows": int(len(tr)), "n_control_answers": len(ctrl), "rows": rows, "seconds": round(time.time() - t0, 1)}
    Path(args.out).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
