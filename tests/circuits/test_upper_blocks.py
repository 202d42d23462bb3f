"""Running only the blocks above a cached residual gives the whole model's logits, or falls back to it."""

from __future__ import annotations

import pytest
import torch

from circuits import HFHookedModel, HookedModel
from circuits.upper_blocks import blocks_from, split_matches, upper_logits
from tiny import tiny_model


def _batch():
    ids = torch.tensor([[0, 0, 5, 9, 11, 3], [7, 8, 9, 10, 11, 12]])
    mask = (ids != 0).long()
    mask[1] = 1
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def _resid_and_logits(model: HookedModel, layer: int, ids, mask, pos):
    seen = {}

    def grab(act, _h):
        seen["x"] = act.detach().clone()

    with torch.no_grad(), model.hooks([(f"blocks.{layer}.hook_resid_post", grab)]):
        out = model.hf_model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits[:, -1].float()
    return seen["x"], out


@pytest.mark.parametrize("split", [True, False])
def test_upper_blocks_on_a_changed_residual_equal_the_hooked_full_forward(split):
    model = tiny_model(n_layers=4)
    ids, mask, pos = _batch()
    resid, clean = _resid_and_logits(model, 1, ids, mask, pos)
    assert split_matches(model.hf_model, 2, resid, ids, mask, pos, clean)
    changed = resid + torch.randn(resid.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), model.hooks([("blocks.1.hook_resid_post", lambda act, _h: changed)]):
        want = model.hf_model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits[:, -1].float()
    with torch.no_grad():
        got = upper_logits(model.hf_model, 2, changed, ids, mask, pos, split=split)
    assert (want - clean).abs().max() > 1e-2  # the change matters, so agreement is not trivial
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert len(model.hf_model.model.layers) == 4


def test_the_layer_list_comes_back_after_an_error():
    model = tiny_model(n_layers=4)
    layers = model.hf_model.model.layers
    with pytest.raises(RuntimeError), blocks_from(model.hf_model, 3):
        assert len(model.hf_model.model.layers) == 1
        raise RuntimeError("boom")
    assert model.hf_model.model.layers is layers


def test_a_decoder_that_adds_to_inputs_embeds_is_not_split():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=16, n_head=2, vocab_size=96, n_positions=32)).eval()
    model = HFHookedModel(hf, tiny_model().tokenizer, "tiny-gpt2")
    ids, mask, pos = _batch()
    resid, clean = _resid_and_logits(model, 0, ids, mask, pos)
    assert not split_matches(hf, 1, resid, ids, mask, pos, clean)  # GPT-2 adds learned positions to inputs_embeds
    with torch.no_grad():
        torch.testing.assert_close(upper_logits(hf, 1, resid, ids, mask, pos, split=False), clean)


@pytest.mark.parametrize("split", [True, False])
def test_from_block_zero_the_given_embedding_is_what_runs(split):
    model = tiny_model(n_layers=2)
    ids, mask, pos = _batch()
    emb = model.hf_model.model.embed_tokens(ids).detach()
    changed = emb + torch.randn(emb.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), model.hooks([("hook_embed", lambda act, _h: changed)]):
        want = model.hf_model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits[:, -1].float()
    with torch.no_grad():
        got = upper_logits(model.hf_model, 0, changed, ids, mask, pos, split=split)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
