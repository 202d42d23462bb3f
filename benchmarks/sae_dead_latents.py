"""Dead and dense latents of shipped SAEs over >= 1M tokens they were never trained on.

The training run records its corpus split (ctx, seed, holdout, max_tokens) and the hash of its
training windows. This script rebuilds the windows from the same corpus files, checks that hash (so
the unseen windows are really unseen), and streams every window that was not trained on (the held-out
share and the part of the corpus beyond the ``max_tokens`` subset) through the model once, with every
given SAE at its hook. It reports, per SAE, the dead fraction (never fires) and dense fraction (fires
on > 10% of tokens) after 15k, 100k, 250k, 500k, 1M ... tokens, plus explained variance and L0 over
all of them. Positions and sinks are those of the SAE's evaluation (``keep_mask``).

Run (the corpus is the SAE's training corpus; see benchmarks/README.md, "Sparse autoencoders"):
    python benchmarks/sae_dead_latents.py --data FILE... --out benchmarks/results/sae/dead_latents_1m.json
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from circuits import load_model
from circuits.sae import load_sae, shipped_saes
from circuits.sae_data import activation_batches, load_corpus, split_windows, token_windows, windows_hash
from circuits.sae_eval import DENSE

MARKS = (15_000, 100_000, 250_000, 500_000, 1_000_000, 1_500_000, 2_000_000)


def unseen_windows(model, sae, files):
    """Windows of ``files`` that the SAE's training run did not train on (checked by its data hash)."""
    meta = sae.meta
    t = meta["train"]
    windows = token_windows(model.tokenizer, load_corpus(files), t["ctx"])
    train_w, held = split_windows(windows, t["holdout"], t["seed"])
    used = train_w[: max(1, t["max_tokens"] // t["ctx"])] if t["max_tokens"] else train_w
    if windows_hash(used) != meta["data_hash"]:
        raise SystemExit(f"{sae.path}: these corpus files do not rebuild its training windows (data hash differs)")
    rest = held + train_w[len(used):]
    random.Random(1).shuffle(rest)  # the curve by token count should not follow file order
    return rest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", required=True, help="the SAEs' training corpus files, in the training order")
    ap.add_argument("--sae", nargs="*", help="SAE directories (default: every shipped SAE)")
    ap.add_argument("--max-tokens", type=int, default=1_200_000)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    from sae_lens.evals import ExplainedVarianceCalculator

    model = load_model()
    paths = args.sae or [s["path"] for s in shipped_saes()]
    saes = [load_sae(p, model) for p in paths]
    hashes = {s.meta["data_hash"] for s in saes}
    if len(hashes) != 1:
        raise SystemExit(f"the SAEs were trained on different windows ({sorted(hashes)}); run them separately")
    windows = unseen_windows(model, saes[0], args.data)
    t0 = time.time()
    hooks = list(dict.fromkeys(s.hook for s in saes))
    fired = [torch.zeros(s.d_sae, dtype=torch.float64) for s in saes]
    evs = [ExplainedVarianceCalculator() for _ in saes]
    l0 = [0.0 for _ in saes]
    curve: list[dict] = []
    n, marks = 0, list(MARKS)
    for got in activation_batches(model, hooks, windows):
        for i, s in enumerate(saes):
            x = got[s.hook]
            f = s.encode(x).float()
            evs[i].add_batch(s.decode(f).float(), x)
            active = f > 0
            fired[i] += active.sum(0).double()
            l0[i] += float(active.sum())
        n += got[hooks[0]].shape[0]
        while marks and n >= marks[0]:
            curve.append({"tokens": n, **{s.hook: float((fired[i] == 0).double().mean()) for i, s in enumerate(saes)}})
            print(f"{n:>9} tokens  dead: " + "  ".join(f"{s.hook} {c:.3f}" for s, c in zip(saes, list(curve[-1].values())[1:])), flush=True)
            marks.pop(0)
        if n >= args.max_tokens:
            break
    rows = []
    for i, s in enumerate(saes):
        freq = fired[i] / n
        rows.append({
            "sae": s.name, "hook": s.hook, "fingerprint": s.fingerprint, "d_sae": s.d_sae,
            "n_tokens": n, "dead_fraction": float((fired[i] == 0).double().mean()),
            "dense_fraction": float((freq > DENSE).double().mean()),
            "rare_fraction_below_1e-5": float((freq < 1e-5).double().mean()),
            "explained_variance": float(evs[i].compute()), "l0": l0[i] / n,
        })
    out = {"command": "python benchmarks/sae_dead_latents.py --data " + " ".join(args.data) + f" --max-tokens {args.max_tokens} --out {args.out}",
           "n_unseen_windows": len(windows), "seconds": round(time.time() - t0, 1), "dead_by_tokens": curve, "saes": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
