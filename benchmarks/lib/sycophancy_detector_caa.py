"""The product path for a sycophancy detector that meets the CAA figure: ``Detector.train`` with the
conditional probe on CAA's *generate* split (a user-supplied file), hooks swept on its validation
part, threshold calibrated on the shipped benign control chats; then scored once on CAA's *test*
split, never trained on. Saves the detector beside the results (``detector/``). A second detector is trained on
80% of the generate pairs and calibrated on the other 20% (in-format benign answers) instead of
the shipped chats: ``detector_ab_control/``.

Config: ``benchmarks/configs/sycophancy_detector_caa.toml``.
CLI equivalent (sweeping every other layer instead of blocks 14-22):
    coalign train sycophancy --data ../shared/datasets/caa/generate/sycophancy/generate_dataset.json \\
        --method conditional --out runs/syc_caa
    coalign eval runs/syc_caa --data ../shared/datasets/caa/test/sycophancy/test_dataset_ab.json
"""

from __future__ import annotations

import json

import numpy as np

from benchmarks.registry import analysis
from benchmarks.suite import Context, Result
from detectors import Detector
from probe.datasets import load_dataset
from probe.metrics import bootstrap_auroc_ci, calibration_report

HOOKS = [f"blocks.{i}.hook_resid_post" for i in range(14, 24, 2)]


def evaluate(model, det, test) -> dict:
    s = det.score(model, test.items)
    rep = calibration_report(test.labels, s, det.threshold)
    return {"hook": det.hooks[0], "val_auroc": det.metrics.get("val_auroc"), "threshold": det.threshold,
            "stream_threshold": det.stream_threshold, "n_control": det.metrics.get("n_control"), "caa_test": rep,
            "caa_test_auroc_ci95": bootstrap_auroc_ci(test.labels, s), "n_test": len(s)}


@analysis({"rows": None, "hooks": HOOKS, "caa_generate": "{datasets}/caa/generate/sycophancy/generate_dataset.json", "caa_test": "{datasets}/caa/test/sycophancy/test_dataset_ab.json"})
def run_sycophancy_detector_caa(ctx: Context) -> Result:
    """Detector A (shipped control chats) and B (in-format A/B control), each scored on CAA test."""
    p, model = ctx.p, ctx.model
    gen = load_dataset(p.caa_generate)
    if p.rows is not None:  # the first rows (A/B pairs) only
        gen = gen.subset(np.arange(2 * p.rows))
    test = load_dataset(p.caa_test)
    res = {}
    # A: every generate row for training; threshold on the shipped benign chats
    det = Detector.train("sycophancy", model, data=gen, method="conditional", layer=p.hooks)
    det.save(ctx.out / "detector")
    res["shipped_control"] = evaluate(model, det, test)
    # B: the last 20% of generate pairs held out of training as an in-format control set (their
    # non-sycophantic answers), so the threshold is calibrated on A/B answers like the ones watched
    groups = list(dict.fromkeys(gen.groups))
    held = set(groups[int(0.8 * len(groups)):])
    is_held = np.array([g in held for g in gen.groups])
    det_b = Detector.train("sycophancy", model, data=gen.subset(~is_held), method="conditional", layer=p.hooks,
                           control=gen.subset(is_held))
    det_b.save(ctx.out / "detector_ab_control")
    res["in_format_control"] = evaluate(model, det_b, test)
    res = json.loads(json.dumps(res, default=float))
    figures = {k: {"caa_test_auroc": v["caa_test"]["auroc"], "ci95": v["caa_test_auroc_ci95"],
                   "recall_at_threshold": v["caa_test"]["recall_at_threshold"]} for k, v in res.items()}
    return Result(figures=figures, data=res)
