"""A user's own TransformerLens HookedTransformer goes through the same capture path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import tiny_tokenizer

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

from circuits import HookNameError, TLHookedModel, capture, load_model


@pytest.fixture(scope="module")
def tl_model():
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(0)
    tok = tiny_tokenizer()
    cfg = HookedTransformerConfig(n_layers=3, d_model=16, n_ctx=32, d_head=4, n_heads=4, d_vocab=len(tok), act_fn="relu",
                                  default_prepend_bos=False)
    model = HookedTransformer(cfg)
    model.tokenizer = tok  # set directly: TL's set_tokenizer wants a hub name for its own re-loading
    return model


def test_load_model_wraps_tl_model_and_capture_matches_run_with_cache(tl_model):
    model = load_model(tl_model, model_id="tiny-tl")
    assert isinstance(model, TLHookedModel) and model.d_model == 16 and model.n_layers == 3
    texts = ["the cat sat on the mat", "yes"]
    hook = "blocks.1.hook_resid_post"
    acts = capture(model, texts, hook, select="all_each")
    for i, text in enumerate(texts):
        ids = torch.tensor([model.tokenizer(text)["input_ids"]])
        _, cache = tl_model.run_with_cache(ids)
        np.testing.assert_allclose(acts[hook][acts.index == i], cache[hook][0].numpy(), atol=1e-5)
    assert all(len(hp.fwd_hooks) == 0 for hp in tl_model.hook_dict.values())  # nothing left behind


def test_tl_adapter_errors_and_user_hooks_survive(tl_model):
    model = load_model(tl_model, model_id="tiny-tl")
    with pytest.raises(HookNameError, match="unknown hook name 'blocks.1.resid'"):
        capture(model, ["yes"], "blocks.1.resid")
    mine = tl_model.hook_dict["blocks.0.hook_resid_post"]
    mine.add_hook(lambda a, hook: None)
    try:
        capture(model, ["yes"], "blocks.0.hook_resid_post")
        assert len(mine.fwd_hooks) == 1  # the user's own hook is still there, ours is gone
    finally:
        tl_model.reset_hooks()
