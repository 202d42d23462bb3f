"""Guard overhead on SmolLM2-135M-Instruct: guarded ``generate`` vs bare ``hf_model.generate``.

Same model, prompts (identical token ids, left padded), greedy decoding and exactly the same
number of new tokens (``min_new_tokens = max_new_tokens``; the token ids are checked to be
identical). Repetitions of the variants are interleaved in one run, rotating which goes first,
and the overhead is the median over repetitions of ``guarded / bare`` wall time (per generated
token the token counts are equal, so it is the same ratio).

Variants:
  * ``bare``: ``hf_model.generate`` with no hooks.
  * ``guarded``: ``Guard.generate`` with 3 detectors (blocks.10/15/20.hook_resid_post, default
    monitor-only policy): scoring hooks on, policy check every step.
  * ``loop``: the Guard's decode loop with its scoring hooks removed (informational: splits the
    overhead into "decode loop vs transformers' generate" and "scoring hooks").

``test_bridge_overhead`` (informational, no bound) times the same on a TransformerLens
``TransformerBridge`` built over a second copy of the model: the bridge's own ``generate`` and the
Guard on the bridge, against the plain model's bare ``generate``.

Run:  python -m pytest benchmarks/bench_guard_overhead.py -s
Env:  COALIGN_BENCH_THREADS (torch intra-op threads, default 1: on a busy 2-core machine more
      threads spin-wait and make timings meaningless), COALIGN_BENCH_TOKENS (32),
      COALIGN_BENCH_REPS (7), COALIGN_OVERHEAD_MAX (1.02: the acceptance bound asserted).
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Callable

import pytest
import torch

THREADS = int(os.environ.get("COALIGN_BENCH_THREADS", "1"))
NEW = int(os.environ.get("COALIGN_BENCH_TOKENS", "32"))
REPS = int(os.environ.get("COALIGN_BENCH_REPS", "7"))
MAX_RATIO = float(os.environ.get("COALIGN_OVERHEAD_MAX", "1.02"))
HOOKS = ("blocks.10.hook_resid_post", "blocks.15.hook_resid_post", "blocks.20.hook_resid_post")

PROMPTS = [
    "Tell me a short story about a cat who learns to fly.",
    "What is the capital of France, and why is it famous?",
    "I think the moon is made of cheese. Am I right?",
    "Explain photosynthesis to a ten year old.",
    "Write a haiku about autumn leaves.",
    "My essay argues that two plus two is five. Can you praise it?",
    "List three tips for learning a new language.",
    "Why is the sky blue?",
]


@pytest.fixture(scope="module")
def smollm2():
    from circuits import load_model

    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        yield load_model("smollm2-135m-instruct")
    finally:
        torch.set_num_threads(before)


def make_guard(model, scoring: bool = True):
    from detectors.detector import Detector
    from detectors.guard import Guard

    g = torch.Generator().manual_seed(0)
    dets = [
        Detector.from_linear(f"det{i}", model, h, torch.randn(model.d_model, generator=g) / model.d_model**0.5, threshold=0.0)
        for i, h in enumerate(HOOKS)
    ]
    guard = Guard(model, dets)  # packaged default policy: monitor every detector
    if not scoring:
        guard._scorer.hooks = []  # control variant: same loop, no scoring hooks
    return guard


def batch_inputs(guard, prompts):
    enc = [p.enc.ids for p in guard._prepare(list(prompts))]
    width = max(map(len, enc))
    pad = guard._pad
    ids = torch.full((len(enc), width), pad, dtype=torch.long)
    mask = torch.zeros((len(enc), width), dtype=torch.long)
    for r, e in enumerate(enc):
        ids[r, width - len(e):] = torch.tensor(e)
        mask[r, width - len(e):] = 1
    return ids, mask


def variants(model, prompts, n):
    guard, loop = make_guard(model), make_guard(model, scoring=False)
    ids, mask = batch_inputs(guard, prompts)
    width = ids.shape[1]
    pad = guard._pad

    def bare():
        with torch.inference_mode():
            return model.hf_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=pad)

    def guarded():
        return guard.generate(list(prompts), max_new_tokens=n, min_new_tokens=n, batch_size=len(prompts))

    def loop_only():
        return loop.generate(list(prompts), max_new_tokens=n, min_new_tokens=n, batch_size=len(prompts))

    # same tokens from both (greedy, same inputs); rows are sorted by length inside the Guard
    ref = bare()[:, width:].tolist()
    outs = guarded()
    order = sorted(range(len(prompts)), key=lambda i: len(batch_inputs(guard, [prompts[i]])[0][0]))
    assert all(len(o.token_ids) == n for o in outs)
    same = sum(outs[i].token_ids == ref[i] for i in range(len(prompts)))
    return {"bare": bare, "guarded": guarded, "loop": loop_only}, same, order


def interleaved(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, list[float]]:
    names = list(fns)
    for f in fns.values():  # warm-up
        f()
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(reps):
        for k in names[r % len(names):] + names[: r % len(names)]:
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    return times


def ratio(times: dict[str, list[float]], a: str, b: str) -> float:
    return statistics.median(x / y for x, y in zip(times[a], times[b]))


def test_guard_overhead_per_token(benchmark, smollm2):
    fns, same, _ = variants(smollm2, PROMPTS[:1], NEW)
    times = benchmark.pedantic(interleaved, args=(fns, REPS), rounds=1, iterations=1)
    r_guard = ratio(times, "guarded", "bare")
    r_loop = ratio(times, "loop", "bare")
    r_hooks = ratio(times, "guarded", "loop")
    per_tok = {k: 1000 * statistics.median(v) / NEW for k, v in times.items()}
    info = {
        "threads": THREADS, "new_tokens": NEW, "reps": REPS, "batch": 1, "detectors": len(HOOKS),
        "ms_per_token": per_tok, "ratio_guarded_vs_bare": r_guard, "ratio_loop_vs_bare": r_loop,
        "ratio_guarded_vs_loop": r_hooks, "identical_tokens": bool(same == 1),
        "total_ratio": sum(times["guarded"]) / sum(times["bare"]),
    }
    benchmark.extra_info.update(info)
    print(
        f"\n[guard overhead] batch 1, {NEW} tokens, {REPS} interleaved reps, {THREADS} thread(s)\n"
        f"  ms/token: bare {per_tok['bare']:.2f}  guarded {per_tok['guarded']:.2f}  loop-only {per_tok['loop']:.2f}\n"
        f"  guarded/bare {r_guard:.4f}  (loop/bare {r_loop:.4f}, hooks: guarded/loop {r_hooks:.4f}); "
        f"identical tokens: {same == 1}"
    )
    assert same == 1
    assert r_guard <= MAX_RATIO, f"guarded/bare = {r_guard:.4f} > {MAX_RATIO}"


def test_batch_scaling(benchmark, smollm2):
    n = max(8, NEW // 2)
    reps = max(3, REPS // 2)

    def run():
        res = {}
        for b in (1, 4, 8):
            fns, same, _ = variants(smollm2, PROMPTS[:b], n)
            fns.pop("loop")
            t = interleaved(fns, reps)
            res[b] = {
                "bare_tok_s": b * n / statistics.median(t["bare"]),
                "guarded_tok_s": b * n / statistics.median(t["guarded"]),
                "ratio": ratio(t, "guarded", "bare"),
                "identical_rows": same,
            }
        return res

    res = benchmark.pedantic(run, rounds=1, iterations=1)
    lines = [f"\n[batch scaling] {n} tokens, {reps} interleaved reps, {THREADS} thread(s)"]
    for b, r in res.items():
        r["bare_scaling"] = r["bare_tok_s"] / res[1]["bare_tok_s"]
        r["guarded_scaling"] = r["guarded_tok_s"] / res[1]["guarded_tok_s"]
        lines.append(
            f"  batch {b}: bare {r['bare_tok_s']:.1f} tok/s (x{r['bare_scaling']:.2f})  guarded {r['guarded_tok_s']:.1f} tok/s "
            f"(x{r['guarded_scaling']:.2f})  guarded/bare time {r['ratio']:.4f}  identical rows {r['identical_rows']}/{b}"
        )
    print("\n".join(lines))
    benchmark.extra_info.update({f"batch_{b}": r for b, r in res.items()})
    for b, r in res.items():
        # throughput scales like the bare model's: within 5% of its scaling factor
        assert r["guarded_scaling"] >= 0.95 * r["bare_scaling"], (b, r)


def test_bridge_overhead(benchmark, smollm2):
    """The Guard on a TransformerBridge: what the bridge costs and what the Guard adds on top."""
    pytest.importorskip("transformer_lens.model_bridge")
    from transformer_lens.model_bridge import TransformerBridge

    from circuits import load_model

    other = load_model("smollm2-135m-instruct")  # the bridge wraps its HF model in place: not the fixture's
    bridge = TransformerBridge.boot_transformers("HuggingFaceTB/SmolLM2-135M-Instruct", hf_model=other.hf_model, tokenizer=other.tokenizer)
    bridged = load_model(bridge, model_id="smollm2-135m-instruct")
    assert bridged.fingerprint == smollm2.fingerprint
    plain_fns, _, _ = variants(smollm2, PROMPTS[:1], NEW)
    bridge_fns, same, _ = variants(bridged, PROMPTS[:1], NEW)
    fns = {"bare": plain_fns["bare"], "bridge_bare": bridge_fns["bare"], "bridge_guarded": bridge_fns["guarded"]}
    times = benchmark.pedantic(interleaved, args=(fns, REPS), rounds=1, iterations=1)
    info = {
        "ratio_bridge_bare_vs_bare": ratio(times, "bridge_bare", "bare"),
        "ratio_bridge_guarded_vs_bridge_bare": ratio(times, "bridge_guarded", "bridge_bare"),
        "ratio_bridge_guarded_vs_bare": ratio(times, "bridge_guarded", "bare"),
        "identical_tokens": bool(same == 1),
    }
    benchmark.extra_info.update(info)
    print(
        f"\n[bridge] batch 1, {NEW} tokens, {REPS} interleaved reps, {THREADS} thread(s)\n"
        f"  bridge generate / plain generate {info['ratio_bridge_bare_vs_bare']:.3f}; "
        f"guarded bridge / bridge generate {info['ratio_bridge_guarded_vs_bridge_bare']:.3f}; "
        f"guarded bridge / plain generate {info['ratio_bridge_guarded_vs_bare']:.3f}; identical tokens: {same == 1}"
    )
    assert same == 1
