"""report.md and PNG plots of the probe benchmark, written from its summary dict."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.lib.tables import md_table

DEFINITIONS = {
    "truth_mean_auroc_unseen": (
        "Statement probes trained on the fit parts of the training statement sets (affirmative and negated). "
        "Each method's hook is the one with the best AUROC on the validation parts of the *training* sets. "
        "The figure is the mean AUROC (label 1 = false statement) over the held-out statement sets, negated "
        "ones included, whose topics are never trained on. Recall/FPR: at the threshold where at most 1% of "
        "the training sets' validation negatives (true statements) score above it, averaged over the sets. "
        "Caveat: affirmative and negated files share entities (cities / neg_cities) and are split per file, so "
        "a statement's negation can sit in the fit part with the opposite label; at shallow layers, which "
        "mostly encode the entities, validation AUROC can then fall below 0.5."),
    "deception_val_auroc": (
        "Probe trained on the fit part of the built-in `deception` recipe (all its families of honest/deceptive "
        "pairs). "
        "Method and hook: the best validation AUROC. The figure is the AUROC on the held-out test part: fact "
        "groups used neither for fitting nor for choosing the method/layer."),
    "deception_roleplay_auroc": (
        "The same deception probe (same method and hook) on the built-in `roleplay_lies` set: a different "
        "distribution (role-play scenarios with a motive to lie), never trained on."),
    "sycophancy_caa_auroc": (
        "Probe trained on the built-in `sycophancy` recipe (method and hook by validation AUROC), evaluated "
        "on the CAA sycophancy A/B test set (`caa/test/sycophancy/test_dataset_ab.json`), never trained on."),
    "baseline": (
        "DESIGN.md's naive floor: a logistic probe on the last token at one layer (chosen on validation), "
        "trained on cities (tested on held-out cities and on negated cities), on the deception recipe (held-out "
        "part; same rows and split as above) and on the sycophancy recipe (tested on CAA)."),
}
COMMON = (
    "AUROC 95% CI: stratified bootstrap (1000 resamples of rows; pairs are not resampled jointly, so the "
    "interval is somewhat narrow for paired sets). `recall@1%FPR` / `FPR`: threshold = `threshold_at_fpr` "
    "(1%, 95% confidence; with fewer than ~300 negatives that is their maximum) on the validation negatives "
    "of the training data, applied unchanged to the evaluation set; `FPR` is the false-positive rate it "
    "actually gives there. `recall (control thr)` / `FPR (control thr)` (chat suites): the same rule on "
    "{n_control} benign control chats (the model's own greedy answers to built-in benign instructions), "
    "as a deployed detector is calibrated.")


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name.replace(" (held-out)", "_heldout").replace("[held-out]", "_heldout")).strip("_")


def _layer(hook: str, i: int) -> int:
    m = re.match(r"blocks\.(\d+)\.", hook)
    return int(m.group(1)) if m else i


def layer_curves(summary: dict[str, Any]) -> dict[str, tuple[str, dict[str, dict[str, float]]]]:
    """``{plot name: (suite, {method: {hook: AUROC}})}``; the truth suite's targets are averaged."""
    curves: dict[str, tuple[str, dict[str, dict[str, float]]]] = {}
    for name, s in summary["suites"].items():
        for m, per_target in s["eval_auroc"].items():
            if name == "truth":
                mean = {h: float(np.mean([per_target[t][h] for t in per_target])) for h in s["hooks"]}
                curves.setdefault("truth_unseen_mean", (name, {}))[1][m] = mean
                continue
            for t, by_hook in per_target.items():
                key = f"baseline_{slug(t)}" if name.startswith("baseline") else slug(t)
                curves.setdefault(key, (name, {}))[1][m] = by_hook
    return curves


def plot_layers(summary: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for name, (suite, per_method) in layer_curves(summary).items():
        best = summary["suites"][suite]["best"]
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for m, by_hook in per_method.items():
            hooks = list(by_hook)
            xs = [_layer(h, i) for i, h in enumerate(hooks)]
            line, = ax.plot(xs, [by_hook[h] for h in hooks], marker="o", ms=3, label=m)
            if best.get(m) in by_hook:
                h = best[m]
                ax.plot([_layer(h, hooks.index(h))], [by_hook[h]], marker="*", ms=14, color=line.get_color())
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set(xlabel="layer (resid_post)", ylabel="AUROC", ylim=(0, 1.02),
               title=f"{name}: AUROC by layer (star = layer chosen on validation)")
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        path = out / f"auroc_by_layer_{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(path.name)
    return files


def plot_generalisation(gen: dict[str, Any], out: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = gen["datasets"]
    m = np.array([[np.nan if v is None else v for v in row] for row in gen["auroc"]], dtype=float)
    size = max(5.0, 0.55 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(m, cmap="RdBu", vmin=0, vmax=1)
    for i in range(len(names)):
        for j in range(len(names)):
            if not np.isnan(m[i, j]):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if abs(m[i, j] - 0.5) > 0.35 else "black")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set(xlabel="tested on", ylabel="trained on",
           title=f"generalisation: {gen['method']} probe AUROC (diagonal = held-out part)")
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    path = out / "generalisation.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def _headline_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for m, v in (summary.get("truth_mean_auroc_unseen") or {}).items():
        rows.append({"figure": f"truth_mean_auroc_unseen [{m}]", "value": v["auroc"], "95% CI": None,
                     "recall@1%FPR": v["recall_at_1pct_fpr"], "FPR": v["fpr_at_threshold"],
                     "recall (control thr)": None, "FPR (control thr)": None, "method": m,
                     "hook": v["hook"], "n": f"{v['n_sets']} sets"})
    for key in ("deception_val_auroc", "deception_roleplay_auroc", "sycophancy_caa_auroc"):
        v = summary.get(key)
        if v:
            rows.append({"figure": key, "value": v["auroc"], "95% CI": v["ci95"], "recall@1%FPR": v["recall_at_1pct_fpr"],
                         "FPR": v["fpr_at_threshold"], "recall (control thr)": v.get("recall_at_control_threshold"),
                         "FPR (control thr)": v.get("fpr_at_control_threshold"), "method": v["method"],
                         "hook": v["hook"], "n": v["n"]})
    for t, v in (summary.get("baseline") or {}).items():
        if v:
            rows.append({"figure": f"baseline: {t}", "value": v["auroc"], "95% CI": v["ci95"],
                         "recall@1%FPR": v["recall_at_1pct_fpr"], "FPR": v["fpr_at_threshold"],
                         "recall (control thr)": None, "FPR (control thr)": None, "method": v["method"],
                         "hook": v["hook"], "n": v["n"]})
    return rows


def _negatives_line(c: dict[str, Any]) -> str:
    suites = c.get("negatives_suites") or []
    if not suites:
        return f"**training negatives** (`negatives={c.get('negatives', 'none')!r}`): none; probes see their contrast data only."
    return (f"**training negatives** (`negatives={c['negatives']!r}`): the logistic and mass-mean probes of "
            f"{', '.join(suites)} also fit on {c['n_negatives']} benign chats (the model's own answers to the shipped "
            "`benign_negatives` instructions, disjoint from the control set), as `Detector.train` does; "
            "validation, thresholds and evaluation sets never contain them. LAT, CCS and TTPD need pairs or "
            "polarity and fit without them.")


def write_report(summary: dict[str, Any], out: Path, plots: list[str]) -> Path:
    path = out / "report.md"
    path.write_text(render_report(summary, plots))
    return path


def render_report(summary: dict[str, Any], plots: list[str]) -> str:
    c = summary["config"]
    lines = [f"# Probe benchmark: {c['model_id']}", "",
             f"- date: {c['date']}  (runtime {c['runtime_s']:.0f} s{', quick mode' if c['quick'] else ''})",
             f"- command: `{c['command']}`", f"- equivalent call: `{c['call']}`",
             f"- model: `{c['model_id']}`, weight fingerprint `{c['fingerprint']}`, {c['n_layers']} layers, d_model {c['d_model']}",
             f"- hooks: {', '.join(f'`{h}`' for h in c['hooks'])}", f"- methods: {', '.join(c['methods'])}",
             f"- datasets folder: `{c['datasets_dir']}`; activation cache: `{c['cache_dir']}`; seed {c['seed']}", "",
             "## Headline figures", "", md_table(_headline_rows(summary)), ""]
    for key, text in DEFINITIONS.items():
        lines += [f"- **{key}**: {text}"]
    lines += [f"- {COMMON.format(n_control=c.get('n_control', 0))}", f"- {_negatives_line(c)}", "", "## All results", "",
              "One row per (evaluation set, method) at the hook chosen on validation data.", "",
              md_table(summary["table"]), ""]
    truth = summary["suites"].get("truth")
    if truth and truth["final"]:
        lines += ["## Truth: per held-out statement set", "", "AUROC at each method's chosen hook.", ""]
        rows = [{"set": t, **{m: truth["final"][m][t]["auroc"] for m in truth["final"]}} for t in truth["targets"]]
        lines += [md_table(rows), ""]
    gen = summary.get("generalisation")
    if gen and gen["datasets"]:
        lines += ["## Generalisation (train on row, test on column)", "",
                  f"{gen['method']} probe fitted on each dataset's fit part, hook chosen on its validation part; "
                  "AUROC on every other dataset (all rows) and on its own held-out test part (diagonal). "
                  "Statement sets are read at the last token, chats averaged over the response.", "",
                  md_table([{"train \\ test": a, **{b: gen["auroc"][i][j] for j, b in enumerate(gen["datasets"])}}
                            for i, a in enumerate(gen["datasets"])]), ""]
    lines += ["## Datasets", "", md_table([{"name": k, **v} for k, v in summary["datasets"].items()]), ""]
    skipped = [{"suite": n, "method": m, "reason": r} for n, s in summary["suites"].items() for m, r in s["skipped"].items()]
    lines += ["## Skipped methods", "", md_table(skipped), "", "## Notes", ""]
    lines += [f"- {n}" for n in summary["notes"]] or ["- none"]
    lines += ["", "## Validation AUROC by hook", ""]
    for name, s in summary["suites"].items():
        rows = [{"method": m, **{str(_layer(h, i)): v for i, (h, v) in enumerate(by.items())}} for m, by in s["val_auroc"].items()]
        lines += [f"### {name} (fit n={s['n']['fit']}, validation n={s['n']['val']})", "", md_table(rows), ""]
    lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"
