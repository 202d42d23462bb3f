"""Does more varied training data make a truth probe carry over to unseen topics?

The probe benchmark trains the truth suite on two topics (cities, Spanish-English translations and
their negations) and tests on 10 sets of other topics. This compares, at each hook, the mean AUROC
over those 10 sets (label 1 = false; bare statement read at its last token; logistic regression on
standardised activations) of probes trained on:

* ``base``: the truth suite's training sets;
* ``wide``: those plus six more sets of other topics (common claims, CounterFact, and the
  conjunctions / disjunctions of the two training topics);
* ``loto``: leave one topic out, the protocol of "Truth is Universal": each test set is scored
  by a probe trained on every other set here whose topic differs (affirmative and negated
  versions of a topic are left out together).

The hook is not chosen on held-out data here, so the best row is an upper bound.

Configs: ``benchmarks/configs/truth_training_sets.toml``, ``truth_training_sets_gemma.toml``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from benchmarks.lib.probes.data import TRUTH_TEST, TRUTH_TRAIN, cap_rows
from benchmarks.lib.truth_prompt_formats import hooks_for
from benchmarks.registry import analysis
from benchmarks.suite import Context, Result
from circuits import capture
from probe.datasets import load_dataset

EXTRA = ("geometry_of_truth/common_claim_true_false.csv", "geometry_of_truth/counterfact_true_false.csv",
         "truth_is_universal/cities_conj.csv", "truth_is_universal/cities_disj.csv",
         "truth_is_universal/sp_en_trans_conj.csv", "truth_is_universal/sp_en_trans_disj.csv")
TOPICS = ("cities", "sp_en_trans", "animal_class", "element_symb", "inventors", "facts")


def topic(rel: str) -> str:
    """A set's topic: negations, conjunctions and disjunctions share their base set's topic."""
    stem = Path(rel).stem.removeprefix("neg_")
    return next((t for t in TOPICS if stem.startswith(t)), stem)


def fit_eval(sets: dict, train: list[str], test: list[str], hook: str, C: float = 0.1) -> dict[str, float]:
    X = np.concatenate([sets[k][0][hook] for k in train]).astype(np.float64)
    y = np.concatenate([sets[k][1] for k in train])
    mu, sd = X.mean(0), X.std(0) + 1e-6
    lr = LogisticRegression(C=C, max_iter=3000).fit((X - mu) / sd, y)
    return {Path(k).stem: float(roc_auc_score(sets[k][1], lr.decision_function((sets[k][0][hook] - mu) / sd))) for k in test}


@analysis({"rows": 400, "counterfact_rows": 1000, "hooks": []})
def run_truth_training_sets(ctx: Context) -> Result:
    """Base, wide and leave-one-topic-out training at each hook (``hooks`` empty: the truth benchmarks' depths)."""
    args, model = ctx.p, ctx.model
    hooks, root = list(args.hooks) or hooks_for(model.n_layers), ctx.datasets
    sets = {}
    for rel in TRUTH_TRAIN + TRUTH_TEST + EXTRA:
        ds = cap_rows(load_dataset(root / rel), args.counterfact_rows if "counterfact" in rel else args.rows, 0)
        acts = capture(model, list(ds.items), hooks, select="last", batch_size=32, cache_dir=ctx.cache / "acts")
        sets[rel] = (acts.acts, np.asarray(ds.labels))
    everything = TRUTH_TRAIN + TRUTH_TEST + EXTRA
    res: dict = {"model": model.model_id, "hooks": {}}
    for h in hooks:
        loto: dict[str, float] = {}
        for k in TRUTH_TEST:
            loto |= fit_eval(sets, [r for r in everything if topic(r) != topic(k)], [k], h)
        row = {"base": fit_eval(sets, list(TRUTH_TRAIN), list(TRUTH_TEST), h),
               "wide": fit_eval(sets, list(TRUTH_TRAIN + EXTRA), list(TRUTH_TEST), h), "loto": loto}
        res["hooks"][h] = {f"mean_{k}": float(np.mean(list(v.values()))) for k, v in row.items()} | row
        ctx.log(f"{h} { {k: round(v, 3) for k, v in res['hooks'][h].items() if k.startswith('mean')} }")
    res["best"] = {k: max(r[f"mean_{k}"] for r in res["hooks"].values()) for k in ("base", "wide", "loto")}

    return Result(figures={"best_over_hooks": res["best"]}, data=res,
                  tables={"mean AUROC on the unseen sets by hook": [{"hook": h, **{k: v for k, v in r.items() if k.startswith("mean")}}
                                                                    for h, r in res["hooks"].items()]},
                  notes=["best_over_hooks picks the hook on the test sets themselves: an upper bound."])
