"""The ``coalign`` command line: demo, train, eval, scan, combine (and guard, chat, steer).

Benchmarks are not
a product command: they run from a checkout as ``python -m benchmarks run CONFIG`` (``benchmarks/``).

Every command prints a readable table; ``--json FILE`` also writes the numbers.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any, Sequence

from circuits.errors import CoalignError, InputError
from detectors.cli_common import (
    _model, _negatives, check_detector_dirs, check_input_files, check_method, check_output_dir, check_output_file,
    check_unit_interval, print_table, write_json,
)


def cmd_train(args: argparse.Namespace) -> int:
    if args.behaviour == "alignment_faking":  # read at the decision token of organisms, not from a recipe
        from detectors.cli_organisms import cmd_train_alignment_faking

        return cmd_train_alignment_faking(args)
    check_output_dir(args.out, "--out")
    check_output_file(args.json, "--json")
    check_unit_interval(args.fpr, "--fpr")
    check_unit_interval(args.confidence, "--confidence", allow_zero=True)
    check_method(args.method)
    if args.from_dir:
        if args.behaviour is not None or args.mixture or args.data or args.control:
            raise InputError("--from retrains exactly what the artifact records; it takes no behaviour, --data, "
                             "--control or --mixture")
        from detectors.train_config import TrainingConfig
        from detectors.training import _recorded_config, retrain

        TrainingConfig.from_dict(_recorded_config(args.from_dir), where=f"{args.from_dir}: training_config")
        model = _model(args.model, args.from_dir)
        det = retrain(args.from_dir, model, progress=True)
        return _report_trained(det, args)
    if args.behaviour is None:
        raise InputError("train needs a behaviour (deception, sycophancy, truth, or a name with --data) or --from DIR")
    if args.mixture:
        return _train_mixture(args)
    for flag, files in (("--data", args.data), ("--control", args.control)):
        check_input_files(files, flag)
    if args.sae:
        return _train_sae_detector(args)
    negatives = _negatives(args.negatives)
    if isinstance(negatives, list):
        check_input_files(negatives, "--negatives")
    from detectors.train_config import TrainingConfig
    from detectors.training import train_from_config
    config = TrainingConfig(
        args.behaviour, data=args.data or None, method=args.method, layer=args.layer, fpr=args.fpr,
        n_control=args.n_control, control=args.control, confidence=None if args.confidence <= 0 else args.confidence,
        negatives=negatives, select=args.select, context_select=args.context_select,
    ).validate()
    model = _model(args.model)
    return _report_trained(train_from_config(config, model, progress=True), args)


def _train_sae_detector(args: argparse.Namespace) -> int:
    """``coalign train BEHAVIOUR --sae SAE [--sae-k K]``: an SAE-feature probe calibrated like any detector."""
    if args.sae_k < 1:
        raise InputError(f"--sae-k must be >= 1, got {args.sae_k}")
    from circuits.sae import find_sae
    from detectors.sae_detector import train_sae_detector

    model = _model(args.model)
    sae = find_sae(args.sae, model)
    det = train_sae_detector(model, sae, args.behaviour, data=args.data or None, k=args.sae_k, fpr=args.fpr,
                             control=args.control, n_control=args.n_control)
    return _report_trained(det, args)


def _report_trained(det: Any, args: argparse.Namespace) -> int:
    det.save(args.out)
    m = det.metrics
    row = {
        "detector": det.name, "hook": det.hooks[0], "method": det.probe_kind, "val_auroc": m["val_auroc"],
        "recall@thr": m["val_recall_at_threshold"], "control_fpr": m["control_fpr"], "threshold": det.threshold,
    }
    print_table(f"trained {det.name} -> {args.out}", [row])
    write_json(args.json, {"out": args.out, "id": det.id, "hook": det.hooks[0], **{k: v for k, v in m.items() if k != "sweep"}})
    return 0


def _train_mixture(args: argparse.Namespace) -> int:
    from detectors.deception_mixture import train_deception_mixture

    fixed = {"--data": args.data, "--negatives": args.negatives, "--select": args.select,
             "--method": None if args.method == "logistic" else args.method}
    if args.behaviour != "deception" or any(v is not None for v in fixed.values()):
        given = [k for k, v in fixed.items() if v is not None] or [f"behaviour {args.behaviour!r}"]
        raise SystemExit(f"coalign train: --mixture builds the deception mixture from fixed recipes; it cannot take {', '.join(given)}")
    check_input_files(args.control, "--control")
    model = _model(args.model)
    det = train_deception_mixture(model, layer=args.layer, fpr=args.fpr, n_control=args.n_control, control=args.control,
                                  confidence=None if args.confidence <= 0 else args.confidence, progress=True)
    det.save(args.out)
    m = det.metrics
    row = {"detector": det.name, "hooks": ", ".join(det.hooks), "concealment weight": m["mixture_weight"],
           **{f"held-out {k}": v for k, v in m["held_out_auroc"].items()}, "control_fpr": m["control_fpr"],
           "threshold": det.threshold}
    print_table(f"trained {det.name} -> {args.out}", [row])
    write_json(args.json, {"out": args.out, "id": det.id, "threshold": det.threshold, **m})
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    check_detector_dirs([args.detector])
    check_input_files([args.data], "--data")
    check_output_file(args.json, "--json")
    from detectors import Detector
    from probe.datasets import load_data
    from probe.metrics import calibration_report, pair_accuracy
    model = _model(args.model, args.detector)
    det = Detector.load(args.detector, model)
    data = load_data(args.data).check_two_classes()
    scores = det.score(model, data.items)
    report = calibration_report(data.labels, scores, det.threshold)
    acc, n_pairs = pair_accuracy(data.labels, scores, [e.group for e in data.examples])
    if n_pairs:  # contrast pairs (A/B rows, grouped chats): each judged on its own as well
        report |= {"pair_accuracy": acc, "n_pairs": n_pairs}
    print_table(f"{det.name} on {args.data}", [report])
    write_json(args.json, report)
    return 0


def cmd_combine(args: argparse.Namespace) -> int:
    check_detector_dirs(args.detectors)
    check_output_dir(args.out, "--out")
    check_output_file(args.json, "--json")
    check_input_files(args.control, "--control")
    check_unit_interval(args.fpr, "--fpr")
    try:
        weights = [float(w) for w in args.weights.split(",")] if args.weights else None
    except ValueError:
        raise InputError(f"--weights must be comma-separated numbers, got {args.weights!r}") from None
    if weights is not None and (len(weights) != len(args.detectors) or not all(math.isfinite(w) for w in weights)):
        raise InputError(f"--weights needs {len(args.detectors)} finite numbers (one per detector), got {args.weights!r}")
    from detectors import Detector
    model = _model(args.model, args.detectors[0])
    dets = [Detector.load(d, model) for d in args.detectors]
    both = Detector.combine(dets, model, weights=weights, name=args.name, fpr=args.fpr, control=args.control,
                            confidence=None if args.confidence <= 0 else args.confidence)
    both.save(args.out)
    rows = [{"part": c["name"], "id": c["id"], "hooks": ",".join(c["hooks"]), "weight": c["weight"],
             "control mean": c["control_mean"], "control std": c["control_std"]} for c in both.metrics["components"]]
    print_table(f"combined {both.name} -> {args.out} (threshold {both.threshold:.3f}, control FPR "
                f"{both.metrics['control_fpr']:.3f})", rows)
    write_json(args.json, {"out": args.out, "id": both.id, "threshold": both.threshold, **both.metrics})
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    check_detector_dirs([args.detector])
    check_input_files(args.control, "--control")
    check_output_dir(args.out or args.detector, "--out")
    check_output_file(args.json, "--json")
    check_unit_interval(args.fpr, "--fpr")
    check_unit_interval(args.confidence, "--confidence", allow_zero=True)
    from detectors import Detector
    from detectors.calibration import recalibrate
    model = _model(args.model, args.detector)
    det = Detector.load(args.detector, model)
    new = recalibrate(det, model, args.control, fpr=args.fpr,
                      confidence=None if args.confidence <= 0 else args.confidence, progress=True)
    out = args.out or args.detector
    new.save(out)
    row = {"detector": new.name, "control": new.metrics["recalibrated_on"]["source"], "n": new.metrics["n_control"],
           "old threshold": det.threshold, "new threshold": new.threshold, "control FPR": new.metrics["control_fpr"],
           "stream threshold": new.stream_threshold if new.stream_threshold is not None else "-"}
    print_table(f"recalibrated {args.detector} -> {out} (weights unchanged)", [row])
    write_json(args.json, {"out": out, "id": new.id, **row})
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from detectors.demo import run_demo

    check_output_dir(str(Path(args.out) / "deception"), "--out")
    check_output_dir(str(Path(args.out) / "sycophancy"), "--out")
    check_output_file(args.json, "--json")
    from circuits.loading import DEFAULT_MODEL

    return run_demo(args.model or DEFAULT_MODEL, args.out, json_out=args.json)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="coalign", description="Detect and correct deception and sycophancy inside local LMs.")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="train deception + sycophancy detectors on the embedded model and score examples")
    d.add_argument("--model", default=None)
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--json", default=None)
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("train", help="train a calibrated detector")
    t.add_argument("behaviour", nargs="?", default=None,
                   help="deception | sycophancy | truth (built-in recipes) or any name with --data")
    t.add_argument("--out", required=True)
    t.add_argument("--from", dest="from_dir", default=None, metavar="DIR",
                   help="retrain exactly as the artifact DIR records (its training_config): same data, method, hooks, seed")
    t.add_argument("--model", default=None)
    t.add_argument("--data", nargs="+", default=None, help="statements CSV, A/B JSON(L) or chat JSONL files, or built-in sets as recipe:NAME (e.g. recipe:deception/concealment)")
    t.add_argument("--method", default="logistic", help="logistic | mass_mean | mass_mean_cov | lat | ttpd | ccs | conditional")
    t.add_argument("--layer", default="auto", help="auto or a hook name such as blocks.12.hook_resid_post")
    t.add_argument("--fpr", type=float, default=0.01)
    t.add_argument("--n-control", type=int, default=200)
    t.add_argument("--confidence", type=float, default=0.95,
                   help="confidence that the control FPR bound holds on fresh data (0: plain empirical quantile)")
    t.add_argument("--control", nargs="+", default=None,
                   help="your own benign calibration files (label-0 rows are used) instead of the shipped control chats")
    t.add_argument("--negatives", nargs="+", default=None, metavar="auto|benign|none|FILE",
                   help="extra benign rows for training only: 'benign' (the model's answers to shipped everyday "
                        "instructions), 'none', your own files (label-0 rows are used), or 'auto' (default: "
                        "'benign' for deception, none otherwise)")
    t.add_argument("--select", default=None,
                   help="token selection read (default per behaviour: response_mean for chats); e.g. 'last' for "
                        "the position whose output is the next token")
    t.add_argument("--context-select", default="prompt_last",
                   help="with --method conditional: where the prompt state is read (prompt_last; last with "
                        "--select last for a detector judged before the answer's token is chosen; before_last with "
                        "--select last for one that judges a one-token answer once it is said)")
    t.add_argument("--organisms", nargs="+", default=None, metavar="DIR",
                   help="alignment_faking only: organism folders (aligned and faker) to read decisions from")
    t.add_argument("--mixture", action="store_true",
                   help="deception only: train the default detector and a concealment detector and fold them into one "
                        "that also transfers to role-play lies (weight chosen on held-out instructed pairs)")
    t.add_argument("--sae", default=None, metavar="SAE",
                   help="train an SAE-feature probe on this SAE's codes instead of a dense probe (directory or shipped name)")
    t.add_argument("--sae-k", type=int, default=16, metavar="K", help="with --sae: latents kept (default 16; 1, 4, 16, 64 compared in the record)")
    t.add_argument("--json", default=None)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate a detector on a labelled file")
    e.add_argument("detector")
    e.add_argument("--data", required=True, help="a labelled file or recipe:NAME (e.g. recipe:roleplay_lies_2)")
    e.add_argument("--model", default=None)
    e.add_argument("--json", default=None)
    e.set_defaults(func=cmd_eval)

    c = sub.add_parser("combine", help="fold several detectors into one (weighted sum of control-standardised scores)")
    c.add_argument("detectors", nargs="+", help="two or more detector directories")
    c.add_argument("--out", required=True)
    c.add_argument("--weights", default=None, help="comma-separated, one per detector (default equal)")
    c.add_argument("--name", default=None)
    c.add_argument("--fpr", type=float, default=None, help="target control FPR (default: the first detector's)")
    c.add_argument("--confidence", type=float, default=0.95)
    c.add_argument("--control", nargs="+", default=None, help="your own benign calibration files (label-0 rows)")
    c.add_argument("--model", default=None)
    c.add_argument("--json", default=None)
    c.set_defaults(func=cmd_combine)

    k = sub.add_parser("calibrate", help="re-set a detector's threshold on your own benign rows (weights unchanged)")
    k.add_argument("detector")
    k.add_argument("--control", nargs="+", required=True,
                   help="benign files (label-0 rows are used) in the form the detector will watch, or recipe:NAME")
    k.add_argument("--fpr", type=float, default=None, help="target false-positive rate (default: the detector's)")
    k.add_argument("--confidence", type=float, default=0.95, help="as for train (0: the plain empirical quantile)")
    k.add_argument("--out", default=None, help="where to save (default: replace DETECTOR in place)")
    k.add_argument("--model", default=None)
    k.add_argument("--json", default=None)
    k.set_defaults(func=cmd_calibrate)

    from detectors.cli_guard import register

    register(sub)
    from detectors.cli_scan import register as register_scan

    register_scan(sub)
    from detectors.cli_serve import register as register_serve

    register_serve(sub)
    __import__("detectors.cli_sae", fromlist=["register"]).register(sub)
    from detectors.cli_organisms import register as register_organisms

    register_organisms(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run a subcommand; every error a user can cause ends as one ``coalign: error: ...`` line (exit 2),
    Ctrl-C as ``coalign: interrupted`` (exit 130), never as a traceback."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("coalign: interrupted", file=sys.stderr)
        return 130
    except (CoalignError, OSError, UnicodeDecodeError) as e:
        print(f"coalign: error: {_one_line(e)}", file=sys.stderr)
        return 2


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename is not None:
        return f"{e.filename}: {e.strerror or e}"
    return " ".join(str(e).split()) or type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
