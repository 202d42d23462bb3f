"""Load on the guarded server with SmolLM2-135M-Instruct, over HTTP on 127.0.0.1.

Two servers over the same loaded model, both started in this process: the guarded one
(``GuardEngine``: 3 linear detectors at blocks.10/15/20.hook_resid_post, the packaged monitor
policy, every token scored) and the same server with no detectors (``BareEngine``:
``transformers``' ``generate``). Greedy decoding; the two servers' token ids are checked equal.

* **TTFT and per-token time** (one client, streamed): time from sending the request to the first
  token chunk, and (last token chunk - first token chunk) / (tokens - 1). Guarded and bare requests
  alternate (order rotated), and the ratio is the median over pairs of guarded / bare.
  The median ratio comes with a 95% bootstrap interval over the pairs.
* **Throughput** (guarded): streamed requests sent by 1 client one after another, and by 8 clients
  at once (each sends its share one after another); completion tokens per second of wall time,
  summed over ``--rounds`` interleaved rounds (1 client, 8 clients, 8 clients on the bare server).
  The 8-client run gains only from the worker's micro-batching.

Run:  nice -n 10 python -m benchmarks.serve_load [--reps 5] [--requests 24] [--rounds 3] [--max-tokens 32] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

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


def streamed(url: str, model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    """One streamed request: token ids, time to first token, time of the last token."""
    import httpx

    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "stream": True}
    t0 = time.perf_counter()
    first = last = None
    ids: list[int] = []
    done = False
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                co = json.loads(line[6:]).get("coalign") or {}
                if co.get("token_id") is not None:
                    now = time.perf_counter()
                    first = now if first is None else first
                    last = now
                    ids.append(int(co["token_id"]))
    if not done or first is None:
        raise RuntimeError(f"stream from {url} ended without [DONE] or tokens")
    return {"ids": ids, "ttft": first - t0, "per_token": (last - first) / max(1, len(ids) - 1), "total": time.perf_counter() - t0}


def throughput(url: str, model: str, clients: int, n: int, max_tokens: int) -> dict[str, Any]:
    share = [[PROMPTS[i % len(PROMPTS)] for i in range(c, n, clients)] for c in range(clients)]

    def run(prompts: list[str]) -> int:
        return sum(len(streamed(url, model, p, max_tokens)["ids"]) for p in prompts)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        tokens = sum(pool.map(run, share))
    wall = time.perf_counter() - t0
    return {"clients": clients, "requests": n, "tokens": tokens, "wall_s": round(wall, 3), "tokens_per_s": round(tokens / wall, 2)}


def _total(runs: list[dict[str, Any]]) -> dict[str, Any]:
    tokens, wall = sum(r["tokens"] for r in runs), sum(r["wall_s"] for r in runs)
    return {"clients": runs[0]["clients"], "requests": sum(r["requests"] for r in runs), "tokens": tokens,
            "wall_s": round(wall, 3), "tokens_per_s": round(tokens / wall, 2)}


def median_ci(xs: list[float], reps: int = 2000, seed: int = 0) -> list[float]:
    """95% bootstrap interval of the median (percentile method, resampling the pairs)."""
    import random

    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(xs, k=len(xs))) for _ in range(reps))
    return [round(meds[int(0.025 * reps)], 4), round(meds[int(0.975 * reps) - 1], 4)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5, help="TTFT/per-token repetitions of the 8 prompts (default 5)")
    ap.add_argument("--requests", type=int, default=24, help="requests per throughput variant, over all rounds (default 24)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved throughput rounds (default 3)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: the machine is shared)")
    ap.add_argument("--batch-wait-ms", type=float, default=5.0)
    ap.add_argument("--batch-wait-max-ms", type=float, default=50.0)
    ap.add_argument("--json", default="benchmarks/results/serve_load.json")
    args = ap.parse_args(argv)

    import torch

    from circuits import load_model
    from detectors.detector import Detector
    from detectors.server import BareEngine, GuardEngine, create_app
    from detectors.server.run import ServerThread

    torch.set_num_threads(args.threads)
    model = load_model("smollm2-135m-instruct")
    g = torch.Generator().manual_seed(0)
    dets = [Detector.from_linear(f"det{i}", model, h, torch.randn(model.d_model, generator=g) / model.d_model**0.5, threshold=0.0)
            for i, h in enumerate(HOOKS)]
    tmp = Path(tempfile.mkdtemp(prefix="serve_load_"))
    wait = {"batch_wait_s": args.batch_wait_ms / 1000, "batch_wait_max_s": args.batch_wait_max_ms / 1000}
    guarded = ServerThread(create_app(GuardEngine(model, dets), audit=tmp / "guarded.jsonl", **wait)).start()
    bare = ServerThread(create_app(BareEngine(model), audit=tmp / "bare.jsonl", **wait)).start()
    mid = model.model_id
    try:
        for url in (guarded.url, bare.url):  # warm-up
            streamed(url, mid, PROMPTS[0], 4)
        pairs = []
        for rep in range(args.reps):
            for i, p in enumerate(PROMPTS):
                order = [("guarded", guarded.url), ("bare", bare.url)]
                if (rep + i) % 2:
                    order.reverse()
                got = {name: streamed(url, mid, p, args.max_tokens) for name, url in order}
                if got["guarded"]["ids"] != got["bare"]["ids"]:
                    raise RuntimeError(f"prompt {i}: the guarded and bare servers generated different tokens")
                pairs.append(got)
        ttft = [x["guarded"]["ttft"] / x["bare"]["ttft"] for x in pairs]
        per_tok = [x["guarded"]["per_token"] / x["bare"]["per_token"] for x in pairs if len(x["bare"]["ids"]) > 1]
        runs: dict[str, list[dict[str, Any]]] = {"guarded_1_client": [], "guarded_8_clients": [], "bare_8_clients": []}
        share = max(8, args.requests // args.rounds)
        for _ in range(args.rounds):  # interleaved, so that a change in the machine's load hits every variant alike
            runs["guarded_1_client"].append(throughput(guarded.url, mid, 1, share, args.max_tokens))
            runs["guarded_8_clients"].append(throughput(guarded.url, mid, 8, share, args.max_tokens))
            runs["bare_8_clients"].append(throughput(bare.url, mid, 8, share, args.max_tokens))
    finally:
        guarded.stop()
        bare.stop()
    batches = [json.loads(x).get("batch_size") for x in (tmp / "guarded.jsonl").read_text().splitlines()]
    q = statistics.quantiles
    res = {
        "model": mid, "detectors": len(dets), "hooks": list(HOOKS), "max_tokens": args.max_tokens, "threads": args.threads,
        "batch_wait_ms": args.batch_wait_ms, "batch_wait_max_ms": args.batch_wait_max_ms,
        "ttft": {"n_pairs": len(ttft), "median_ratio": round(statistics.median(ttft), 4), "ci95": median_ci(ttft),
                 "iqr": [round(v, 4) for v in q(ttft, n=4)[::2]], "ratios": [round(v, 4) for v in ttft],
                 "guarded_median_s": round(statistics.median(x["guarded"]["ttft"] for x in pairs), 4),
                 "bare_median_s": round(statistics.median(x["bare"]["ttft"] for x in pairs), 4)},
        "per_token": {"n_pairs": len(per_tok), "median_ratio": round(statistics.median(per_tok), 4), "ci95": median_ci(per_tok),
                      "iqr": [round(v, 4) for v in q(per_tok, n=4)[::2]], "ratios": [round(v, 4) for v in per_tok],
                      "guarded_median_s": round(statistics.median(x["guarded"]["per_token"] for x in pairs), 5),
                      "bare_median_s": round(statistics.median(x["bare"]["per_token"] for x in pairs), 5)},
        "throughput": {**{k: _total(v) for k, v in runs.items()},
                       "ratio_8_vs_1": round(_total(runs["guarded_8_clients"])["tokens_per_s"] / _total(runs["guarded_1_client"])["tokens_per_s"], 3),
                       "ratio_8_vs_1_per_round": [round(e["tokens_per_s"] / o["tokens_per_s"], 3)
                                                  for e, o in zip(runs["guarded_8_clients"], runs["guarded_1_client"])],
                       "guarded_vs_bare_8_clients": round(_total(runs["guarded_8_clients"])["tokens_per_s"] / _total(runs["bare_8_clients"])["tokens_per_s"], 3),
                       "guarded_batch_sizes": {str(k): batches.count(k) for k in sorted({b for b in batches if b is not None})}},
    }
    print(json.dumps(res, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
