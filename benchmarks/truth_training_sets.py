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

Run: python benchmarks/truth_training_sets.py [--model M] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from probe.bench_data import TRUTH_TEST, TRUTH_TRAIN, cap_rows, default_datasets_dir  # noqa: E402
from truth_prompt_formats import hooks_for  # noqa: E402

from circuits import capture, load_model  # noqa: E402
from detectors.training import default_cache_dir  # noqa: E402
from probe.datasets import load_dataset  # noqa: E402

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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--rows", type=int, default=400, help="rows per set (CounterFact: 1000)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    model = load_model(args.model)
    hooks, root = hooks_for(model.n_layers), default_datasets_dir()
    sets = {}
    for rel in TRUTH_TRAIN + TRUTH_TEST + EXTRA:
        ds = cap_rows(load_dataset(root / rel), 1000 if "counterfact" in rel else args.rows, 0)
        acts = capture(model, list(ds.items), hooks, select="last", batch_size=32, cache_dir=default_cache_dir() / "acts")
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
        print(h, {k: round(v, 3) for k, v in res["hooks"][h].items() if k.startswith("mean")}, flush=True)
    res["best"] = {k: max(r[f"mean_{k}"] for r in res["hooks"].values()) for k in ("base", "wide", "loto")}
    print("best over hooks (an upper bound):", {k: round(v, 3) for k, v in res["best"].items()})
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
