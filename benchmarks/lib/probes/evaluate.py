"""Evaluation of the probe benchmark: capture once per dataset, sweep methods x hooks per suite,
pick each method's hook on validation data only, score the evaluation sets, and the
train-on-A / test-on-B generalisation matrix."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from benchmarks.lib.probes.data import BenchData, Suite
from circuits import HookedModel
from probe.activation_set import ActivationSet
from probe.metrics import auroc, bootstrap_auroc_ci, threshold_at_fpr
from probe.negatives import NEGATIVE_METHODS
from probe.trainer import fit_probe

FPR = 0.01
NEEDS_PAIRS = {"lat": "needs contrast pairs (one positive and one negative per group)",
               "ccs": "needs contrast pairs (one positive and one negative per group)"}
NEEDS_POLARITY = {"ttpd": "needs affirmative and negated statements (polarity)"}


def _bar(it: Iterable, progress: bool, **kw: Any) -> Iterable:
    if not progress:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, **kw)


def capture_all(model: HookedModel, data: Mapping[str, BenchData], hooks: Sequence[str], cache_dir: Path | None,
                progress: bool) -> dict[str, ActivationSet]:
    """Each dataset captured at every hook in one pass; ``groups`` hold its contrast-pair ids."""
    out = {}
    for name in _bar(list(data), progress, desc="datasets", unit="set"):
        d = data[name]
        acts = ActivationSet.from_dataset(model, d.data, list(hooks), select=d.select, cache_dir=cache_dir,
                                          progress=progress)
        out[name] = replace(acts, groups=d.pairs)
    return out


def concat_sets(sets: Sequence[ActivationSet]) -> ActivationSet:
    """Row-wise concatenation; pair ids are offset per set (None if any set has none)."""
    pairs = None
    if all(s.groups is not None for s in sets):
        offsets = np.cumsum([0] + [int(s.groups.max()) + 1 if len(s) else 0 for s in sets[:-1]])  # type: ignore[union-attr]
        pairs = np.concatenate([s.groups + o for s, o in zip(sets, offsets)])  # type: ignore[operator]
    pol = None if any(s.polarity is None for s in sets) else np.concatenate([s.polarity for s in sets])  # type: ignore[misc]
    return ActivationSet({h: np.concatenate([s.X[h] for s in sets]) for h in sets[0].X},
                         np.concatenate([s.y for s in sets]), pairs, pol, sets[0].select)


def skip_reason(method: str, train: ActivationSet) -> str | None:
    """Why ``method`` does not apply to this training set (None if it does)."""
    params = train.fit_params()
    if method in NEEDS_PAIRS and "groups" not in params:
        return NEEDS_PAIRS[method]
    if method in NEEDS_POLARITY and "polarity" not in params:
        return NEEDS_POLARITY[method]
    return None


def pick_hook(val_auroc: Mapping[str, float]) -> str:
    """Hook with the best validation AUROC (ties go to the first, i.e. shallowest, hook)."""
    hooks = list(val_auroc)
    return hooks[int(np.argmax([val_auroc[h] for h in hooks]))]


def operating_point(y: np.ndarray, s: np.ndarray, threshold: float) -> dict[str, float]:
    return {"recall": float((s[y == 1] > threshold).mean()), "fpr": float((s[y == 0] > threshold).mean())}


@dataclass
class SuiteResult:
    """Sweep of one suite. ``val_auroc[method][hook]``, ``eval_auroc[method][target][hook]``,
    ``best[method]`` (hook chosen on validation), ``final[method][target]`` (metrics there)."""

    name: str
    train: list[str]
    targets: list[str]
    hooks: list[str]
    skipped: dict[str, str] = field(default_factory=dict)
    val_auroc: dict[str, dict[str, float]] = field(default_factory=dict)
    eval_auroc: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    best: dict[str, str] = field(default_factory=dict)
    final: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    n: dict[str, int] = field(default_factory=dict)

    def best_method(self) -> str | None:
        """Method with the best validation AUROC at its chosen hook (first on ties)."""
        ms = list(self.best)
        return ms[int(np.argmax([self.val_auroc[m][self.best[m]] for m in ms]))] if ms else None


def suite_sets(suite: Suite, data: Mapping[str, BenchData], acts: Mapping[str, ActivationSet]):
    """``(fit, val, {target: set})`` of a suite (fit parts of training sets plus their test
    parts unless the suite reports them as ``<train> (held-out)``)."""
    fit_parts = (0,) if suite.heldout else (0, 2)
    fit = concat_sets([acts[n].subset(np.concatenate([data[n].parts[k] for k in fit_parts])) for n in suite.train])
    val = concat_sets([acts[n].subset(data[n].parts[1]) for n in suite.train])
    targets: dict[str, ActivationSet] = {}
    if suite.heldout:
        targets[f"{'+'.join(suite.train)} (held-out)"] = concat_sets([acts[n].subset(data[n].parts[2]) for n in suite.train])
    for n in suite.evals:
        targets[n] = acts[n]
    return fit, val, targets


def evaluate_suite(suite: Suite, data: Mapping[str, BenchData], acts: Mapping[str, ActivationSet],
                   methods: Sequence[str], hooks: Sequence[str], control: ActivationSet | None = None,
                   n_boot: int = 1000, progress: bool = False, negatives: ActivationSet | None = None) -> SuiteResult:
    """Fit every applicable method at every hook on the fit data; choose its hook by validation
    AUROC; report AUROC, a bootstrap 95% CI and the operating point at the 1%-FPR threshold of
    the validation negatives (and of the benign ``control`` set, if given) on every target.
    ``negatives`` (label-0 rows) join the fit data of the probes that take unpaired rows only."""
    fit, val, targets = suite_sets(suite, data, acts)
    fit_neg = fit.append(negatives) if negatives is not None else None
    res = SuiteResult(suite.name, list(suite.train), list(targets), list(hooks))
    res.n = {"fit": len(fit), "val": len(val), "val_negatives": int((val.y == 0).sum()),
             "negatives": 0 if negatives is None else len(negatives), **{t: len(s) for t, s in targets.items()}}
    todo = []
    for m in suite.methods or methods:
        reason = skip_reason(m, fit)
        if reason:
            res.skipped[m] = reason
        else:
            todo.append(m)
    scores: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    for m, h in _bar([(m, h) for m in todo for h in hooks], progress, desc=f"probes: {suite.name}", unit="fit"):
        f = fit_neg if fit_neg is not None and m in NEGATIVE_METHODS else fit
        p = fit_probe(m, f.X[h], f.y, f.fit_params())
        s = {"__val__": p.decision_function(val.X[h])}
        s.update({t: p.decision_function(ts.X[h]) for t, ts in targets.items()})
        if control is not None:
            s["__control__"] = p.decision_function(control.X[h])
        scores[(m, h)] = s
        res.val_auroc.setdefault(m, {})[h] = auroc(val.y, s["__val__"])
        for t, ts in targets.items():
            res.eval_auroc.setdefault(m, {}).setdefault(t, {})[h] = auroc(ts.y, s[t])
    for m in todo:
        h = res.best[m] = pick_hook(res.val_auroc[m])
        s = scores[(m, h)]
        thr = threshold_at_fpr(s["__val__"][val.y == 0], FPR)
        ctrl_thr = threshold_at_fpr(s["__control__"], FPR) if control is not None else None
        res.final[m] = {}
        for t, ts in targets.items():
            lo, hi = bootstrap_auroc_ci(ts.y, s[t], n_boot=n_boot)
            row: dict[str, Any] = {"auroc": res.eval_auroc[m][t][h], "ci95": [lo, hi], "n": len(ts),
                                   "val_auroc": res.val_auroc[m][h], "threshold": thr,
                                   **{f"{k}_at_val_threshold": v for k, v in operating_point(ts.y, s[t], thr).items()}}
            if ctrl_thr is not None:
                row["control_threshold"] = ctrl_thr
                row.update({f"{k}_at_control_threshold": v for k, v in operating_point(ts.y, s[t], ctrl_thr).items()})
            res.final[m][t] = row
    return res


def generalisation_matrix(data: Mapping[str, BenchData], acts: Mapping[str, ActivationSet], names: Sequence[str],
                          hooks: Sequence[str], method: str = "logistic", progress: bool = False) -> dict[str, Any]:
    """AUROC of a probe trained on A's fit part (hook chosen on A's validation part) on every B:
    all of B's rows, or A's held-out test part on the diagonal."""
    names = list(names)
    matrix = np.full((len(names), len(names)), np.nan)
    chosen: dict[str, str] = {}
    for i, a in enumerate(_bar(names, progress, desc=f"generalisation ({method})", unit="set")):
        fit, val = acts[a].subset(data[a].parts[0]), acts[a].subset(data[a].parts[1])
        if skip_reason(method, fit):
            continue
        probes, val_auc = {}, {}
        for h in hooks:
            probes[h] = fit_probe(method, fit.X[h], fit.y, fit.fit_params())
            val_auc[h] = auroc(val.y, probes[h].decision_function(val.X[h]))
        h = chosen[a] = pick_hook(val_auc)
        for j, b in enumerate(names):
            target = acts[b].subset(data[b].parts[2]) if b == a else acts[b]
            matrix[i, j] = auroc(target.y, probes[h].decision_function(target.X[h]))
    return {"method": method, "datasets": names, "hooks": chosen,
            "auroc": [[None if np.isnan(v) else float(v) for v in row] for row in matrix]}
