"""The probe-accuracy benchmark: datasets x probe methods x hooks, and a generalisation matrix.

``python -m benchmarks run probes [--quick]`` runs :func:`run_probe_sweep` (config
``benchmarks/configs/probes.toml``), which calls :func:`run_probe_benchmark`. Pieces:
:mod:`benchmarks.lib.probes.data` (datasets, caps, pairs, splits), :mod:`benchmarks.lib.probes.evaluate`
(capture, sweeps, hook choice on validation data only, metrics), :mod:`benchmarks.lib.probes.report`
(report.md and plots). Suites:

* ``truth``: statement sets (last token), trained on affirmative + negated sets, tested on
  unseen topics; headline ``truth_mean_auroc_unseen`` for TTPD and logistic.
* ``deception``: the built-in deception recipe's pairs (response mean), held-out groups and
  ``roleplay_lies``; headlines ``deception_val_auroc``, ``deception_roleplay_auroc``.
* ``sycophancy``: built-in A/B chats, tested on the CAA sycophancy test set; ``sycophancy_caa_auroc``.
* ``baseline``, ``baseline_deception``, ``baseline_sycophancy``: DESIGN.md's naive floor, a
  last-token logistic probe at one layer, on cities (tested on held-out and negated cities), on
  the deception recipe (held-out part) and on sycophancy (tested on CAA); summary ``baseline``.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from benchmarks.lib.probes.data import (
    BenchData,
    Suite,
    build_suites,
    drop_overlong,
    load_bench_data,
)
from benchmarks.lib.probes.evaluate import (
    SuiteResult,
    capture_all,
    evaluate_suite,
    generalisation_matrix,
)
from benchmarks.lib.probes.report import (
    plot_generalisation,
    plot_layers,
    render_report,
    write_report,
)
from benchmarks.registry import analysis
from benchmarks.suite import Context, Result
from circuits import HookedModel
from circuits.generation import complete
from probe.activation_set import ActivationSet
from probe.datasets import Example, LabelledDataset, recipe
from probe.negatives import DEFAULT_NEGATIVES

METHODS = ["logistic", "mass_mean", "mass_mean_cov", "lat", "ttpd"]
QUICK_METHODS = ["logistic", "mass_mean", "ttpd"]
N_CONTROL, CONTROL_TOKENS = 200, 32
NEGATIVES_MODES = ("auto", "benign", "none")
#: (suite, target) of the naive last-token logistic baselines (DESIGN.md's floor)
BASELINES = (("baseline", "cities (held-out)"), ("baseline", "neg_cities"),
             ("baseline_deception", "deception:last (held-out)"), ("baseline_sycophancy", "sycophancy_caa:last"))


def default_hooks(model: HookedModel, quick: bool = False) -> list[str]:
    """``blocks.{i}.hook_resid_post`` for i in 4, 6, ..., n_layers-3 (quick: every 4th layer of the
    middle half); every layer when the model is too shallow for that."""
    n = model.n_layers
    layers = list(range(n // 4, 3 * n // 4 + 1, 4)) if quick else list(range(4, n - 2, 2))
    return [f"blocks.{i}.hook_resid_post" for i in (layers or range(n))]


def default_cache_dir() -> Path:
    """``$COALIGN_CACHE`` or ``~/.cache/coalign`` (activations under ``acts/``, as detector training)."""
    return Path(os.environ.get("COALIGN_CACHE", Path.home() / ".cache" / "coalign"))


def benign_chats(model: HookedModel, n: int, hooks: Sequence[str], cache: Path, progress: bool,
                notes: list[str], source: str = "benign") -> ActivationSet | None:
    """The model's own greedy answers to ``n`` built-in benign instructions of recipe ``source``
    (``benign``: the control set; ``benign_negatives``: the disjoint training negatives), captured
    as a label-0 set (response mean)."""
    if n <= 0:
        return None
    if model.hf_model is None:
        notes.append(f"{source} chats skipped: generation needs a model that can decode")
        return None
    prompts, _ = drop_overlong(model, recipe(source))
    items = prompts.items[:n]
    if progress:
        print(f"{source}: greedy answers to {len(items)} instructions ({CONTROL_TOKENS} tokens, cached)", file=sys.stderr)
    answers = complete(model, items, max_new_tokens=CONTROL_TOKENS, cache_dir=cache / "completions")
    chats = [it + [{"role": "assistant", "content": a or "OK."}] for it, a in zip(items, answers)]
    ds, _ = drop_overlong(model, LabelledDataset(source, [Example(c, 0, source=f"{source}:{i}") for i, c in enumerate(chats)]))
    return ActivationSet.from_dataset(model, ds, list(hooks), select="response_mean", cache_dir=cache / "acts", progress=progress)


def negative_suites(suites: Sequence[Suite], negatives: str) -> list[str]:
    """Suites whose unpaired probes get the benign training negatives: ``"auto"``, as
    ``Detector.train`` does by default (``DEFAULT_NEGATIVES``); ``"benign"``, every chat suite; ``"none"``."""
    return [s.name for s in suites if s.select == "response_mean"
            and (negatives == "benign" or (negatives == "auto" and DEFAULT_NEGATIVES.get(s.name) == "benign"))]


def _headline(res: SuiteResult | None, target: str) -> dict[str, Any] | None:
    m = res.best_method() if res else None
    if res is None or m is None or target not in res.final[m]:
        return None
    f = res.final[m][target]
    out = {"method": m, "hook": res.best[m], "auroc": f["auroc"], "ci95": f["ci95"], "val_auroc": f["val_auroc"],
           "recall_at_1pct_fpr": f["recall_at_val_threshold"], "fpr_at_threshold": f["fpr_at_val_threshold"],
           "threshold_from": f"{res.n['val_negatives']} validation negatives of {'+'.join(res.train)}",
           "n": f["n"], "by_method": {k: {"hook": res.best[k], "auroc": res.final[k][target]["auroc"]} for k in res.final}}
    if "recall_at_control_threshold" in f:
        out |= {"recall_at_control_threshold": f["recall_at_control_threshold"],
                "fpr_at_control_threshold": f["fpr_at_control_threshold"]}
    return out


def _truth_headline(res: SuiteResult | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in ("ttpd", "logistic"):
        if res is None or m not in res.final:
            continue
        per = res.final[m]
        neg = [t for t in per if t.startswith("neg_")]
        mean = lambda key, ts=list(per): float(np.mean([per[t][key] for t in ts])) if ts else None  # noqa: E731
        out[m] = {"auroc": mean("auroc"), "hook": res.best[m], "val_auroc": res.val_auroc[m][res.best[m]],
                  "n_sets": len(per), "mean_negated": mean("auroc", neg),
                  "mean_affirmative": mean("auroc", [t for t in per if t not in neg]),
                  "recall_at_1pct_fpr": mean("recall_at_val_threshold"), "fpr_at_threshold": mean("fpr_at_val_threshold"),
                  "per_set": {t: per[t]["auroc"] for t in per}}
    return out


def _table(results: Mapping[str, SuiteResult]) -> list[dict[str, Any]]:
    rows = []
    for name, res in results.items():
        for m in res.final:
            per = res.final[m]
            if name == "truth":
                groups = [(f"truth: {len(per)} unseen statement sets (mean)", list(per))]
            else:
                groups = [(t, [t]) for t in per]
            for label, ts in groups:
                ci = per[ts[0]]["ci95"] if len(ts) == 1 else None
                rows.append({"dataset": label, "train": name, "method": m,
                             "hook": res.best[m], "val_auroc": res.val_auroc[m][res.best[m]],
                             "auroc": float(np.mean([per[t]["auroc"] for t in ts])),
                             "ci95": f"{ci[0]:.2f}-{ci[1]:.2f}" if ci else "",
                             "recall@1%fpr": float(np.mean([per[t]["recall_at_val_threshold"] for t in ts])),
                             "fpr": float(np.mean([per[t]["fpr_at_val_threshold"] for t in ts]))})
    return rows


def _identical_methods(results: Mapping[str, SuiteResult]) -> list[str]:
    out = []
    for name, res in results.items():
        a, b = res.val_auroc.get("ttpd"), res.val_auroc.get("mass_mean")
        if a and b and all(abs(a[h] - b[h]) < 1e-9 for h in a):
            out.append(f"{name}: ttpd and mass_mean scored identically. With classes and polarities balanced (the "
                       "capped samples are), TTPD's OLS columns tau and tau*p are orthogonal, so its t_G is the "
                       "class-mean difference; this TTPD reads out t_G alone (the paper's 2-D classifier with the "
                       "polarity projection is not implemented), hence the same ranking.")
    return out


def _command(out: Path, quick: bool, datasets_dir: Path, model: HookedModel, negatives: str) -> tuple[str, str]:
    argv = sys.argv
    cmd = shlex.join(["coalign", *argv[1:]]) if Path(argv[0]).name == "coalign" else shlex.join(argv)
    call = (f"run_probe_benchmark(load_model({model.model_id!r}), {str(out)!r}, quick={quick}, "
            f"datasets_dir={str(datasets_dir)!r}, negatives={negatives!r})")
    return cmd, call


def run_probe_benchmark(
    model: HookedModel, out_dir: str | os.PathLike, quick: bool = False, datasets_dir: str | os.PathLike = "",
    methods: Sequence[str] | None = None, hooks: Sequence[str] | None = None, cache_dir: str | os.PathLike | None = None,
    *, seed: int = 0, max_rows: int | None = None, n_control: int | None = None,
    overrides: Mapping[str, LabelledDataset] | None = None, generalisation_method: str | None = "logistic",
    n_boot: int = 1000, progress: bool = True, negatives: str = "auto", write: bool = True,
) -> dict[str, Any]:
    """Run the probe benchmark and write ``results.json``, ``report.md`` and PNG plots to ``out_dir``.

    Args:
        model: a hooked model (:func:`circuits.load_model`).
        out_dir: output folder (created).
        quick: fewer rows (120 per statement set), hooks (every 4th middle layer) and methods.
        datasets_dir: the public datasets folder (the suite passes the config's; files missing there are skipped with a note).
        methods: probe names (default ``METHODS``, quick ``QUICK_METHODS``); inapplicable ones are skipped.
        hooks: hook names (default :func:`default_hooks`).
        cache_dir: cache root (default ``$COALIGN_CACHE`` or ``~/.cache/coalign``; activations in ``acts/``).
        seed: sampling and split seed.
        max_rows: cap on rows of every dataset (overrides the defaults).
        n_control: benign control chats for a second threshold (default 200; 0 = none).
        overrides: datasets to use instead of the built-in/file ones, by benchmark name
            (e.g. ``{"deception": my_dataset}``).
        generalisation_method: probe used for the generalisation matrix (None: no matrix).
        negatives: benign training negatives for the unpaired probes (logistic, mass-mean) of chat
            suites: ``"auto"`` (default) as ``Detector.train`` uses them (deception only), so the
            control-threshold columns describe what a trained detector does; ``"benign"``: every
            chat suite; ``"none"``: contrast data only. Validation, thresholds and targets never see them.
        write: also write ``results.json`` and ``report.md`` (the suite writes its own instead).

    Returns:
        The summary (also ``results.json``): ``table`` (rows: dataset, train, method, hook, val_auroc,
        auroc, ci95, recall@1%fpr, fpr), ``truth_mean_auroc_unseen``, ``deception_val_auroc``,
        ``deception_roleplay_auroc``, ``sycophancy_caa_auroc``, ``suites``, ``generalisation``,
        ``datasets``, ``config``, ``notes``.

    Example:
        >>> s = run_probe_benchmark(load_model(), "runs/bench", quick=True)
        >>> s["truth_mean_auroc_unseen"]["ttpd"]["auroc"]
    """
    if negatives not in NEGATIVES_MODES:
        raise ValueError(f"negatives must be one of {', '.join(NEGATIVES_MODES)}, got {negatives!r}")
    t0 = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ddir = Path(datasets_dir)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    hooks = list(hooks) if hooks else default_hooks(model, quick)
    methods = list(methods) if methods else list(QUICK_METHODS if quick else METHODS)
    notes: list[str] = []
    if not ddir.is_dir():
        notes.append(f"datasets folder {ddir} not found: only the built-in recipes are used")
    data = load_bench_data(model, ddir, quick, seed, notes, max_rows=max_rows, overrides=overrides)
    suites = build_suites(data, notes)
    acts = capture_all(model, data, hooks, cache / "acts", progress)
    needs_control = any(s.select == "response_mean" for s in suites)
    control = benign_chats(model, N_CONTROL if n_control is None else n_control, hooks, cache, progress, notes) if needs_control else None
    with_neg = negative_suites(suites, negatives)
    neg = benign_chats(model, len(recipe("benign_negatives")), hooks, cache, progress, notes, "benign_negatives") if with_neg else None
    results = {s.name: evaluate_suite(s, data, acts, methods, hooks, control if s.select == "response_mean" else None,
                                      n_boot=n_boot, progress=progress, negatives=neg if s.name in with_neg else None)
               for s in suites}
    notes += _identical_methods(results)
    names = [n for n in data if ":" not in n] if generalisation_method else []
    gen = generalisation_matrix(data, acts, names, hooks, generalisation_method or "none", progress)
    cmd, call = _command(out, quick, ddir, model, negatives)
    summary: dict[str, Any] = {
        "table": _table(results),
        "truth_mean_auroc_unseen": _truth_headline(results.get("truth")),
        "deception_val_auroc": _headline(results.get("deception"), "deception (held-out)"),
        "deception_roleplay_auroc": _headline(results.get("deception"), "roleplay_lies"),
        "sycophancy_caa_auroc": _headline(results.get("sycophancy"), "sycophancy_caa"),
        "baseline": {t: _headline(results.get(suite), t) for suite, t in BASELINES},
        "suites": {k: asdict(v) for k, v in results.items()},
        "generalisation": gen,
        "datasets": {k: _dataset_info(d) for k, d in data.items()},
        "notes": notes,
        "config": {"model_id": model.model_id, "fingerprint": model.fingerprint, "n_layers": model.n_layers,
                   "d_model": model.d_model, "hooks": hooks, "methods": methods, "quick": quick, "seed": seed,
                   "datasets_dir": str(ddir), "cache_dir": str(cache / "acts"), "n_control": 0 if control is None else len(control),
                   "negatives": negatives, "negatives_suites": with_neg if neg is not None else [],
                   "n_negatives": 0 if neg is None else len(neg),
                   "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "command": cmd, "call": call},
    }
    for stale in [*out.glob("auroc_by_layer_*.png"), out / "generalisation.png"]:
        stale.unlink(missing_ok=True)  # plots of an earlier run in the same folder
    plots = plot_layers(summary, out) + ([plot_generalisation(gen, out)] if gen["datasets"] else [])
    summary["config"]["runtime_s"] = time.time() - t0
    summary["plots"] = plots
    if write:
        write_report(summary, out, plots)
        (out / "results.json").write_text(json.dumps(summary, indent=2, default=float))
    return summary


def _dataset_info(d: BenchData) -> dict[str, Any]:
    pol = d.data.polarity
    return {"source": d.source, "select": d.select, "rows": len(d.data), "rows_available": d.n_total,
            "dropped_overlong": d.n_dropped, "pairs": d.pairs is not None,
            "polarity": "negated" if (pol == 0).all() else "affirmative" if (pol == 1).all() else "mixed/unknown",
            "fit/val/test": "/".join(str(len(p)) for p in d.parts)}


@analysis({"methods": [], "hooks": [], "negatives": "auto", "max_rows": None, "n_control": None, "n_boot": 1000,
           "generalisation_method": "logistic", "seed": 0})
def run_probe_sweep(ctx: Context) -> Result:
    """The probe sweep of a config (``probes.toml``): :func:`run_probe_benchmark` on the config's
    datasets folder; the headline figures are the summary's headline entries."""
    p = ctx.p
    s = run_probe_benchmark(ctx.model, ctx.out, quick=ctx.quick, datasets_dir=ctx.datasets, methods=p.methods or None,
                            hooks=p.hooks or None, cache_dir=ctx.cache, seed=p.seed, max_rows=p.max_rows,
                            n_control=p.n_control, generalisation_method=p.generalisation_method or None,
                            n_boot=p.n_boot, negatives=p.negatives, write=False)
    figures: dict[str, Any] = {f"truth_mean_auroc_unseen.{m}": v["auroc"] for m, v in s["truth_mean_auroc_unseen"].items()}
    for key in ("deception_val_auroc", "deception_roleplay_auroc", "sycophancy_caa_auroc"):
        if s[key]:
            figures[key] = s[key]["auroc"]
    figures |= {f"baseline.{t}": v["auroc"] for t, v in s["baseline"].items() if v}
    return Result(figures=figures, data=s, report=render_report(s, s["plots"]).split("\n", 1)[1], plots=s["plots"],
                  notes=s["notes"])
