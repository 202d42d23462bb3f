"""CAA's own protocol on SmolLM2: a steering vector from CAA's *generate* split (balanced over the
sycophantic letter, read at the answer letter), subtracted at one hook at several doses; the
sycophancy rate on CAA's *test* split (the sycophantic letter's logit after "(" beats the other's).

Run: python benchmarks/sycophancy_caa_vector.py [--pairs 400] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from correction import SHARED, ab_eval, balanced_caa, caa_test_items, unit_vector  # noqa: E402

from circuits import ActivationAddition, load_model  # noqa: E402

HOOKS = ["blocks.10.hook_resid_post", "blocks.14.hook_resid_post", "blocks.18.hook_resid_post"]
DOSES = (8, 16, 32, 64)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=400)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    model = load_model()
    gen = caa_test_items(SHARED / "caa" / "generate" / "sycophancy" / "generate_dataset.json")[: args.pairs]
    test = caa_test_items()
    base = ab_eval(model, test)
    rows = [{"hook": None, "dose": 0, "rate": base["rate"], "p_syc": base["mean_p_syc"], "says_A": base["says_A"]}]
    print(json.dumps(rows[-1]), flush=True)
    for hook in HOOKS:
        u = unit_vector(balanced_caa(model, gen, hook)[0]).vector
        for dose in DOSES:
            r = ab_eval(model, test, [ActivationAddition(hook, -u, alpha=dose, positions="all")])
            rows.append({"hook": hook, "dose": dose, "rate": r["rate"], "p_syc": r["mean_p_syc"], "says_A": r["says_A"]})
            print(json.dumps(rows[-1]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"pairs": args.pairs, "n_test": len(test), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
