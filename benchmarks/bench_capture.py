"""Capture throughput vs the bare Hugging Face forward on the same batch, as ratios from one run.

Run: ``python -m pytest benchmarks/bench_capture.py --benchmark-only -s``

The three contenders are interleaved round by round and the ratio of medians is reported, so
machine noise hits them alike. Acceptance: capture at one hook with a full pass >= 0.95x the bare
forward's throughput; with early stop at the middle layer >= 1.8x.
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch

from circuits import capture, load_model

ROUNDS = 7


@pytest.fixture(scope="module")
def model():
    return load_model("smollm2-135m-instruct")


def _texts(n: int = 16, words: int = 90) -> list[str]:
    base = "The committee reviewed the annual report and noted that revenue grew while costs fell across regions".split()
    return [" ".join(base[(i + j) % len(base)] for j in range(words)) for i in range(n)]


def test_capture_throughput_ratio(model, benchmark):
    torch.set_grad_enabled(False)
    texts = _texts()
    tok = model.tokenizer(texts, return_tensors="pt", padding=True)
    deepest = f"blocks.{model.n_layers - 1}.hook_resid_post"
    middle = f"blocks.{model.n_layers // 2 - 1}.hook_resid_post"

    def bare():
        with torch.inference_mode():
            model.hf_model(**tok)

    contenders = {
        "bare_hf_forward": bare,
        "capture_full": lambda: capture(model, texts, deepest, batch_size=len(texts)),
        "capture_early_stop_middle": lambda: capture(model, texts, middle, batch_size=len(texts)),
    }
    for fn in contenders.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(ROUNDS):
        for name, fn in contenders.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio_full = med["bare_hf_forward"] / med["capture_full"]
    ratio_early = med["bare_hf_forward"] / med["capture_early_stop_middle"]
    benchmark.extra_info.update(
        {"median_s": med, "throughput_ratio_full": ratio_full, "throughput_ratio_early_stop": ratio_early,
         "batch": list(tok["input_ids"].shape)}
    )
    print(f"\nbatch {list(tok['input_ids'].shape)}; median s: {med}")
    print(f"capture(full)/bare throughput = {ratio_full:.2f}x; capture(early stop @ {middle})/bare = {ratio_early:.2f}x")
    benchmark.pedantic(contenders["capture_full"], rounds=1, iterations=1)
    assert ratio_full >= 0.95
    assert ratio_early >= 1.8
