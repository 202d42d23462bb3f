"""A model split over CPU and disk (accelerate device map): the same fingerprint, bit-identical capture,
detector scores, corrected logits and greedy Guard tokens as the model in one piece, and no hook left."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("accelerate")

from circuits import ActivationAddition, capture, load_model, logits_with  # noqa: E402
from circuits.errors import InputError  # noqa: E402
from detectors import Detector  # noqa: E402
from tiny import tiny_hf_model, tiny_tokenizer  # noqa: E402

ITEMS = ["the cat sat on the mat", [{"role": "user", "content": "is the sky blue"},
                                    {"role": "assistant", "content": "yes the sky is blue and green"}],
         ("is paris in france", "no it is in italy"), "one two three"]
HOOKS = ["hook_embed", "blocks.0.hook_resid_post", "blocks.1.hook_resid_pre", "blocks.1.attn.hook_z",
         "blocks.2.hook_mlp_out", "blocks.2.hook_resid_post", "ln_final.hook_normalized"]
SPLIT = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
         "model.layers.2": "disk", "model.norm": "cpu", "lm_head": "cpu"}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("split")
    tiny_hf_model(n_layers=3).save_pretrained(root / "m")
    tiny_tokenizer().save_pretrained(root / "m")
    whole = load_model(root / "m")
    split = load_model(root / "m", device_map=SPLIT, offload_folder=root / "offload")
    return whole, split


def test_split_model_is_really_offloaded_and_has_the_same_fingerprint(pair):
    whole, split = pair
    assert split.hf_model.model.layers[2].mlp.down_proj.weight.device.type == "meta"  # weights live on disk
    assert split.fingerprint == whole.fingerprint
    assert split.device == torch.device("cpu")


def test_capture_and_scores_are_bit_identical_on_the_split_model(pair):
    whole, split = pair
    for select in ("last", "response_mean", "decode_each"):
        a, b = capture(whole, ITEMS, HOOKS, select, batch_size=3), capture(split, ITEMS, HOOKS, select, batch_size=3)
        for h in HOOKS:
            assert np.array_equal(a[h], b[h]), (h, select)
    g = torch.Generator().manual_seed(4)
    det = Detector.from_linear("x", whole, HOOKS[1:3], torch.randn(2, whole.d_model, generator=g), bias=0.1)
    det.check_model(split)  # the fingerprint check passes on the offloaded model
    assert np.array_equal(det.score(whole, ITEMS), det.score(split, ITEMS))
    v = torch.randn(whole.d_model, generator=g)
    steer = [ActivationAddition("blocks.1.hook_resid_post", v, alpha=3.0)]
    for x, y in zip(logits_with(whole, ITEMS, steer), logits_with(split, ITEMS, steer)):
        assert torch.equal(x, y)
    assert not torch.equal(logits_with(whole, ITEMS[:1])[0], logits_with(whole, ITEMS[:1], steer)[0])  # steering acted


def test_greedy_guard_tokens_and_scores_are_identical_on_the_split_model(pair):
    from detectors import Guard

    whole, split = pair
    g = torch.Generator().manual_seed(5)
    dets = [Detector.from_linear("a", whole, "blocks.2.hook_resid_post", torch.randn(whole.d_model, generator=g)),
            Detector.from_linear("b", whole, "blocks.0.hook_resid_post", torch.randn(whole.d_model, generator=g))]
    prompts = ["is the sky blue", [{"role": "user", "content": "the cat sat on the mat"}]]
    a = Guard(whole, dets).generate(prompts, max_new_tokens=8)
    b = Guard(split, dets).generate(prompts, max_new_tokens=8)
    for x, y in zip(a, b):
        assert x.token_ids == y.token_ids and len(x.token_ids) > 0 and not x.errors and not y.errors
        for name in ("a", "b"):
            assert np.array_equal(x.scores[name], y.scores[name])


def test_no_coalign_hook_outlives_its_call_on_the_split_model(pair):
    _, split = pair
    capture(split, ITEMS, HOOKS, "last")
    left = [n for n, m in split.hf_model.named_modules() if m._forward_hooks or m._forward_pre_hooks]
    assert left == []


def test_disk_map_without_an_offload_folder_is_refused_before_loading(tmp_path):
    with pytest.raises(InputError, match="no offload_folder"):
        load_model(tmp_path / "nowhere", device_map={"model.layers.0": "disk"})
