"""What per-token SAE feature reports cost the Guard on SmolLM2-135M-Instruct (issue 26: ≤ 1.05× bare ``generate``).

Variants, interleaved in one run (rotating which goes first), batch 1, greedy, the same number of new tokens:
  * ``bare``: ``hf_model.generate`` with no hooks.
  * ``guarded``: ``Guard.generate`` with a detector at blocks.16.hook_resid_post (the shipped SAE's hook),
    packaged monitor policy, its threshold at the median token score so a flag rises on many tokens.
  * ``features``: the same Guard with the shipped SAE registered and ``features=5``: the hook's activations are
    kept every step and each flag that rises is explained in SAE features (encode + exact decomposition).
Each ratio is the median over repetitions of the per-repetition time ratio. The tokens are checked to be
identical across the three.

Run:  python -m pytest benchmarks/bench_guard_features.py -s
Env:  COALIGN_BENCH_THREADS (1), COALIGN_BENCH_TOKENS (32), COALIGN_BENCH_REPS (7), COALIGN_FEATURES_MAX (1.05).
"""

from __future__ import annotations

import os
import statistics

import numpy as np
import pytest
import torch
from benchmarks.bench_guard_overhead import NEW, PROMPTS, REPS, batch_inputs, interleaved, ratio, smollm2  # noqa: F401 (fixture)

HOOK = "blocks.16.hook_resid_post"
MAX_RATIO = float(os.environ.get("COALIGN_FEATURES_MAX", "1.05"))


def test_feature_report_overhead(benchmark, smollm2):  # noqa: F811 (the imported fixture)
    from circuits.sae import find_sae
    from detectors.detector import Detector
    from detectors.guard import Guard
    from detectors.router import Router

    sae = find_sae(HOOK, smollm2)
    w = torch.randn(smollm2.d_model, generator=torch.Generator().manual_seed(0)) / smollm2.d_model**0.5
    probe = Guard(smollm2, [Detector.from_linear("det", smollm2, HOOK, w, threshold=0.0)], scoring="token")
    first = probe.generate(PROMPTS[:1], max_new_tokens=NEW, min_new_tokens=NEW)[0]
    det = Detector.from_linear("det", smollm2, HOOK, w, threshold=float(np.median(first.scores["det"])))
    plain = Guard(smollm2, [det], scoring="token")
    router = Router()
    router.register_sae(HOOK, sae)
    reporting = Guard(smollm2, [det], router=router, features=5, scoring="token")
    ids, mask = batch_inputs(plain, PROMPTS[:1])
    width, pad = ids.shape[1], plain._pad

    def bare():
        with torch.inference_mode():
            return smollm2.hf_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW, min_new_tokens=NEW,
                                             do_sample=False, pad_token_id=pad)

    fns = {"bare": bare,
           "guarded": lambda: plain.generate(PROMPTS[:1], max_new_tokens=NEW, min_new_tokens=NEW),
           "features": lambda: reporting.generate(PROMPTS[:1], max_new_tokens=NEW, min_new_tokens=NEW)}
    ref = bare()[0, width:].tolist()
    out_plain, out_feat = fns["guarded"]()[0], fns["features"]()[0]
    assert out_plain.token_ids == ref and out_feat.token_ids == ref
    reported = [a for a in out_feat.actions if "sae_features" in a.detail]
    assert reported, "the threshold at the median token score makes flags rise"
    times = benchmark.pedantic(interleaved, args=(fns, REPS), rounds=1, iterations=1)
    info = {"new_tokens": NEW, "reps": REPS, "flags_explained": len(reported), "sae_fingerprint": sae.fingerprint,
            "ms_per_token": {k: 1000 * statistics.median(v) / NEW for k, v in times.items()},
            "ratio_features_vs_bare": ratio(times, "features", "bare"), "ratio_guarded_vs_bare": ratio(times, "guarded", "bare"),
            "ratio_features_vs_guarded": ratio(times, "features", "guarded")}
    benchmark.extra_info.update(info)
    print(f"\n[guard feature reports] {NEW} tokens, {REPS} reps, {len(reported)} flags explained: "
          f"features/bare {info['ratio_features_vs_bare']:.4f}, guarded/bare {info['ratio_guarded_vs_bare']:.4f}, "
          f"features/guarded {info['ratio_features_vs_guarded']:.4f}; ms/token {info['ms_per_token']}")
    assert info["ratio_features_vs_bare"] <= MAX_RATIO
