"""Does the way a statement is shown to the model change how well its truth can be read out?

The probe benchmark reads a bare statement at its last token. RepE instead wraps it in a question
("Consider the amount of truthfulness ... The amount of truthfulness in the statement is") and
reads the last token of that; a chat model can also be asked directly. For each format, at each
hook, this reports:

* ``transfer_*``: probes trained on the truth suite's training sets (cities, sp_en_trans and their
  negations; all rows), mean AUROC over the 10 unseen sets (label 1 = false), for logistic
  regression, mass-mean (directions from per-set centred data) and the paper's two-feature TTPD
  read-out (projections on t_G and on a polarity direction, then logistic regression);
* ``in_set_ceiling``: the mean over the same 10 sets of a logistic probe's 5-fold cross-validated
  AUROC *within* each set: how well the model's own activations separate that set at all.

Configs: ``benchmarks/configs/truth_prompt_formats.toml``, ``truth_fewshot.toml``, ``truth_gemma.toml``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_score

from benchmarks.lib.probes.data import TRUTH_TEST, TRUTH_TRAIN, cap_rows
from benchmarks.registry import analysis
from benchmarks.suite import BenchmarkConfigError, Context, Result
from circuits import capture
from probe.datasets import load_dataset

FORMATS = {
    "bare": lambda s: s,
    "repe": lambda s: ("Consider the amount of truthfulness in the following statement:\n"
                       f"Statement: {s}\nThe amount of truthfulness in the statement is"),
    "chat": lambda s: [{"role": "user", "content": f"Is the following statement true or false?\n{s}"},
                       {"role": "assistant", "content": "The statement is"}],
}
# Labelled examples written for this benchmark (none from the statement sets), both polarities,
# before the statement: in-context examples of "true" and "false" may sharpen what is read out.
FEW_SHOT = ("Water boils at 100 degrees Celsius at sea level. This statement is TRUE.\n"
            "The Moon is larger than the Earth. This statement is FALSE.\n"
            "A triangle does not have four sides. This statement is TRUE.\n"
            "Fish do not live in water. This statement is FALSE.\n"
            "Seven is larger than three. This statement is TRUE.\n"
            "Paris is the capital of Germany. This statement is FALSE.\n")
FORMATS["fewshot"] = lambda s: f"{FEW_SHOT}{s} This statement is"
HOOKS = [f"blocks.{i}.hook_resid_post" for i in (12, 14, 16, 18, 20, 22, 24)]  # SmolLM2's 30 blocks


def hooks_for(n_layers: int) -> list[str]:
    """The same relative depths as ``HOOKS`` (12/30 to 24/30 of the blocks) for another model."""
    if n_layers == 30:
        return HOOKS
    depths = sorted({min(round(n_layers * i / 30), n_layers - 1) for i in (12, 14, 16, 18, 20, 22, 24)})
    return [f"blocks.{d}.hook_resid_post" for d in depths]


def _lr() -> LogisticRegression:
    return LogisticRegression(C=0.1, max_iter=5000)


def evaluate_hook(sets: dict, train: list[str], test: list[str], hook: str) -> dict[str, float]:
    X = {k: sets[k][0][hook].astype(np.float64) for k in sets}
    y = {k: sets[k][1] for k in sets}
    Xtr = np.concatenate([X[k] for k in train])
    ytr = np.concatenate([y[k] for k in train])
    Xc = np.concatenate([X[k] - X[k].mean(0) for k in train])
    pol = np.concatenate([np.full(len(y[k]), 0 if k.startswith("neg_") else 1) for k in train])

    def mean_auc(score) -> float:
        return float(np.mean([roc_auc_score(y[k], score(X[k])) for k in test]))

    lr = _lr().fit(Xtr, ytr)
    d = Xc[ytr == 1].mean(0) - Xc[ytr == 0].mean(0)
    tau, p = 2.0 * ytr - 1, 2.0 * pol - 1
    t_g = np.linalg.lstsq(np.column_stack([tau, tau * p]), Xc, rcond=None)[0][0]
    p_dir = _lr().fit(Xtr, pol).coef_[0]
    ttpd = LogisticRegression(max_iter=5000).fit(np.column_stack([Xtr @ t_g, Xtr @ p_dir]), ytr)
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    return {
        "transfer_logistic": mean_auc(lr.decision_function),
        "transfer_mass_mean": mean_auc(lambda A: A @ d),
        "transfer_ttpd_2d": mean_auc(lambda A: ttpd.decision_function(np.column_stack([A @ t_g, A @ p_dir]))),
        "in_set_ceiling": float(np.mean([cross_val_score(_lr(), X[k], y[k], cv=cv, scoring="roc_auc").mean() for k in test])),
    }


def _check(p: dict[str, Any]) -> None:
    bad = [f for f in p["formats"] if f not in FORMATS]
    if bad:
        raise BenchmarkConfigError(f"formats {bad} unknown (known: {list(FORMATS)})")


@analysis({"rows": 400, "formats": ["bare", "repe", "chat"], "hooks": []}, _check)
def run_truth_prompt_formats(ctx: Context) -> Result:
    """Per format and hook: transfer to the unseen statement sets and the in-set ceiling (``hooks`` empty: :func:`hooks_for`)."""
    p, model = ctx.p, ctx.model
    hooks = list(p.hooks) or hooks_for(model.n_layers)
    root = ctx.datasets
    train, test = [Path(r).stem for r in TRUTH_TRAIN], [Path(r).stem for r in TRUTH_TEST]
    res: dict = {"model": model.model_id, "rows_per_set": p.rows, "train_sets": train, "test_sets": test, "formats": {}}
    for fmt in p.formats:
        wrap = FORMATS[fmt]
        sets = {}
        for rel in TRUTH_TRAIN + TRUTH_TEST:
            ds = cap_rows(load_dataset(root / rel), p.rows, 0)
            acts = capture(model, [wrap(s) for s in ds.items], hooks, select="last", batch_size=32, cache_dir=ctx.cache / "acts")
            sets[Path(rel).stem] = (acts.acts, np.asarray(ds.labels))
        res["formats"][fmt] = {h: evaluate_hook(sets, train, test, h) for h in hooks}
        best = max(res["formats"][fmt].values(), key=lambda r: r["transfer_logistic"])
        ctx.log(f"{fmt} {json.dumps(best)}")
    figures = {fmt: {k: max(r[k] for r in by_hook.values()) for k in ("transfer_logistic", "transfer_ttpd_2d", "in_set_ceiling")}
               for fmt, by_hook in res["formats"].items()}
    table = [{"format": f, "hook": h, **r} for f, by_hook in res["formats"].items() for h, r in by_hook.items()]
    return Result(figures=figures, data=res, tables={"by format and hook (the figures are maxima over hooks: upper bounds)": table},
                  notes=["The headline figures are the best hook picked on the test sets themselves: upper bounds."])
