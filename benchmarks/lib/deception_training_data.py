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


Config: ``benchmarks/configs/deception_training_data.toml`` (the setups, mixtures and evaluation sets).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.registry import analysis
from benchmarks.suite import Context, Result
from detectors import Detector
from detectors.deception_mixture import FLOOR, RULE, choose_weight, held_out_families
from probe.datasets import recipe
from probe.metrics import auroc, bootstrap_auroc_ci, calibration_report

MIX_RULE = RULE.format(floor=FLOOR)


def evaluate(model, det: Detector, name: str) -> dict:
    """AUROC with a 95% bootstrap CI, and recall / FPR at the deployed threshold, on a built-in set."""
    ds = recipe(name)
    scores = np.asarray(det.score(model, ds.items))
    rep = calibration_report(ds.labels, scores, det.threshold)
    lo, hi = bootstrap_auroc_ci(ds.labels, scores)
    return rep | {"auroc_ci": [lo, hi]}


def _line(name: str, ev: dict[str, dict]) -> str:
    return f"{name}: " + " | ".join(
        f"{n.split('/')[-1]} {e['auroc']:.3f} [{e['auroc_ci'][0]:.2f}-{e['auroc_ci'][1]:.2f}] "
        f"rec {e['recall_at_threshold']:.2f} fpr {e['fpr_at_threshold']:.2f}" for n, e in ev.items())


@analysis({"setups": {}, "mixes": {}, "eval_sets": []})
def run_deception_training_data(ctx: Context) -> Result:
    """Train each setup (``{name: {data: [...], negatives: "benign"}}``; an absent key is the
    ``Detector.train`` default of None), fold each mixture (``{name: [first, second]}``, weight on the
    second by the shipped rule) and score every one on ``eval_sets``."""
    p, model = ctx.p, ctx.model
    results: dict[str, Any] = {}
    dets: dict[str, Detector] = {}
    for setup, kw in p.setups.items():
        det = Detector.train("deception", model, data=kw.get("data"), negatives=kw.get("negatives"))
        m = det.metrics
        row = {"hook": det.hooks[0], "id": det.id, "threshold": det.threshold, "val_auroc": m["val_auroc"],
               "val_recall_at_threshold": m["val_recall_at_threshold"], "n_train": m["n_train"],
               "n_negatives": m["n_negatives"], "eval": {n: evaluate(model, det, n) for n in p.eval_sets}}
        results[setup] = row
        dets[setup] = det
        ctx.log(_line(f"{setup} ({det.hooks[0]}, val {m['val_auroc']:.3f})", row["eval"]))
    val = held_out_families()
    for mix_name, parts in p.mixes.items():
        w, table = choose_weight(model, dets[parts[0]], dets[parts[1]])
        mix = Detector.combine([dets[k] for k in parts], model, weights=[1 - w, w], name=mix_name)
        results[mix_name] = {"hooks": mix.hooks, "id": mix.id, "threshold": mix.threshold, "of": list(parts), "weight": w,
                             "rule": MIX_RULE, "selection": table,
                             "val_auroc": {f: auroc(ds.labels, mix.score(model, ds.items)) for f, ds in val.items()},
                             "eval": {n: evaluate(model, mix, n) for n in p.eval_sets}}
        ctx.log(_line(f"{mix_name} ({parts[1]} weight {w})", results[mix_name]["eval"]))
    data = {"model": model.model_id, "fingerprint": model.fingerprint, "setups": p.setups,
            "mixtures": {"of": p.mixes, "rule": MIX_RULE}, "results": results}
    figures = {name: {n.split("/")[-1]: r["eval"][n]["auroc"] for n in p.eval_sets} for name, r in results.items()}
    table = [{"training data": name, "layer": ", ".join(r.get("hooks") or [r.get("hook", "")]),
              **{n.split("/")[-1]: f"{e['auroc']:.3f} ({e['auroc_ci'][0]:.2f}–{e['auroc_ci'][1]:.2f})" for n, e in r["eval"].items()}}
             for name, r in results.items()]
    rec = [{"training data": name, **{n.split("/")[-1]: f"{e['recall_at_threshold']:.2f}/{e['fpr_at_threshold']:.2f}"
                                      for n, e in r["eval"].items()}} for name, r in results.items()]
    return Result(figures=figures, data=data, tables={"AUROC (95% bootstrap CI)": table,
                                                      "recall / FPR at the deployed threshold": rec})
