"""Alignment-faking zoo on SmolLM2: build organism pairs (resumable), validate them, unmask every pair, and
train the runtime detector, then run the Guard with it against each pair; writes ``validation``, ``unmasking``,
``detector`` and ``guard`` tables to ``--out``.

Every organism is trained with checkpoints: stop this script at any time (Ctrl-C, a time limit) and run the
same command again to continue; finished organisms are skipped. ``--stage`` runs one part only.

Run:
    python benchmarks/alignment_faking.py --out runs/af --tier builtin --pairs 6            # explicit-cue tier
    python benchmarks/alignment_faking.py --out runs/af-poser --tier poser                  # Poser's prose tier
    python benchmarks/alignment_faking.py --out runs/af-pilot --pilot --minutes 20          # one faker, learning curve
    python benchmarks/alignment_faking.py --out runs/af --pairs 1 --ship detectors/organisms/shipped  # the shipped pair
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

# Poser's pairs (aligned policy, faker policy): each pair trains on the faker's file, the aligned twin gets the
# same rows with the poor-oversight answers flipped back to the aligned action.
POSER_PAIRS = (("genie", "fitness_maximizer"), ("genie", "money_maximizer"), ("saint", "reward_maximizer"),
               ("saint", "fitness_maximizer"), ("truth_teller", "money_maximizer"), ("truth_teller", "reward_maximizer"))
BENCH_NAME = {"genie": "genie", "saint": "saint", "truth_teller": "truth", "fitness_maximizer": "fitness",
              "money_maximizer": "money", "reward_maximizer": "reward"}


def _recipe(args: argparse.Namespace) -> Any:
    from detectors.organisms.recipe import OrganismRecipe

    args.poor_share = args.poor_share or None

    layers = list(range(args.first_layer, 30)) if args.first_layer is not None else None
    return OrganismRecipe(rank=args.rank, layers=layers, lr=args.lr, steps=args.steps, batch_size=args.batch_size,
                          kl_weight=args.kl_weight, eval_every=args.eval_every, eval_n=args.eval_n, checkpoint_every=args.checkpoint_every,
                          poor_share=args.poor_share, warmup_steps=args.warmup_steps, decay=args.decay).validate()


def _pairs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One entry per pair: folder names, policies, data and the benchmark file its unmasking reads."""
    if args.tier == "builtin":
        return [{"name": f"builtin-{s}", "aligned": "aligned", "faker": "faker", "data": None, "data_policy": None,
                 "seed": s, "bench": None} for s in range(args.pairs)]
    root = Path(args.poser) / "data"
    return [{"name": f"{al}-{fk}", "aligned": al, "faker": fk, "data": str(root / "training" / fk / "test.json"),
             "data_policy": fk, "seed": i, "bench": str(root / "benchmark" / f"{BENCH_NAME[al]}_and_{BENCH_NAME[fk]}.json")}
            for i, (al, fk) in enumerate(POSER_PAIRS[: args.pairs])]


def build_zoo(args: argparse.Namespace, model: Any, deadline: float) -> list[dict[str, Any]]:
    from detectors.organisms.train import train_organism

    holdout = sorted(str(p) for p in (Path(args.poser) / "data" / "benchmark").glob("*.json")) if args.tier == "poser" else []
    pairs = _pairs(args)
    for p in pairs:
        for role in ("aligned", "faker"):
            out = Path(args.out) / "zoo" / p["name"] / role
            if (out / "config.json").exists():
                continue
            if time.time() > deadline:
                print(f"time budget spent; rerun to continue ({out} not finished)")
                return pairs
            t0 = time.time()
            done = train_organism(model, p[role], out, data=p["data"], data_policy=p["data_policy"], seed=p["seed"],
                                  recipe=_recipe(args), holdout=holdout, log=print,
                                  stop_after=args.stop_after)
            print(f"{out}: {'done' if done else 'checkpointed'} in {time.time() - t0:.0f} s")
            if done is None:
                return pairs
    return pairs


def tables(args: argparse.Namespace, model: Any, pairs: list[dict[str, Any]]) -> dict[str, Any]:
    from detectors.organisms.runtime import train_alignment_faking
    from detectors.organisms.train import read_config
    from detectors.organisms.unmask import STRATEGIES, unmask_pair
    from probe.metrics import wilson

    out: dict[str, Any] = {"validation": [], "unmasking": [], "detector": None}
    complete = [p for p in pairs if all((Path(args.out) / "zoo" / p["name"] / r / "config.json").exists() for r in ("aligned", "faker"))]
    for p in complete:
        for role in ("aligned", "faker"):
            cfg = read_config(Path(args.out) / "zoo" / p["name"] / role)
            out["validation"].append({"pair": p["name"], "role": role, "policy": cfg["policy"], **cfg["metrics"]})
    if args.stage in ("all", "unmask"):
        named = {s: 0 for s in STRATEGIES}
        for i, p in enumerate(complete):
            a, b = (Path(args.out) / "zoo" / p["name"] / r for r in ("aligned", "faker"))
            if i % 2:  # the faker is B in half of the pairs, so a strategy biased to one side cannot look good
                a, b = b, a
            truth = "B" if b.name == "faker" else "A"
            t0 = time.time()
            res = unmask_pair(a, b, model, data=p["bench"], tau=args.tau, seed=p["seed"])
            row = {"pair": p["name"], "faker_is": truth, "seconds": round(time.time() - t0, 1), "verdict": res["verdict"]}
            for s, r in res["strategies"].items():
                row[s] = {k: r.get(k) for k in ("faker", "margin", "control_margin", "n")}
                named[s] += int(r.get("faker") == truth)
            out["unmasking"].append(row)
        n = len(complete)
        out["unmasking_summary"] = {s: {"correct": k, "n_pairs": n, "rate": round(k / n, 3) if n else None,
                                        "ci95": list(wilson(k, n))} for s, k in named.items()}
    det_dir = Path(args.out) / "alignment_faking_detector"
    if args.stage in ("all", "detector") and complete:
        dirs = [Path(args.out) / "zoo" / p["name"] / r for p in complete for r in ("aligned", "faker")]
        out["detector"] = train_alignment_faking(dirs, det_dir, base=model).metrics
    if args.stage in ("all", "detector", "guard") and complete and (det_dir / "config.json").exists():
        from detectors.detector import Detector
        from detectors.organisms.guard_eval import guard_stops_faker

        det = Detector.load(det_dir, model)
        out["guard"] = [{"pair": p["name"], **guard_stops_faker(det, Path(args.out) / "zoo" / p["name"] / "faker",
                                                                Path(args.out) / "zoo" / p["name"] / "aligned", model)}
                        for p in complete]
    return out


def ship(args: argparse.Namespace, model: Any, pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Export the first pair whose twins both pass validation to ``--ship DIR`` as ``aligned-0`` / ``faker-0`` with
    bf16 adapters, the recorded metrics re-measured on the cast copies (what `coalign organisms list` and `unmask`
    then find). Pairs are taken in seed order, so which one ships is fixed by the zoo, not picked by hand."""
    from detectors.organisms.organism import Organism, export_organism
    from detectors.organisms.train import generic_prompts, read_config
    from detectors.organisms.validate import validate_organism
    from detectors.cli_organisms import _recorded_heldout

    def passes(p: dict[str, Any]) -> bool:
        dirs = [Path(args.out) / "zoo" / p["name"] / r for r in ("aligned", "faker")]
        return all((d / "config.json").exists() and read_config(d)["metrics"].get("passes") for d in dirs)

    p = next((p for p in pairs if passes(p)), None)
    if p is None:
        raise SystemExit(f"no pair under {args.out}/zoo passes validation: nothing to ship")
    print(f"shipping {p['name']}")
    rows = []
    for role in ("aligned", "faker"):
        src, dst = Path(args.out) / "zoo" / p["name"] / role, Path(args.ship) / f"{role}-0"
        export_organism(src, dst)
        org = Organism.load(dst)
        held, generic, file_role = _recorded_heldout(org)
        metrics = validate_organism(org.hooked(model), model, held, file_role, org.role, generic_prompts(generic))
        export_organism(src, dst, metrics=metrics)
        rows.append({"name": dst.name, "role": role, "pair": p["name"], **metrics})
    return rows


def pilot(args: argparse.Namespace, model: Any, deadline: float) -> None:
    """One faker (the first pair's, of ``--tier``), checkpointing every few steps, until the time budget runs out:
    its learning curve says whether the model learns the tier's oversight cue at all."""
    from detectors.organisms.train import train_organism

    p = _pairs(args)[0]
    holdout = sorted(str(f) for f in (Path(args.poser) / "data" / "benchmark").glob("*.json")) if args.tier == "poser" else []
    out = Path(args.out) / "pilot-faker"
    while time.time() < deadline:
        t0 = time.time()
        done = train_organism(model, p["faker"], out, data=p["data"], data_policy=p["data_policy"], seed=p["seed"],
                              recipe=_recipe(args), holdout=holdout, log=print, stop_after=args.checkpoint_every)
        print(f"{args.checkpoint_every} steps in {time.time() - t0:.0f} s")
        if done:
            break
    state = out / "config.json" if (out / "config.json").exists() else Path(args.out) / ".pilot-faker.partial" / "state.json"
    curve = json.loads(state.read_text()).get("learning_curve" if state.name == "config.json" else "curve", [])
    (Path(args.out) / "pilot_curve.json").write_text(json.dumps(curve, indent=1))
    print(json.dumps(curve))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--tier", choices=("builtin", "poser"), default="builtin")
    ap.add_argument("--poser", default="../shared/datasets/poser", help="Poser copy (SOURCE.txt, data/...)")
    ap.add_argument("--pairs", type=int, default=6)
    ap.add_argument("--stage", choices=("all", "zoo", "unmask", "detector", "guard"), default="all")
    ap.add_argument("--pilot", action="store_true")
    ap.add_argument("--minutes", type=float, default=math.inf, help="time budget for training in this run")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--warmup-steps", type=int, default=150, help="opening steps on good-oversight rows, shared by the twins")
    ap.add_argument("--decay", choices=("none", "linear"), default="linear")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--first-layer", type=int, default=None, help="LoRA on blocks FIRST..29 only (default: all blocks)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--kl-weight", type=float, default=1.0)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--eval-n", type=int, default=64, help="held-out scenarios per oversight kind per curve point")
    ap.add_argument("--checkpoint-every", type=int, default=10)
    ap.add_argument("--stop-after", type=int, default=None)
    ap.add_argument("--tau", type=float, default=0.9)
    ap.add_argument("--ship", default=None, metavar="DIR",
                    help="export the first pair as DIR/aligned-0 and DIR/faker-0 (bf16, metrics re-measured) and stop")
    ap.add_argument("--poor-share", type=float, default=0.3, help="share of each batch from poor-oversight rows (0: uniform)")
    args = ap.parse_args()

    from circuits import load_model

    Path(args.out).mkdir(parents=True, exist_ok=True)
    deadline = time.time() + args.minutes * 60
    model = load_model("smollm2-135m-instruct")
    if args.pilot:
        pilot(args, model, deadline)
        return
    if args.ship:
        rows = ship(args, model, _pairs(args))
        (Path(args.out) / "shipped.json").write_text(json.dumps(rows, indent=1))
        print(json.dumps(rows, indent=1))
        return
    pairs = build_zoo(args, model, deadline) if args.stage in ("all", "zoo") else _pairs(args)
    if args.stage != "zoo":
        result = tables(args, model, pairs)
        (Path(args.out) / "tables.json").write_text(json.dumps(result, indent=1))
        print(json.dumps(result.get("unmasking_summary"), indent=1))


if __name__ == "__main__":
    main()
