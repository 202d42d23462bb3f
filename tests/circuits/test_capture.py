"""Activation capture on a tiny random Llama: equality with a manual forward, padding, selections, cache, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from circuits import HookNameError, InputError, capture
from circuits.inputs import encode

TEXTS = ["the cat sat on the mat", "paris is in france", "yes", "the sky is blue and the dog is red"]
CHATS = [
    [{"role": "user", "content": "is the sky blue"}, {"role": "assistant", "content": "yes the sky is blue"}],
    [{"role": "user", "content": "is paris in italy"}, {"role": "assistant", "content": "no"}],
    ("hello world", "hello you"),
]


def n_hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.hf_model.modules())


def manual_hidden(model, item) -> list[torch.Tensor]:
    (enc,) = encode(model.tokenizer, [item], model.n_ctx)
    with torch.no_grad():
        out = model.hf_model(torch.tensor([enc.ids]), output_hidden_states=True)
    return [h[0] for h in out.hidden_states], enc


# HF's hidden_states: [embeddings, after block 0, ..., final norm applied to the last block's output]
@pytest.mark.parametrize(
    "hook, k", [("hook_embed", 0), ("blocks.0.hook_resid_pre", 0), ("blocks.0.hook_resid_post", 1),
                ("blocks.1.hook_resid_pre", 1), ("ln_final.hook_normalized", 2)]
)
def test_capture_equals_manual_forward(tiny, hook, k):
    acts = capture(tiny, TEXTS + CHATS, hook, select="all_each", batch_size=3)
    for i, item in enumerate(TEXTS + CHATS):
        hidden, _ = manual_hidden(tiny, item)
        np.testing.assert_allclose(acts[hook][acts.index == i], hidden[k].numpy(), atol=1e-5)


def test_padded_equals_unpadded(tiny):
    hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_mlp_out", "blocks.1.hook_resid_mid"]
    for select in ("last", "response_mean", "response_max", "all_mean"):
        batched = capture(tiny, TEXTS + CHATS, hooks, select=select, batch_size=7)
        for i, item in enumerate(TEXTS + CHATS):
            single = capture(tiny, [item], hooks, select=select, batch_size=1)
            for h in hooks:
                np.testing.assert_allclose(batched[h][i], single[h][0], atol=1e-5)


def test_selections_match_manual_reductions(tiny):
    hook = "blocks.1.hook_resid_post"
    item = CHATS[0]
    hidden, enc = manual_hidden(tiny, item)
    h = capture(tiny, [item], hook, select="all_each")[hook]
    h = torch.from_numpy(h)
    resp = h[enc.span_start :]
    expected = {
        "last": h[-1], "before_last": h[-2], "prompt_last": h[enc.prompt_end - 1], "response_mean": resp.mean(0),
        "response_max": resp.amax(0), "all_mean": h.mean(0),
    }
    for select, want in expected.items():
        got = capture(tiny, [item], hook, select=select)[hook][0]
        np.testing.assert_allclose(got, want.numpy(), atol=1e-5, err_msg=select)
    each = capture(tiny, [item], hook, select="response_each")
    assert each[hook].shape == (len(enc.ids) - enc.span_start, tiny.d_model)


def test_early_stop_gives_same_activations(tiny):
    early = capture(tiny, TEXTS, "blocks.0.hook_resid_post")
    both = capture(tiny, TEXTS, ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"])
    np.testing.assert_allclose(early["blocks.0.hook_resid_post"], both["blocks.0.hook_resid_post"], atol=1e-6)


def test_early_stop_skips_later_blocks(tiny):
    calls = []
    handle = tiny.hf_model.model.layers[1].register_forward_hook(lambda *a: calls.append(1))
    try:
        capture(tiny, TEXTS, "blocks.0.hook_resid_post")
        assert calls == []
        capture(tiny, TEXTS, "blocks.1.hook_resid_post", batch_size=16)
        assert len(calls) == 1
    finally:
        handle.remove()


def test_no_hooks_left_behind_even_on_error(tiny):
    before = n_hooks(tiny)
    capture(tiny, TEXTS, ["blocks.0.hook_resid_post", "blocks.1.hook_attn_out"])
    assert n_hooks(tiny) == before

    def boom(act, hook):
        raise RuntimeError("detector blew up")

    with pytest.raises(RuntimeError, match="blew up"):
        with tiny.hooks([("blocks.0.hook_resid_post", boom)]):
            tiny.forward(torch.tensor([[2, 5, 6]]))
    assert n_hooks(tiny) == before


def test_hook_can_replace_activation(tiny):
    ids = torch.tensor([[2, 5, 6, 7]])
    with tiny.hooks([("blocks.1.hook_resid_post", lambda a, h: torch.zeros_like(a))]):
        logits = tiny.forward(ids)
    # final norm of a zero vector is zero, so logits are all zero
    assert torch.allclose(logits, torch.zeros_like(logits))


@pytest.mark.parametrize(
    "hook, match",
    [("blocks.7.hook_resid_post", "out of range"), ("blocks.0.hook_resid_postt", "unknown hook name"), ("resid", "unknown hook name")],
)
def test_bad_hook_names(tiny, hook, match):
    with pytest.raises(HookNameError, match=match):
        capture(tiny, TEXTS, hook)


def test_bad_inputs(tiny):
    with pytest.raises(InputError, match="no items"):
        capture(tiny, [], "blocks.0.hook_resid_post")
    with pytest.raises(InputError, match="token selection"):
        capture(tiny, TEXTS, "blocks.0.hook_resid_post", select="middle")
    with pytest.raises(InputError, match="item 1: .* longer than the model context of 64"):
        capture(tiny, ["yes", " ".join(["the"] * 100)], "blocks.0.hook_resid_post")
    with pytest.raises(InputError, match="item 0: message 0"):
        capture(tiny, [[{"text": "hi"}]], "blocks.0.hook_resid_post")


def test_disk_cache_roundtrip_and_corruption(tiny, tmp_path):
    hook = "blocks.1.hook_resid_post"
    first = capture(tiny, TEXTS, hook, cache_dir=tmp_path)
    files = list(tmp_path.glob("*.safetensors"))
    assert len(files) == 1

    calls = []
    handle = tiny.hf_model.model.layers[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        again = capture(tiny, TEXTS, hook, cache_dir=tmp_path)
        assert calls == []  # served from the cache, no forward pass
        np.testing.assert_array_equal(first[hook], again[hook])
        files[0].write_bytes(b"garbage")
        healed = capture(tiny, TEXTS, hook, cache_dir=tmp_path)
        assert calls  # corrupt entry recomputed
        np.testing.assert_allclose(first[hook], healed[hook], atol=1e-6)
    finally:
        handle.remove()


def test_several_selections_in_one_pass_match_separate_captures(tiny):
    from circuits import capture_selections

    calls = []
    handle = tiny.hf_model.model.layers[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        both = capture_selections(tiny, CHATS, "blocks.1.hook_resid_post", ["prompt_last", "response_mean"], batch_size=8)
        assert len(calls) == 1  # one batch, one forward pass for both selections
    finally:
        handle.remove()
    for select in ("prompt_last", "response_mean"):
        alone = capture(tiny, CHATS, "blocks.1.hook_resid_post", select=select)
        np.testing.assert_allclose(both[select]["blocks.1.hook_resid_post"], alone["blocks.1.hook_resid_post"], atol=1e-6)
