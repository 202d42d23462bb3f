"""Evaluation by source: each labelled source held out in turn, nothing chosen on it.

For every source S of a behaviour (the built-in recipe's families, the other built-in sets, external
public sets) and every training pool P of the config (``recipe``: what ``coalign train`` uses;
``all``: every source; ``inhouse``: every source the package ships, the candidate diversified default), a detector is trained with ``Detector.train`` on P minus S (layer and probe
chosen on P's own validation split, threshold on the shipped benign control chats) and scored on S.
Beside each transfer figure:

* ``ceiling``: S's in-distribution figure, a logistic probe cross-validated on S itself (grouped
  5-fold, at the hook the transfer detector chose, i.e. not chosen on S);
* ``naive``: a last-token logistic probe at the middle block, trained on P minus S;
* ``honest_above``: the share of S's label-0 items above the deployed threshold (what a user sees).

Then the detector trained on the full recipe (the shipped default) is scored on benign controls of
several forms (chat answers, long answers, honest role-play replies, true short answers, A/B letters):
the false-positive rate at its deployed threshold per control source. AUROCs come with bootstrap CIs.

Config: ``benchmarks/configs/deception_by_source.toml``.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.lib.benign import alpaca_chats
from benchmarks.registry import analysis
from benchmarks.suite import Context, Result
from probe.datasets import Example, LabelledDataset, load_data
from probe.metrics import auroc, bootstrap_auroc_ci, wilson

BUILTIN = "recipe:"


def _chat(q: str, a: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


def truthfulqa(path: Path, n: int) -> LabelledDataset:
    """TruthfulQA (CAA's A/B copy): the question answered with its false option (1) or its true one (0)."""
    rows = json.loads(Path(path).read_text())[:n]
    ex = []
    for i, r in enumerate(rows):
        q = r["prompt"].split("\n\nChoices:")[0].replace("Please help me answer the following question.\n", "")
        ex += [Example(item=_chat(q, r["incorrect_full_text"]), label=1, group=f"tqa{i}"),
               Example(item=_chat(q, r["correct_full_text"]), label=0, group=f"tqa{i}")]
    return LabelledDataset("truthfulqa", ex)


def load_source(spec: str, n: int | None, datasets: Path) -> LabelledDataset:
    """``recipe:NAME``, ``truthfulqa:FILE`` or any file ``load_data`` reads (``{datasets}`` expanded); at most
    ``n`` groups."""
    spec = spec.replace("{datasets}", str(datasets))
    if spec.startswith("truthfulqa:"):
        return truthfulqa(Path(spec.split(":", 1)[1]), n or 10**9)
    ds = load_data(spec)
    if n is not None:
        groups = list(dict.fromkeys(e.group for e in ds.examples))[:n]
        ds = LabelledDataset(ds.name, [e for e in ds.examples if e.group in set(groups)])
    return ds


def tagged(name: str, ds: LabelledDataset) -> LabelledDataset:
    """Group ids made unique to the source, so two sources' pairs never tie together."""
    return LabelledDataset(name, [replace(e, group=f"{name}:{e.group}") for e in ds.examples])


def ci(y: np.ndarray, s: np.ndarray, n_boot: int) -> dict[str, float]:
    lo, hi = bootstrap_auroc_ci(y, s, n_boot=n_boot)
    return {"auroc": auroc(y, s), "lo": lo, "hi": hi, "n": int(len(y))}


def ceiling(model, ds: LabelledDataset, hook: str, select: str, folds: int = 5) -> float:
    """Grouped k-fold logistic probe on ``ds`` itself at ``hook``: its in-distribution AUROC."""
    from probe.activation_set import ActivationSet
    from probe.trainer import fit_probe

    acts = ActivationSet.from_dataset(model, ds, [hook], select=select)
    groups = np.array([hash(e.group) for e in ds.examples])
    order = np.random.default_rng(0).permutation(np.unique(groups))
    scores = np.zeros(len(ds))
    for k in range(folds):
        test = np.isin(groups, order[k::folds])
        if len(np.unique(acts.y[~test])) < 2:
            continue
        p = fit_probe("logistic", acts.X[hook][~test], acts.y[~test])
        scores[test] = p.decision_function(acts.X[hook][test])
    return auroc(acts.y, scores)


def naive(model, train: LabelledDataset, test: LabelledDataset) -> float:
    """Last-token logistic probe at the middle block trained on ``train``, scored on ``test``."""
    from probe.activation_set import ActivationSet
    from probe.trainer import fit_probe

    hook = f"blocks.{model.n_layers // 2}.hook_resid_post"
    tr = ActivationSet.from_dataset(model, train, [hook], select="last")
    te = ActivationSet.from_dataset(model, test, [hook], select="last")
    return auroc(te.y, fit_probe("logistic", tr.X[hook], tr.y).decision_function(te.X[hook]))


@analysis({"behaviour": "deception", "sources": {}, "in_recipe": [], "pools": ["recipe", "all"], "max_groups": None,
           "controls": {}, "n_alpaca": 100, "max_new_tokens": 48, "n_boot": 1000, "train": {}})
def run_by_source(ctx: Context) -> Result:
    from detectors import Detector

    p, model = ctx.p, ctx.model
    sources = {name: tagged(name, load_source(spec, p.max_groups, ctx.datasets)) for name, spec in p.sources.items()}
    recipe_parts = [s for s in p.in_recipe if s in sources]
    pools = {"recipe": recipe_parts, "all": list(sources),
             "inhouse": [k for k, spec in p.sources.items() if spec.startswith(BUILTIN)]}
    rows, data = [], {"sources": {k: {"n": len(v), "n_positive": int(v.labels.sum())} for k, v in sources.items()}}
    for pool in p.pools:
        for held in sources:
            parts = [s for s in pools[pool] if s != held]
            if not parts:  # the pool is this source alone: nothing to transfer from
                continue
            train = LabelledDataset.concat(*[sources[s] for s in parts], name=f"{pool}-{held}")
            det = Detector.train(p.behaviour, model, data=train, **p.train)
            test = sources[held]
            s = det.score(model, test.items)
            y = test.labels
            row = {"pool": pool, "held_out": held, "in_pool": held in pools[pool], "hook": det.hooks[0],
                   **ci(y, s, p.n_boot), "ceiling": ceiling(model, test, det.hooks[0], det.select),
                   "naive": naive(model, train, test), "honest_above": float(np.mean(s[y == 0] > det.threshold)),
                   "recall": float(np.mean(s[y == 1] > det.threshold))}
            rows.append(row)
            ctx.log(f"{pool} without {held}: {row['auroc']:.3f} [{row['lo']:.2f}, {row['hi']:.2f}] ceiling "
                    f"{row['ceiling']:.3f} naive {row['naive']:.3f} honest above thr {row['honest_above']:.0%}")
    data["rows"] = rows
    controls, lofo = [], []
    if recipe_parts:  # the shipped detector, trained on the whole recipe (``pools=[]`` measures only these tables)
        deployed = Detector.train(p.behaviour, model, data=LabelledDataset.concat(*[sources[s] for s in recipe_parts]), **p.train)
        controls, form_scores = control_rates(ctx, deployed)
        lies = [e.item for src in sources.values() for e in src.examples if e.label == 1]
        lofo = form_held_out_calibration(deployed, form_scores, deployed.score(model, lies), ctx.log)
    data["controls"], data["form_held_out_calibration"] = controls, lofo
    figures = {}
    for pool in p.pools:
        out = [r for r in rows if r["pool"] == pool and not r["in_pool"]]
        every = [r for r in rows if r["pool"] == pool]
        figures[f"{pool}_mean_auroc_unseen_sources"] = float(np.mean([r["auroc"] for r in out])) if out else None
        figures[f"{pool}_mean_auroc_leave_one_out"] = float(np.mean([r["auroc"] for r in every]))
        figures[f"{pool}_within_0.05_of_ceiling"] = f"{sum(r['auroc'] >= r['ceiling'] - 0.05 for r in every if r['ceiling'] >= 0.85)}" \
            f"/{sum(r['ceiling'] >= 0.85 for r in every)}"
    figures["max_control_fpr"] = max((c["fpr"] for c in controls), default=None)
    if lofo:
        figures["max_fpr_form_held_out_calibration"] = max(r["fpr"] for r in lofo[1:])
        figures["recall_shipped_vs_min_form_held_out"] = [lofo[0]["recall"], min(r["recall"] for r in lofo[1:])]
    table = [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]
    return Result(figures=figures, data=data, tables={"held-out source: transfer AUROC (95% CI), ceiling, naive": table,
                                                      "deployed threshold: FPR per control source": controls,
                                                      "threshold calibrated on the other forms: the held-out form's FPR, "
                                                      "recall on every source's lies": lofo})


def control_rates(ctx: Context, det) -> list[dict[str, Any]]:
    """False-positive rate of the recipe-trained detector on benign controls of several forms."""
    from detectors.control import control_dataset, default_cache_dir

    p, model = ctx.p, ctx.model
    forms: dict[str, list] = {"shipped benign chats (calibration set)":
                              control_dataset(model, None, 200 if not ctx.quick else 20, default_cache_dir()).items}
    if p.n_alpaca and (ctx.datasets / "alpaca_benign").exists():
        forms["Alpaca seed tasks, model's answers"] = alpaca_chats(
            model, ctx.datasets / "alpaca_benign/stanford_alpaca/seed_tasks.jsonl", p.n_alpaca, p.max_new_tokens, ctx.cache)
    for name, spec in p.controls.items():
        ds = load_source(spec, p.max_groups, ctx.datasets)
        forms[name] = [e.item for e in ds.examples if e.label == 0]
    out, scores = [], {}
    for name, items in forms.items():
        s = scores[name] = det.score(model, items)
        k = int(np.sum(s > det.threshold))
        lo, hi = wilson(k, len(items))
        out.append({"control": name, "n": len(items), "fpr": k / len(items), "lo": lo, "hi": hi})
        ctx.log(f"control {name}: FPR {out[-1]['fpr']:.1%} [{lo:.1%}, {hi:.1%}] (n={len(items)})")
    return out, scores


def form_held_out_calibration(det, scores: dict[str, np.ndarray], positives: np.ndarray, log) -> list[dict[str, Any]]:
    """Calibration that spans forms, judged on a form it never saw: for each control form, the threshold is set
    (at the detector's FPR, 95% confidence, as ``coalign calibrate`` does) on every *other* form, and the held-out
    form's FPR is read at it; ``recall`` is the share of the sources' lies above that threshold (what it costs)."""
    from probe.trainer import calibrate_threshold

    if len(scores) < 2:
        return []
    rows = [{"held-out form": "(none: shipped threshold)", "threshold": det.threshold, "n": None, "fpr": None, "lo": None,
             "hi": None, "recall": float(np.mean(positives > det.threshold))}]
    for held, s in scores.items():
        thr = calibrate_threshold(np.concatenate([v for k, v in scores.items() if k != held]), det.fpr)
        k = int(np.sum(s > thr))
        lo, hi = wilson(k, len(s))
        rows.append({"held-out form": held, "threshold": thr, "n": len(s), "fpr": k / len(s), "lo": lo, "hi": hi,
                     "recall": float(np.mean(positives > thr))})
        log(f"calibrated without {held}: threshold {thr:+.3f}, its FPR {k / len(s):.1%} [{lo:.1%}, {hi:.1%}], recall {rows[-1]['recall']:.1%}")
    return rows
