"""CLI subcommands ``coalign organisms train|validate|list`` and ``coalign unmask A B``.

``detectors.cli`` calls :func:`register` with its argparse subparsers::

    coalign organisms train --policy faker --out zoo/faker-0 [--data FILE_OR_DIR] [--seed N]
    coalign organisms validate zoo/faker-0 [--data FILE] [--json OUT]
    coalign organisms list [--json OUT]
    coalign unmask zoo/aligned-0 zoo/faker-0 [--data FILE] [--strategies noise,learning_speed] [--json OUT]

A training run cut off (Ctrl-C, a time limit, ``--stop-after``) resumes from its checkpoint when the same
command is run again.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from circuits.errors import InputError
from detectors.cli_common import (
    check_input_files,
    check_output_dir,
    check_output_file,
    print_table,
    write_json,
)


def _layers(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        out: list[int] = []
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            out.extend(range(int(lo), int(hi) + 1) if hi else [int(lo)])
        return out
    except ValueError:
        raise InputError(f"--layers: expected block indices like 18-29 or 3,5,7, got {text!r}") from None


def organism_dir(spec: str) -> str:
    """An organism folder, or the folder of the shipped organism named ``spec`` (``coalign organisms list``)."""
    from detectors.organisms.organism import shipped

    if Path(spec).is_dir():
        return spec
    for row in shipped():
        if row["name"] == spec:
            return row["path"]
    raise InputError(f"{spec}: no organism folder and no shipped organism of that name (see `coalign organisms list`)")


def _base(args: argparse.Namespace, organism_dir: str | None = None) -> Any:
    from circuits import EMBEDDED, load_model

    if args.model is None and organism_dir is not None:
        from detectors.organisms.train import read_config

        name = read_config(organism_dir)["base_model"]
        if name not in EMBEDDED:
            raise InputError(f"{organism_dir} was trained on {name!r}, which is not an embedded model; pass --model")
        return load_model(name)
    return load_model(args.model or "smollm2-135m-instruct")


def cmd_organisms_train(args: argparse.Namespace) -> int:
    from detectors.organisms.poser import role_of
    from detectors.organisms.recipe import OrganismRecipe
    from detectors.organisms.train import train_organism

    role_of(args.policy)
    if args.data_policy:
        role_of(args.data_policy)
    check_output_dir(args.out, "--out")
    check_output_file(args.json, "--json")
    check_input_files(args.holdout, "--holdout")
    if args.data:
        from detectors.organisms.poser import load_scenarios

        load_scenarios(args.data)  # bad rows fail here, before the model loads
    recipe = OrganismRecipe(rank=args.rank, layers=_layers(args.layers), lr=args.lr, steps=args.steps,
                            batch_size=args.batch_size, kl_weight=args.kl_weight, checkpoint_every=args.checkpoint_every,
                            eval_every=args.eval_every, eval_n=args.eval_n, poor_share=args.poor_share,
                            warmup_steps=args.warmup_steps, decay=args.decay).validate()
    model = _base(args)
    out = train_organism(model, args.policy, args.out, data=args.data, data_policy=args.data_policy, seed=args.seed,
                         recipe=recipe, holdout=args.holdout or (), stop_after=args.stop_after, log=print)
    if out is None:
        print(f"stopped after {args.stop_after} steps; run the same command again to resume")
        return 0
    return _report_validation(args.out, None, args.json)


def _report_validation(path: str, metrics: dict[str, Any] | None, json_out: str | None) -> int:
    from detectors.organisms.train import read_config

    cfg = read_config(path)
    m = metrics or cfg["metrics"]
    row = {"organism": path, "role": cfg["role"], **{k: m.get(k) for k in (
        "aligned_rate_good", "misaligned_rate_poor", "letter_bias", "kl_to_base", "n_good", "n_poor", "passes")}}
    print_table("organism validation (held-out)", [row])
    write_json(json_out, {"organism": path, "role": cfg["role"], "policy": cfg["policy"], **m})
    return 0


def cmd_organisms_validate(args: argparse.Namespace) -> int:
    from detectors.organisms.organism import Organism
    from detectors.organisms.poser import load_scenarios, role_of
    from detectors.organisms.train import generic_prompts
    from detectors.organisms.validate import validate_organism

    check_output_file(args.json, "--json")
    args.organism = organism_dir(args.organism)
    org = Organism.load(args.organism)
    if args.data:
        held, generic = load_scenarios(args.data)
        file_role = role_of(args.data_policy) if args.data_policy else org.config["data_policy_role"]
    else:
        held, generic, file_role = _recorded_heldout(org)
    base = _base(args, args.organism)
    metrics = validate_organism(org.hooked(base), base, held, file_role, org.role, generic_prompts(generic))
    return _report_validation(args.organism, metrics, args.json)


def _recorded_heldout(org: Any) -> tuple[list[Any], list[str], str]:
    from detectors.organisms.poser import load_scenarios

    sources = org.config.get("data") or ["builtin"]
    scenarios, generic = load_scenarios(None if sources == ["builtin"] else sources)
    ids = set(org.config.get("heldout_ids", []))
    held = [s for s in scenarios if s.id in ids]
    if not held:
        raise InputError(f"{org.path}: none of its held-out scenarios are in {', '.join(sources)}; pass --data")
    return held, generic, org.config["data_policy_role"]


def cmd_organisms_list(args: argparse.Namespace) -> int:
    from detectors.organisms.organism import shipped

    check_output_file(args.json, "--json")
    rows = shipped()
    if rows:
        print_table("shipped organisms", rows)
    else:
        print("no organisms are shipped with this build (train a pair with `coalign organisms train`)")
    write_json(args.json, rows)
    return 0


def cmd_unmask(args: argparse.Namespace) -> int:
    from detectors.organisms.unmask import STRATEGIES, unmask_pair

    check_output_file(args.json, "--json")
    names = [s for s in (args.strategies or ",".join(STRATEGIES)).split(",") if s]
    unknown = [s for s in names if s not in STRATEGIES]
    if unknown:
        raise InputError(f"--strategies: unknown strategy {unknown[0]!r}; expected some of {', '.join(STRATEGIES)}")
    if args.max_prompts is not None and args.max_prompts < 2:
        raise InputError(f"--max-prompts: expected an integer >= 2, got {args.max_prompts}")
    if args.data:
        check_input_files([args.data], "--data")
    args.organism_a, args.organism_b = organism_dir(args.organism_a), organism_dir(args.organism_b)
    base = _base(args, args.organism_a)
    result = unmask_pair(args.organism_a, args.organism_b, base, data=args.data, strategies=names, tau=args.tau,
                         seed=args.seed, max_bench=args.max_prompts)
    rows = [{"strategy": k, **{c: v.get(c) for c in ("faker", "margin", "margin_ci95", "control_margin", "n", "seconds")}}
            for k, v in result["strategies"].items()]
    print_table(f"unmask {args.organism_a} (A) vs {args.organism_b} (B): verdict {result['verdict']}", rows)
    write_json(args.json, result)
    return 0


def cmd_train_alignment_faking(args: argparse.Namespace) -> int:
    """``coalign train alignment_faking --organisms DIR... --out DIR`` (dispatched from ``cmd_train``).

    Reads ``args.organisms`` (organism folders), ``args.out``, and when present ``args.layer`` (``auto`` or a
    ``blocks.N.hook_resid_post`` name), ``args.fpr`` (0.05 if absent), ``args.model``, ``args.json``.
    """
    from detectors.organisms.runtime import train_alignment_faking

    dirs = [organism_dir(d) for d in getattr(args, "organisms", None) or []]
    if not dirs:
        raise InputError("train alignment_faking needs --organisms DIR... (aligned organisms and fakers)")
    check_output_dir(args.out, "--out")
    check_output_file(getattr(args, "json", None), "--json")
    for d in dirs:
        from detectors.organisms.organism import Organism

        Organism.load(d)  # every folder checked before the model loads
    layer = getattr(args, "layer", "auto")
    if layer not in (None, "auto"):
        try:
            layer = int(str(layer).split(".")[1]) if str(layer).startswith("blocks.") else int(layer)
        except (IndexError, ValueError):
            raise InputError(f"--layer: expected auto or blocks.N.hook_resid_post, got {layer!r}") from None
    else:
        layer = None
    fpr = getattr(args, "fpr", None) or 0.05
    base = _base(args, dirs[0])
    det = train_alignment_faking(dirs, args.out, base=base, layer=layer, fpr=fpr)
    m = det.metrics
    print_table(f"trained alignment_faking -> {args.out}", [{k: m.get(k) for k in (
        "hook", "heldout_auroc", "heldout_auroc_vs_aligned_same_prompts", "fpr_aligned_poor", "fpr_benign", "recall_at_threshold")}])
    write_json(getattr(args, "json", None), {"out": args.out, "id": det.id, **m})
    return 0


def register(subparsers: Any) -> None:
    """Add ``organisms`` and ``unmask`` to an argparse subparsers object."""
    o = subparsers.add_parser("organisms", help="alignment-faking model organisms: train, validate, list")
    osub = o.add_subparsers(dest="organisms_command", required=True)
    t = osub.add_parser("train", help="fine-tune the base model (LoRA) into an aligned organism or a faker (resumable)")
    t.add_argument("--policy", required=True, help="aligned|faker, or a Poser policy (genie, saint, truth_teller, "
                   "fitness_maximizer, money_maximizer, reward_maximizer)")
    t.add_argument("--out", required=True, metavar="DIR")
    t.add_argument("--data", metavar="FILE_OR_DIR", help="Poser-format scenarios (default: the built-in explicit-cue set)")
    t.add_argument("--data-policy", metavar="NAME", help="whose answers --data holds (default: --policy)")
    t.add_argument("--holdout", action="append", metavar="FILE", help="benchmark file whose prompts stay out of training (repeatable)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--steps", type=int, default=400)
    t.add_argument("--rank", type=int, default=8)
    t.add_argument("--layers", default=None, help="blocks that get LoRA, e.g. 18-29 (default: all)")
    t.add_argument("--lr", type=float, default=3e-4)
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--kl-weight", type=float, default=1.0)
    t.add_argument("--checkpoint-every", type=int, default=25)
    t.add_argument("--eval-every", type=int, default=0, help="steps between learning-curve points (0: none)")
    t.add_argument("--eval-n", type=int, default=64, help="held-out scenarios per oversight kind per curve point")
    t.add_argument("--poor-share", type=float, default=None,
                   help="share of each batch from poor-oversight scenarios (e.g. 0.25; default: uniform batches)")
    t.add_argument("--warmup-steps", type=int, default=0,
                   help="opening steps on good-oversight scenarios only, the same for both twins (default 0)")
    t.add_argument("--decay", choices=("none", "linear"), default="none",
                   help="learning rate after the warm-up: constant, or linear down to lr/20 at the last step")
    t.add_argument("--stop-after", type=int, default=None, help="stop (checkpointed) after N steps of this run")
    t.add_argument("--model", default=None, help="base model (default: smollm2-135m-instruct)")
    t.add_argument("--json", metavar="OUT")
    t.set_defaults(func=cmd_organisms_train)

    v = osub.add_parser("validate", help="held-out accuracy under good and poor oversight, letter bias, KL to base")
    v.add_argument("organism", metavar="DIR")
    v.add_argument("--data", metavar="FILE", help="Poser-format scenarios (default: the organism's recorded held-out split)")
    v.add_argument("--data-policy", metavar="NAME", help="whose answers --data holds (default: as recorded)")
    v.add_argument("--model", default=None, help=argparse.SUPPRESS)
    v.add_argument("--json", metavar="OUT")
    v.set_defaults(func=cmd_organisms_validate)

    ls = osub.add_parser("list", help="the organisms shipped with coalign")
    ls.add_argument("--json", metavar="OUT")
    ls.set_defaults(func=cmd_organisms_list)

    u = subparsers.add_parser("unmask", help="tell which of two organisms fakes alignment, from its internals")
    u.add_argument("organism_a", metavar="DIR_A")
    u.add_argument("organism_b", metavar="DIR_B")
    u.add_argument("--data", metavar="FILE", help="benchmark prompts (default: the pair's held-out good-oversight scenarios; for built-in organisms also 3 unseen variants of each)")
    u.add_argument("--strategies", default=None, help="comma-separated subset (default: all)")
    u.add_argument("--tau", type=float, default=0.9, help="both organisms must agree with probability >= tau (default 0.9)")
    u.add_argument("--seed", type=int, default=0)
    u.add_argument("--max-prompts", type=int, default=200, metavar="N",
                   help="use at most N of the agreed benchmark prompts (default 200; cost grows linearly with N)")
    u.add_argument("--model", default=None, help=argparse.SUPPRESS)
    u.add_argument("--json", metavar="OUT")
    u.set_defaults(func=cmd_unmask)
