"""CLI subcommands ``coalign sae train|eval|list|link`` (sparse autoencoders in SAE Lens format) and ``coalign explain``.

::

    coalign sae train --hook blocks.16.hook_resid_post --data corpus.txt chats.jsonl --out saes/
    coalign sae eval saes/blocks.16.hook_resid_post --data heldout.txt --json m.json
    coalign sae list
    coalign sae link dec/ saes/blocks.16.hook_resid_post --dev dev.jsonl --out dec_linked/
    coalign explain dec/ --prompt "Is the car fine?" --response "Yes, perfect." --html report.html
"""

from __future__ import annotations

import argparse
from typing import Any

from detectors.cli_common import print_table, write_json

EVAL_KEYS = ("explained_variance", "l0", "dead_fraction", "dense_fraction", "ce_loss_score", "delta_loss", "n_tokens")


def _model(name: str | None):
    from circuits import DEFAULT_MODEL, load_model

    return load_model(name or DEFAULT_MODEL)


def cmd_sae_train(args: argparse.Namespace) -> int:
    from circuits.sae_data import load_corpus
    from circuits.sae_train import SAETrainSpec, train_sae

    spec = SAETrainSpec(
        architecture=args.architecture, expansion=args.expansion, k=args.k, steps=args.steps, batch_size=args.batch_size,
        lr=args.lr, ctx=args.ctx, holdout=args.holdout, autocast=not args.no_autocast, seed=args.seed,
        checkpoints=args.checkpoints, max_tokens=args.max_tokens, ce_tokens=args.ce_tokens,
        dead_feature_window=args.dead_window,
    )
    spec.check()
    data = load_corpus(args.data)  # bad files fail here, before the model loads
    held = load_corpus(args.held_out) if args.held_out else None
    model = _model(args.model)
    saes = train_sae(model, args.hook, data, args.out, spec, held_out=held, dtype=args.dtype, progress=True)
    rows = [{"hook": h, "path": str(s.path), "d_sae": s.d_sae, **{k: s.metrics.get(k) for k in EVAL_KEYS}} for h, s in saes.items()]
    print_table(f"trained {len(rows)} SAE(s) -> {args.out}", rows)
    write_json(args.json, rows)
    return 0


def cmd_sae_eval(args: argparse.Namespace) -> int:
    from circuits.sae import find_sae
    from circuits.sae_data import load_corpus, token_windows
    from circuits.sae_eval import evaluate_sae

    data = load_corpus(args.data)
    model = _model(args.model)
    sae = find_sae(args.sae, model)
    ctx = int((sae.meta.get("train") or {}).get("ctx", 128))
    m = evaluate_sae(model, sae, token_windows(model.tokenizer, data, ctx), ce_tokens=args.ce_tokens, progress=True)
    print_table(f"SAE {sae.name} on {', '.join(args.data)}", [{k: m[k] for k in EVAL_KEYS}])
    write_json(args.json, {"sae": str(sae.path), "fingerprint": sae.fingerprint, **m})
    return 0


def cmd_sae_list(args: argparse.Namespace) -> int:
    from circuits.sae import shipped_saes

    rows = shipped_saes()
    print_table("shipped SAEs", rows, ["name", "hook", "model_id", "d_sae", "explained_variance", "l0", "delta_loss", "path"])
    write_json(args.json, rows)
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from circuits.errors import InputError
    from circuits.generation import complete
    from circuits.sae import find_sae, load_sae, shipped_saes
    from circuits.sae_data import load_corpus
    from detectors import Detector
    from detectors.explain import explain
    from detectors.explain_html import write_html

    if args.response is not None and args.prompt is None:
        raise InputError("--response needs --prompt")
    items: list[Any] = load_corpus([args.data]) if args.data else []
    model = _model(args.model)
    det = Detector.load(args.detector, model)
    if args.sae:
        saes = [find_sae(s, model) for s in args.sae]
    else:
        saes = [load_sae(r["path"], model) for r in shipped_saes() if r["model_id"] == model.model_id]
        if not saes:
            raise InputError(f"no shipped SAE for {model.model_id}; pass --sae DIR (train one with `coalign sae train`)")
    if args.prompt is not None:
        response = args.response if args.response is not None else complete(model, [args.prompt], max_new_tokens=args.max_new_tokens)[0]
        items = [(args.prompt, response)]
    ex = explain(model, det, items, saes, top=args.top, causal_k=args.causal_k)
    rows = []
    for e in ex:
        feats = ", ".join(f"#{f['id']} {f['attribution']:+.2f}" for f in e["features"][:5])
        rows.append({"item": e["item"], "score": e["score"], "flagged": e["flagged"], "top features": feats,
                     "error share": e["error_share"], "approximate": e["approximate"],
                     "top-k drop": (e["causal"] or {}).get("drop_top", ""), "random-k drop": (e["causal"] or {}).get("drop_random", "")})
    print_table(f"{det.name}: features of {ex[0]['sae']['name'] if ex else ''}", rows)
    if args.html:
        write_html(args.html, ex, title=f"coalign explain: {det.name}")
        print(f"HTML report -> {args.html}")
    write_json(args.json, ex)
    return 0


def cmd_sae_link(args: argparse.Namespace) -> int:
    from pathlib import Path

    import probe
    from circuits.sae import find_sae
    from circuits.sae_data import load_corpus
    from detectors import Detector
    from detectors.sae_link import link_features, write_link

    dev = load_corpus([args.dev])
    benign = load_corpus([args.benign or Path(probe.__file__).parent / "data" / "benign_control.jsonl"])[: args.n_benign]
    model = _model(args.model)
    det = Detector.load(args.detector, model)
    sae = find_sae(args.sae, model)
    link = link_features(model, det, sae, dev, benign, n_candidates=args.candidates, max_features=args.max_features, max_kl=args.max_kl)
    write_link(args.detector, args.out, link)
    print_table(f"{det.name} -> clamp {len(link['features'])} latents of {sae.name} ({link['n_flagged']} flagged dev items)",
                [{"feature": e["feature"], "score drop": e["score_drop"], "benign KL": e["benign_kl"], "attribution": e["attribution"]}
                 for e in link["effects"]] + [{"feature": "all together", "score drop": link["combined"]["score_drop"],
                                                "benign KL": link["combined"]["benign_kl"]}])
    write_json(args.json, link)
    return 0


def register(subparsers: Any) -> None:
    """Add ``sae`` (train, eval, list) to an argparse subparsers object."""
    p = subparsers.add_parser("sae", help="train, evaluate and list sparse autoencoders (SAE Lens format)")
    sub = p.add_subparsers(dest="sae_command", required=True)

    t = sub.add_parser("train", help="train one SAE per hook on a text corpus (progress shown)")
    t.add_argument("--hook", action="append", required=True, metavar="HOOK", help="hook name (repeatable)")
    t.add_argument("--data", nargs="+", required=True, metavar="FILE", help="corpus: .txt plain text, .jsonl/.json rows (text, messages, prompt/response, instruction/output)")
    t.add_argument("--held-out", nargs="+", metavar="FILE", help="evaluation text (default: --holdout of the corpus windows)")
    t.add_argument("--out", required=True, metavar="DIR", help="output directory; one SAE per hook inside")
    t.add_argument("--model", default=None, help="model name or local folder (default: the embedded SmolLM2)")
    t.add_argument("--architecture", default="batchtopk", choices=("batchtopk", "topk", "matryoshka_batchtopk"))
    t.add_argument("--expansion", type=int, default=8, help="d_sae / d_model (default 8)")
    t.add_argument("--k", type=float, default=32, help="active latents per token (default 32)")
    t.add_argument("--steps", type=int, default=1500)
    t.add_argument("--batch-size", type=int, default=4096, help="tokens per step")
    t.add_argument("--lr", type=float, default=4e-4)
    t.add_argument("--ctx", type=int, default=128, help="tokens per window")
    t.add_argument("--holdout", type=float, default=0.05)
    t.add_argument("--max-tokens", type=int, default=0, help="train on a random subset of about this many tokens (0: all)")
    t.add_argument("--ce-tokens", type=int, default=50_000, help="tokens for the spliced-loss evaluation")
    t.add_argument("--dead-window", type=int, default=50, help="steps without firing before a latent counts as dead (AuxK)")
    t.add_argument("--checkpoints", type=int, default=0, help="checkpoints to write (a rerun resumes from the latest)")
    t.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    t.add_argument("--no-autocast", action="store_true", help="train in fp32 (default: bf16 autocast)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--json", metavar="OUT")
    t.set_defaults(func=cmd_sae_train)

    e = sub.add_parser("eval", help="held-out metrics of an SAE on text")
    e.add_argument("sae", metavar="SAE", help="SAE directory or shipped name (see `coalign sae list`)")
    e.add_argument("--data", nargs="+", required=True, metavar="FILE")
    e.add_argument("--model", default=None)
    e.add_argument("--ce-tokens", type=int, default=50_000)
    e.add_argument("--json", metavar="OUT")
    e.set_defaults(func=cmd_sae_eval)

    x = subparsers.add_parser("explain", help="explain a detector's scores in SAE features and model components")
    x.add_argument("detector", metavar="DET", help="detector artifact directory")
    src = x.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", metavar="TEXT", help="a user prompt (the model answers it unless --response is given)")
    src.add_argument("--data", metavar="FILE", help="chats: .jsonl/.json rows with messages or prompt/response")
    x.add_argument("--response", metavar="TEXT", help="the assistant response to judge (with --prompt)")
    x.add_argument("--sae", action="append", metavar="SAE", help="SAE directory or shipped name (default: the shipped SAEs)")
    x.add_argument("--top", type=int, default=10, help="features and components to list (default 10)")
    x.add_argument("--causal-k", type=int, default=5, help="features zeroed in the causal check (0: skip)")
    x.add_argument("--max-new-tokens", type=int, default=48)
    x.add_argument("--model", default=None)
    x.add_argument("--html", metavar="OUT", help="write a self-contained HTML report")
    x.add_argument("--json", metavar="OUT")
    x.set_defaults(func=cmd_explain)

    k = sub.add_parser("link", help="choose SAE latents to clamp for a detector by measured causal effect")
    k.add_argument("detector", metavar="DET", help="detector artifact directory")
    k.add_argument("sae", metavar="SAE", help="SAE directory or shipped name")
    k.add_argument("--out", required=True, metavar="DIR", help="copy of the detector with sae_link.json added")
    k.add_argument("--dev", required=True, metavar="FILE", help="development chats (the detector's flags among them are used)")
    k.add_argument("--benign", metavar="FILE", help="benign prompts/chats for the KL cost (default: the shipped benign control prompts)")
    k.add_argument("--n-benign", type=int, default=20)
    k.add_argument("--candidates", type=int, default=12)
    k.add_argument("--max-features", type=int, default=6)
    k.add_argument("--max-kl", type=float, default=0.05, help="largest mean benign KL (nats/token) a chosen latent may cause")
    k.add_argument("--model", default=None)
    k.add_argument("--json", metavar="OUT")
    k.set_defaults(func=cmd_sae_link)

    ls = sub.add_parser("list", help="the SAEs shipped with coalign")
    ls.add_argument("--json", metavar="OUT")
    ls.set_defaults(func=cmd_sae_list)
