"""Which training data makes a deception detector transfer to role-play lies.

Four setups, fixed before the second role-play set (``roleplay_lies_2``) was scored for the
first time, all trained with the public API (``Detector.train``, layer chosen on its own
validation split, threshold on the shipped benign control chats):

* ``recipe``: the built-in deception recipe (instructed, false-statement and concealment
  families) with the benign training negatives, as ``coalign train deception`` does;
* ``recipe_no_negatives``: the same without the negatives;
* ``concealment``: only the ``deception/concealment`` family (someone in a role answers a
  question truthfully or deceptively; the context is the same in both), no negatives;
* ``concealment_negatives``: the same with the benign negatives.

Each is scored on: its own held-out validation part; the instructed and false-statement
families (held-out rows for the recipe setups are inside ``val_auroc``; for the concealment
setups the whole families are unseen); ``roleplay_lies`` (60 scenes; the set the
concealment setups were formed after looking at); and ``roleplay_lies_2`` (50 scenes written
later as a confirmation set). AUROC with a 95% bootstrap CI, and recall / false-positive rate
at the deployed threshold.

A fifth entry, ``mixture``, folds the ``recipe`` and ``concealment`` detectors into one
(``Detector.combine``: weighted sum of their control-standardised scores). The concealment weight
is chosen without looking at any role-play data: the largest weight on a 0.05 grid for which the
recipe detector's held-out instructed and false-statement rows both keep AUROC >= 0.95. The rule was
fixed before the mixture was scored on ``roleplay_lies_2``; a scratch sweep on ``roleplay_lies`` had
shown the trade-off (about 0.87-0.89 there at that floor).

``roleplay_lies_3`` (50 more scenes, written blind by a helper after all five entries were fixed)
was added to the evaluation sets last and scored once, with nothing changed afterwards.

Second round (fixed before ``roleplay_lies_4`` was first scored; sets 1-3 had been seen):

* ``concealment_all``: the concealment family plus ``deception/concealment_2`` (60 more templated
  scenarios, written by a helper with roles in other fields, without seeing any scores), no
  negatives;
* ``mixture_2``: ``recipe`` and ``concealment_all`` folded by the same rule as ``mixture``.

``roleplay_lies_4`` (50 more scenes, written blind by another helper at the same time) is
scored for every entry, once.

``roleplay_lies_5`` (50 more scenes in fields none of the other data use: maritime, museums,
music, childcare, auctions, waste, theme parks, architecture) was written blind by a helper in a
later session and committed before any detector was scored on it; every entry above is scored on
it once, unchanged.

Third round (fixed before ``roleplay_lies_6`` was first scored; sets 1-5 had been seen). On set 1
the detectors lose within scenes, not across them: ``mixture_2`` orders 83% of its honest/deceptive
pairs correctly against 98-100% on sets 2-5 (``coalign eval ... --data recipe:roleplay_lies``
reports ``pair_accuracy``). About 22 of set 1's 60 scenes are everyday life outside work (family,
partners, flatmates, school), a kind no concealment scenario covers (they are all people at work
hiding a fact), and 5 of the 10 pairs ``mixture_2`` gets wrong are among them: a hint, not a
finding. So, to add that kind to the training data and test it on a blind set of that kind:

* ``concealment_3parts``: both concealment parts plus ``deception/concealment_3`` (60 everyday-life
  scenarios in which the speaker hides their own misdeed, written blind by a helper), no negatives;
* ``mixture_3``: ``recipe`` and ``concealment_3parts`` folded by the same rule.

``roleplay_lies_6`` (50 everyday-life scenes of the same kind as set 1's failures, written blind by
another helper at the same time, without seeing set 1 or the new training part) is scored for every
entry, once.

``roleplay_lies_7`` (50 scenes written blind in free form: the briefs of sets 2-6 matched the two
answers' lengths and kept apologies and "honestly" out, this one lets them fall as they would, in
both classes) was committed before any detector was scored on it; nothing above was changed for it.

Run: python benchmarks/deception_training_data.py [--out benchmarks/results/deception_training_data.json]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any, Sequence

import numpy as np

from circuits import load_model
from detectors import Detector
from detectors.deception_mixture import (
    FLOOR,
    RULE,
    WEIGHT_GRID,
    choose_weight,
    held_out_families,
)
from probe.datasets import recipe
from probe.metrics import auroc, bootstrap_auroc_ci, calibration_report

SETUPS = {
    "recipe": dict(data=None, negatives="benign"),
    "recipe_no_negatives": dict(data=None, negatives=None),
    "concealment": dict(data=["recipe:deception/concealment"], negatives=None),
    "concealment_negatives": dict(data=["recipe:deception/concealment"], negatives="benign"),
    "concealment_all": dict(data=["recipe:deception/concealment", "recipe:deception/concealment_2"], negatives=None),
    "concealment_3parts": dict(data=["recipe:deception/concealment", "recipe:deception/concealment_2",
                                     "recipe:deception/concealment_3"], negatives=None),
}
EVAL_SETS = ("deception/instructed", "deception/false_statement", "roleplay_lies", "roleplay_lies_2", "roleplay_lies_3",
             "roleplay_lies_4", "roleplay_lies_5", "roleplay_lies_6", "roleplay_lies_7")
# mixture name -> the two setups folded together; the weight on the second is chosen by MIX_RULE
MIXES = {"mixture": ("recipe", "concealment"), "mixture_2": ("recipe", "concealment_all"),
         "mixture_3": ("recipe", "concealment_3parts")}
W_GRID = list(WEIGHT_GRID)
MIX_RULE = RULE.format(floor=FLOOR)


def evaluate(model, det: Detector, name: str) -> dict:
    ds = recipe(name)
    scores = np.asarray(det.score(model, ds.items))
    rep = calibration_report(ds.labels, scores, det.threshold)
    lo, hi = bootstrap_auroc_ci(ds.labels, scores)
    return rep | {"auroc_ci": [lo, hi]}


recipe_validation_sets = held_out_families


def choose_mixture(model, dets: dict[str, Detector], parts: tuple[str, str]) -> tuple[float, list[dict]]:
    """Apply MIX_RULE (:func:`detectors.deception_mixture.choose_weight`, as ``coalign train deception --mixture`` does)."""
    return choose_weight(model, dets[parts[0]], dets[parts[1]])


def main(argv: Sequence[str] | None = None, model: Any = None) -> dict[str, Any]:
    """Run the benchmark; ``model`` is for tests (a tiny model instead of ``--model``)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    args = ap.parse_args(argv)
    model = model if model is not None else load_model(args.model)
    t0 = time.perf_counter()
    results: dict[str, Any] = {}
    dets: dict[str, Detector] = {}
    for setup, kw in SETUPS.items():
        det = Detector.train("deception", model, **kw)
        m = det.metrics
        row = {"hook": det.hooks[0], "id": det.id, "threshold": det.threshold, "val_auroc": m["val_auroc"],
               "val_recall_at_threshold": m["val_recall_at_threshold"], "n_train": m["n_train"],
               "n_negatives": m["n_negatives"], "eval": {n: evaluate(model, det, n) for n in EVAL_SETS}}
        results[setup] = row
        ev = row["eval"]
        print(f"{setup:22s} {det.hooks[0]:26s} val {m['val_auroc']:.3f} | " + " | ".join(
            f"{n.split('/')[-1]} {ev[n]['auroc']:.3f} [{ev[n]['auroc_ci'][0]:.2f}-{ev[n]['auroc_ci'][1]:.2f}] "
            f"rec {ev[n]['recall_at_threshold']:.2f} fpr {ev[n]['fpr_at_threshold']:.2f}" for n in EVAL_SETS), flush=True)
        dets[setup] = det
    val = recipe_validation_sets()
    for mix_name, parts in MIXES.items():
        w, table = choose_mixture(model, dets, parts)
        mix = Detector.combine([dets[k] for k in parts], model, weights=[1 - w, w], name=mix_name)
        results[mix_name] = {"hooks": mix.hooks, "id": mix.id, "threshold": mix.threshold, "of": parts, "weight": w,
                             "rule": MIX_RULE, "selection": table,
                             "val_auroc": {f: auroc(ds.labels, mix.score(model, ds.items)) for f, ds in val.items()},
                             "eval": {n: evaluate(model, mix, n) for n in EVAL_SETS}}
        ev = results[mix_name]["eval"]
        print(f"{mix_name} ({parts[1]} weight {w})  val " + " ".join(f"{k} {v:.3f}" for k, v in results[mix_name]["val_auroc"].items())
              + " | " + " | ".join(f"{n.split('/')[-1]} {ev[n]['auroc']:.3f} [{ev[n]['auroc_ci'][0]:.2f}-{ev[n]['auroc_ci'][1]:.2f}] "
                                   f"rec {ev[n]['recall_at_threshold']:.2f} fpr {ev[n]['fpr_at_threshold']:.2f}" for n in EVAL_SETS), flush=True)
    out = {"model": model.model_id, "fingerprint": model.fingerprint, "seconds": round(time.perf_counter() - t0, 1),
           "setups": SETUPS, "mixtures": {"of": MIXES, "rule": MIX_RULE},
           "results": results}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
