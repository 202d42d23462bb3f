"""Alignment faking in the suite (issue 27): the tables of a trained organism zoo.

Training the zoo is not a suite step (about 45 min per organism on this CPU, resumable):
``benchmarks/alignment_faking.py --stage zoo`` builds ``<zoo>/zoo/<pair>/{aligned,faker}``. This analysis
reads that folder and measures, with the same code as the script:

* validation: each organism's recorded held-out metrics (aligned rate under good oversight, misaligned rate
  under poor oversight, Wilson CIs, letter bias, KL to base);
* unmasking: every Poser strategy with its control per pair (the faker is organism B in every other pair),
  and per strategy the share of pairs it names correctly with a Wilson CI;
* the runtime detector: held-out AUROC, AUROC against aligned organisms on the same prompts, FPRs at
  its threshold, leave-one-faker-policy-out, and the defection-probe baseline;
* the Guard with that detector against each faker and aligned twin;
* capability cost: each organism's perplexity on WikiText-2 windows against the base model's.

Config: ``benchmarks/configs/alignment_faking.toml``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from benchmarks.registry import analysis
from benchmarks.suite import BenchmarkConfigError, Context, Result


@analysis({"zoo": "{repo}/runs/af", "tier": "builtin", "poser": "{datasets}/poser", "pairs": 1, "tau": 0.9,
           "n_windows": 20, "window_tokens": 128,
           "corpus": "{datasets}/text_corpus/pytorch_examples/word_language_model/data/wikitext-2/test.txt"})
def run_alignment_faking(ctx: Context) -> Result:
    from benchmarks.alignment_faking import _pairs, tables
    from benchmarks.lib.steering_eval import corpus_windows, perplexity
    from detectors.organisms.organism import load_organism

    p, model = ctx.p, ctx.model
    args = argparse.Namespace(out=str(p.zoo), tier=p.tier, poser=str(p.poser), pairs=p.pairs, stage="all", tau=p.tau)
    pairs = [q for q in _pairs(args) if all((Path(p.zoo) / "zoo" / q["name"] / r / "config.json").exists() for r in ("aligned", "faker"))]
    if not pairs:
        raise BenchmarkConfigError(f"{p.zoo}: no finished aligned/faker pair under zoo/ (train one with benchmarks/alignment_faking.py)")
    res = tables(args, model, pairs)
    texts = corpus_windows(model, p.n_windows, p.window_tokens, p.corpus)
    base_ppl = perplexity(model, texts)
    cost = []
    for q in pairs:
        for role in ("aligned", "faker"):
            ppl = perplexity(load_organism(Path(p.zoo) / "zoo" / q["name"] / role, model), texts)
            cost.append({"pair": q["name"], "role": role, "perplexity": ppl, "base_perplexity": base_ppl,
                         "rise_pct": 100.0 * (ppl / base_ppl - 1.0), "n_tokens": p.n_windows * p.window_tokens})
            ctx.log(f"{q['name']} {role}: perplexity {ppl:.3f} (base {base_ppl:.3f})")
    res["capability_cost"] = cost
    det = res.get("detector") or {}
    figures: dict[str, Any] = {
        "pairs": len(pairs),
        "organisms_passing_validation": sum(bool(v.get("passes")) for v in res["validation"]),
        "unmasking_rate": {s: v["rate"] for s, v in res.get("unmasking_summary", {}).items()},
        "detector_heldout_auroc": det.get("heldout_auroc"),
        "detector_auroc_vs_aligned_same_prompts": det.get("heldout_auroc_vs_aligned_same_prompts"),
        "defection_baseline_auroc": (det.get("defection_probe_baseline") or {}).get("heldout_auroc"),
        "max_perplexity_rise_pct": max(c["rise_pct"] for c in cost),
    }
    tabs: dict[str, list[dict[str, Any]]] = {
        "validation (held-out scenarios)": [{k: v for k, v in r.items() if not k.endswith("_ci95")} for r in res["validation"]],
        "unmasking: pairs named correctly per strategy": [{"strategy": s, **v} for s, v in res.get("unmasking_summary", {}).items()],
        "capability cost: perplexity against the base model": cost,
    }
    if res.get("guard"):
        tabs["the Guard with the runtime detector"] = res["guard"]
    return Result(figures=figures, data=res, tables=tabs)
