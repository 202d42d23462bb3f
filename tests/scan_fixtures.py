"""A tiny model saved to disk, two detectors on it and a Parquet corpus: what the scan tests share."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from tiny import WORDS, tiny_hf_model, tiny_tokenizer


def scan_setup(root: Path, n: int = 120, files: int = 3) -> dict:
    """``{"model", "detectors", "corpus", "ids"}`` under ``root``: a saved tiny model, a mean-read and a
    last-token detector with thresholds near the median score, and ``n`` rows over ``files`` Parquet files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from circuits import load_model
    from detectors import Detector
    from detectors.scan_io import item_of

    tiny_hf_model().save_pretrained(root / "m")
    tiny_tokenizer().save_pretrained(root / "m")
    model = load_model(root / "m")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        words = lambda k: " ".join(rng.choice(WORDS, k))  # noqa: E731
        kind = i % 3
        if kind == 0:
            rows.append({"id": f"r{i:04d}", "prompt": words(5), "response": words(int(rng.integers(1, 8))), "messages": None, "text": None})
        elif kind == 1:
            msgs = [{"role": "user", "content": words(4)}, {"role": "assistant", "content": words(3)}]
            rows.append({"id": f"r{i:04d}", "prompt": None, "response": None, "text": None,
                         "messages": json.dumps(msgs)})
        else:
            rows.append({"id": f"r{i:04d}", "prompt": None, "response": None, "messages": None, "text": words(6)})
    (root / "corpus").mkdir()
    per = -(-n // files)
    for k in range(files):
        pq.write_table(pa.Table.from_pylist(rows[k * per:(k + 1) * per]), root / "corpus" / f"part-{k}.parquet")
    g = torch.Generator().manual_seed(0)
    dets = []
    for name, hook, select in (("dec", "blocks.1.hook_resid_post", "response_mean"), ("syc", "blocks.0.hook_resid_post", "last")):
        det = Detector.from_linear(name, model, hook, torch.randn(model.d_model, generator=g), select=select)
        scores = det.score(model, [item_of(r, "row") for r in rows])
        det.threshold = float(np.median(scores))  # about half the rows flagged: flags are compared, not all False
        det.save(root / name)
        dets.append(str(root / name))
    return {"model": str(root / "m"), "detectors": dets, "corpus": str(root / "corpus"), "ids": [r["id"] for r in rows]}


def read_scores(out: Path):
    import pyarrow.parquet as pq

    return pq.read_table(out / "parts").to_pandas().set_index("id").sort_index()
