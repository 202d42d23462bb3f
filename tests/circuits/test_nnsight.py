"""nnsight: a LanguageModel loads as a coalign model with the same fingerprint, activations and scores,
and a detector's read-out computed inside an nnsight trace equals Detector.score."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("nnsight")

from circuits import capture, from_hf, load_model  # noqa: E402
from circuits.errors import InputError  # noqa: E402
from detectors import Detector  # noqa: E402
from tiny import tiny_hf_model, tiny_tokenizer  # noqa: E402

ITEMS = ["the cat sat on the mat", [{"role": "user", "content": "is the sky blue"},
                                    {"role": "assistant", "content": "yes the sky is blue and green"}],
         ("is paris in france", "no"), "one two three"]
HOOKS = ["blocks.1.hook_resid_post", "blocks.0.hook_mlp_out", "blocks.1.hook_resid_pre", "blocks.1.attn.hook_z"]


@pytest.fixture(scope="module")
def pair():
    import warnings

    from nnsight import LanguageModel

    hf, tok = tiny_hf_model(), tiny_tokenizer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lm = LanguageModel(hf, tokenizer=tok)
    return from_hf(tiny_hf_model(), tiny_tokenizer(), model_id="tiny-llama"), load_model(lm, model_id="tiny-llama")


def test_nnsight_model_has_the_fingerprint_and_activations_of_the_plain_model(pair):
    plain, nn = pair
    assert type(nn).__name__ == "NNsightHookedModel"
    assert nn.fingerprint == plain.fingerprint
    for select in ("last", "response_mean", "all_each"):
        a, b = capture(plain, ITEMS, HOOKS, select), capture(nn, ITEMS, HOOKS, select)
        for h in HOOKS:
            np.testing.assert_array_equal(a[h], b[h])


def test_detector_readout_inside_a_trace_equals_detector_score(pair):
    from circuits.nnsight_model import readout_in_trace

    plain, nn = pair
    g = torch.Generator().manual_seed(3)
    for select in ("response_mean", "last", "prompt_last"):
        det = Detector.from_linear("x", plain, HOOKS, torch.randn(len(HOOKS), plain.d_model, generator=g), bias=0.25,
                                   select=select)
        ref = det.score(plain, ITEMS)
        assert np.abs(det.score(nn, ITEMS) - ref).max() == 0  # loads and scores on the nnsight model as is
        traced = readout_in_trace(nn, ITEMS, dict(zip(det.hooks, det.weight)), det.bias, det.select, batch_size=3)
        assert np.abs(traced - ref).max() <= 1e-6
        assert not np.allclose(ref, ref[0])  # scores differ per item: the comparison is not vacuous
    with pytest.raises(InputError, match="token selection 'all_each'"):
        readout_in_trace(nn, ITEMS, {HOOKS[0]: det.weight[0]}, 0.0, "all_each")
