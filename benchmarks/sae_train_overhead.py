"""Does coalign's SAE training loop cost anything over SAE Lens's own ``SAETrainer``?

Both arms train the same BatchTopK SAE (same initialisation, config and steps) on the same
activation rows: SAE Lens's ``SAETrainer.fit`` fed a plain iterator of ready-made batches, and
coalign's :func:`circuits.sae_train.fit_saes` fed an :class:`~circuits.sae_data.ActivationStream`
replaying the rows (bf16 buffer, a fresh permutation per epoch). The arms alternate (ABAB...) in
one process so machine load hits both alike; the ratio is baseline time / coalign time (>= 1: no
overhead). The rows are Gaussian with SmolLM2's width: the loop's cost does not depend on their values.

Run: python benchmarks/sae_train_overhead.py [--steps 60] [--repeats 3] [--out benchmarks/results/sae/train_overhead.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch

from circuits.sae_data import ActivationStream
from circuits.sae_train import SAETrainSpec, _init_from_data, _trainer_cfg, fit_saes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--d", type=int, default=576)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from sae_lens import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig, SAETrainer

    spec = SAETrainSpec(expansion=4, k=32, steps=args.steps, batch_size=1024)
    g = torch.Generator().manual_seed(0)
    rows = (torch.randn(spec.batch_size * 20, args.d, generator=g) * 3 + 1).to(torch.bfloat16).float()
    torch.manual_seed(0)
    base = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=args.d, d_sae=4 * args.d, k=32, normalize_activations="expected_average_only_in",
                                                           aux_loss_coefficient=spec.aux_loss_coefficient))
    times: dict[str, list[float]] = {"sae_lens": [], "coalign": []}
    for _ in range(args.repeats):
        # SAE Lens alone: the same initialisation coalign does, then fit on ready-made batches
        sae = copy.deepcopy(base)
        perm = torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(1))
        batches = [rows[perm[i : i + spec.batch_size]] for i in range(0, rows.shape[0], spec.batch_size)]
        batches = (batches * (args.steps // len(batches) + 2))[: args.steps + 1]
        tr = SAETrainer(cfg=_trainer_cfg(spec, None), sae=sae, data_provider=iter(batches))
        tr.activation_scaler.scaling_factor = _init_from_data(sae, batches[0])
        t0 = time.perf_counter()
        tr.fit()
        times["sae_lens"].append(time.perf_counter() - t0)
        # coalign: fit_saes on a replaying stream
        sae = copy.deepcopy(base)
        stream = ActivationStream.from_tensors({"h": rows}, spec.batch_size, seed=1)
        _, _, secs = fit_saes({"h": sae}, stream, spec)
        times["coalign"].append(secs)
        print({k: round(v[-1], 2) for k, v in times.items()}, flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {"steps": args.steps, "batch_size": spec.batch_size, "d_in": args.d, "d_sae": 4 * args.d, "repeats": args.repeats,
           "seconds": times, "median_seconds": med, "ratio_sae_lens_over_coalign": med["sae_lens"] / med["coalign"],
           "torch_threads": torch.get_num_threads()}
    print(json.dumps(out, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
