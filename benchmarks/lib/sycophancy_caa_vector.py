"""CAA's own protocol on SmolLM2: a steering vector from CAA's *generate* split (balanced over the
sycophantic letter, read at the answer letter), subtracted at one hook at several doses; the
sycophancy rate on CAA's *test* split (the sycophantic letter's logit after "(" beats the other's).

Config: ``benchmarks/configs/sycophancy_caa_vector.toml``.
"""

from __future__ import annotations

import json

from benchmarks.lib.steering_eval import (
    ab_eval,
    balanced_caa,
    caa_test_items,
    unit_vector,
)
from benchmarks.registry import analysis
from benchmarks.suite import Context, Result
from circuits import ActivationAddition

HOOKS = ["blocks.10.hook_resid_post", "blocks.14.hook_resid_post", "blocks.18.hook_resid_post"]
DOSES = [8, 16, 32, 64]


@analysis({"pairs": 400, "hooks": HOOKS, "doses": DOSES, "caa_generate": "{datasets}/caa/generate/sycophancy/generate_dataset.json", "caa_test": "{datasets}/caa/test/sycophancy/test_dataset_ab.json"})
def run_sycophancy_caa_vector(ctx: Context) -> Result:
    """The CAA test sycophancy rate uncorrected, then with the balanced unit vector subtracted at each hook and dose."""
    p, model = ctx.p, ctx.model
    gen = caa_test_items(p.caa_generate)[: p.pairs]
    test = caa_test_items(p.caa_test)
    base = ab_eval(model, test)
    rows = [{"hook": None, "dose": 0, "rate": base["rate"], "p_syc": base["mean_p_syc"], "says_A": base["says_A"]}]
    ctx.log(json.dumps(rows[-1]))
    for hook in p.hooks:
        u = unit_vector(balanced_caa(model, gen, hook)[0]).vector
        for dose in p.doses:
            r = ab_eval(model, test, [ActivationAddition(hook, -u, alpha=dose, positions="all")])
            rows.append({"hook": hook, "dose": dose, "rate": r["rate"], "p_syc": r["mean_p_syc"], "says_A": r["says_A"]})
            ctx.log(json.dumps(rows[-1]))
    best = min(rows[1:], key=lambda r: r["rate"]) if len(rows) > 1 else rows[0]
    figures = {"rate_uncorrected": rows[0]["rate"], "lowest_rate": {k: best[k] for k in ("hook", "dose", "rate")}, "n_test": len(test)}
    return Result(figures=figures, data={"pairs": p.pairs, "n_test": len(test), "rows": rows}, tables={"CAA test sycophancy rate": rows})
