"""The product path for a sycophancy detector that meets the CAA figure: ``Detector.train`` with the
conditional probe on CAA's *generate* split (a user-supplied file), hooks swept on its validation
part, threshold calibrated on the shipped benign control chats; then scored once on CAA's *test*
split, never trained on. Saves the detector to ``runs/syc_caa``. A second detector is trained on
80% of the generate pairs and calibrated on the other 20% (in-format benign answers) instead of
the shipped chats: ``runs/syc_caa_ab_control``.

Run: python benchmarks/sycophancy_detector_caa.py [--out benchmarks/results/sycophancy_detector_caa.json]
CLI equivalent (sweeping every other layer instead of blocks 14-22):
    coalign train sycophancy --data ../shared/datasets/caa/generate/sycophancy/generate_dataset.json \\
        --method conditional --out runs/syc_caa
    coalign eval runs/syc_caa --data ../shared/datasets/caa/test/sycophancy/test_dataset_ab.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from circuits import load_model
from detectors import Detector
from probe.datasets import load_dataset
from probe.metrics import bootstrap_auroc_ci, calibration_report

CAA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "caa"
HOOKS = [f"blocks.{i}.hook_resid_post" for i in range(14, 24, 2)]


def evaluate(model, det, test) -> dict:
    s = det.score(model, test.items)
    rep = calibration_report(test.labels, s, det.threshold)
    return {"hook": det.hooks[0], "val_auroc": det.metrics.get("val_auroc"), "threshold": det.threshold,
            "stream_threshold": det.stream_threshold, "n_control": det.metrics.get("n_control"), "caa_test": rep,
            "caa_test_auroc_ci95": bootstrap_auroc_ci(test.labels, s), "n_test": len(s)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--save", default="runs/syc_caa")
    args = ap.parse_args()
    model = load_model()
    gen = load_dataset(CAA / "generate" / "sycophancy" / "generate_dataset.json")
    test = load_dataset(CAA / "test" / "sycophancy" / "test_dataset_ab.json")
    res = {}
    # A: every generate row for training; threshold on the shipped benign chats
    det = Detector.train("sycophancy", model, data=gen, method="conditional", layer=HOOKS)
    det.save(args.save)
    res["shipped_control"] = evaluate(model, det, test)
    # B: the last 20% of generate pairs held out of training as an in-format control set (their
    # non-sycophantic answers), so the threshold is calibrated on A/B answers like the ones watched
    groups = list(dict.fromkeys(gen.groups))
    held = set(groups[int(0.8 * len(groups)):])
    is_held = np.array([g in held for g in gen.groups])
    det_b = Detector.train("sycophancy", model, data=gen.subset(~is_held), method="conditional", layer=HOOKS,
                           control=gen.subset(is_held))
    det_b.save(args.save + "_ab_control")
    res["in_format_control"] = evaluate(model, det_b, test)
    print(json.dumps(res, indent=1, default=float))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2, default=float))


if __name__ == "__main__":
    main()
