"""Ray engine vs local engine throughput on SmolLM2 (one actor), excluding start-up.

    nice -n 10 python benchmarks/scan_engines.py --json benchmarks/results/scan_engines.json

Both engines scan the same corpus (alpaca_eval instructions with the example outputs, responses cut
to 400 characters) with one detector on ``blocks.16.hook_resid_post`` twice: ``--small`` rows and
``--large`` rows. The Ray cluster is started before any timing; each engine's marginal rate
``(large - small) / (t_large - t_small)`` cancels what a run pays once (cluster and actor start-up,
model load), so the ratio compares scoring throughput. Runs alternate local/ray to share drift on a
busy machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "alpaca_benign" / "alpaca_eval" / "example" / "outputs.json"


def main(argv: list[str] | None = None) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from circuits import load_model
    from detectors import Detector
    from detectors.scan import scan
    from detectors.scan_ray import start_ray

    p = argparse.ArgumentParser()
    p.add_argument("--small", type=int, default=32)
    p.add_argument("--large", type=int, default=160)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    rows = [{"id": i, "prompt": r["instruction"], "response": r["output"][:400]}
            for i, r in enumerate(json.loads(Path(args.data).read_text())[: args.large])]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        model = load_model("smollm2-135m-instruct")
        w = torch.randn(model.d_model, generator=torch.Generator().manual_seed(0))
        Detector.from_linear("det", model, "blocks.16.hook_resid_post", w / w.norm()).save(tmp / "det")
        del model
        for n in (args.small, args.large):
            pq.write_table(pa.Table.from_pylist(rows[:n]), tmp / f"c{n}.parquet")
        start_ray(progress=False)  # cluster start-up is not timed
        times: dict[str, dict[int, float]] = {"local": {}, "ray": {}}
        for n in (args.small, args.large):
            for engine in ("local", "ray"):
                t = time.perf_counter()
                m = scan([tmp / "det"], tmp / f"c{n}.parquet", tmp / f"{engine}{n}", model="smollm2-135m-instruct",
                         engine=engine, actors=1, batch_size=args.batch_size, progress=False)
                times[engine][n] = time.perf_counter() - t
                assert m["exact"], m
                print(f"{engine:5s} {n:4d} rows {times[engine][n]:7.1f} s", flush=True)
    rate = {e: (args.large - args.small) / (t[args.large] - t[args.small]) for e, t in times.items()}
    res = {"rows": [args.small, args.large], "batch_size": args.batch_size, "seconds": times,
           "marginal_rows_per_s": rate, "ray_over_local": rate["ray"] / rate["local"],
           "threads": torch.get_num_threads()}
    print(json.dumps(res, indent=2, default=str))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=str))
    return res


if __name__ == "__main__":
    main()
