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


# --------------------------------------------------------------------------------------------
# decoding a HookedTransformer: the Guard and complete() over TransformerLens' own KV cache
# --------------------------------------------------------------------------------------------
PROMPTS = ["hello world", "the cat sat on the mat and the dog sat", "yes"]


def reference_greedy(tl_model, ids: list[int], n: int) -> list[int]:
    """One prompt alone, no padding and no cache: the full forward re-run for every token."""
    out = list(ids)
    for _ in range(n):
        nxt = int(tl_model(torch.tensor([out]))[0, -1].argmax())
        out.append(nxt)
        if nxt == 3:  # the tiny tokenizer's </s>
            break
    return out[len(ids):]


def n_lens_hooks(tl_model) -> int:
    return sum(len(hp.fwd_hooks) for hp in tl_model.hook_dict.values())


def test_guard_decodes_a_hooked_transformer_as_the_uncached_forward_does(tl_model):
    from detectors import Detector, Guard

    model = load_model(tl_model, model_id="tiny-tl")
    g = torch.Generator().manual_seed(0)
    dets = [Detector.from_linear(f"d{i}", model, h, torch.randn(16, generator=g), threshold=1e9)
            for i, h in enumerate(["blocks.0.hook_resid_post", "blocks.2.hook_resid_post"])]
    guard = Guard(model, dets)
    outs = guard.generate(PROMPTS, max_new_tokens=8)  # one left-padded batch, KV cache
    for o, p in zip(outs, guard._prepare(PROMPTS)):
        assert o.token_ids == reference_greedy(tl_model, list(p.enc.ids), 8)
    # the scores are the detectors read at each step, as Detector.token_scores reads them offline
    chats = [[{"role": "user", "content": p}, {"role": "assistant", "content": o.generated_text}] for p, o in zip(PROMPTS, outs)]
    for d in dets:
        for o, offline in zip(outs, d.token_scores(model, chats)):
            k = min(len(o.scores[d.name]), len(offline))
            np.testing.assert_allclose(np.asarray(o.scores[d.name])[:k], offline[:k], atol=1e-4)
    assert n_lens_hooks(tl_model) == 0
    from circuits.generation import complete

    assert complete(model, PROMPTS, max_new_tokens=8) == [o.generated_text.strip() for o in outs]


def test_guard_correction_and_cache_crop_on_a_hooked_transformer(tl_model):
    from circuits.tl_decoder import TLDecoder
    from detectors import Detector, Guard, Policy

    model = load_model(tl_model, model_id="tiny-tl")
    g = torch.Generator().manual_seed(1)
    det = Detector.from_linear("d", model, "blocks.1.hook_resid_post", torch.randn(16, generator=g) * 5, threshold=-1e9)
    pol = Policy.from_dict({"detectors": {"d": {"correct_above": -1e9, "corrector": "addition", "dose": 8.0}}})
    free = Guard(model, [det]).generate(PROMPTS, max_new_tokens=8)
    fixed = Guard(model, [det], policy=pol).generate(PROMPTS, max_new_tokens=8, correct=True)
    assert [o.token_ids for o in fixed] != [o.token_ids for o in free]
    assert all(any(a.kind == "correct" for a in o.actions) for o in fixed)
    assert n_lens_hooks(tl_model) == 0
    # crop(-k) takes the last k positions back: re-running them gives the same logits again
    dec = TLDecoder(tl_model)
    ids = torch.tensor([[5, 23, 25, 7, 9]])
    first = dec(ids[:, :3], past_key_values=None, use_cache=True)
    cache = first.past_key_values
    a = dec(ids[:, 3:], past_key_values=cache, use_cache=True).logits
    cache.crop(-2)
    assert cache.get_seq_length() == 3
    b = dec(ids[:, 3:], past_key_values=cache, use_cache=True).logits
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(b[0, -1], tl_model(ids)[0, -1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("positions", ["generated", "response", 2])
def test_position_aware_steering_while_decoding_a_hooked_transformer(tl_model, positions):
    """Left-padded, cached decoding with a position-restricted corrector gives each row the tokens of
    the row alone, steered at the same positions by a hand-written hook over a full forward."""
    from circuits.steering import ActivationAddition

    model = load_model(tl_model, model_id="tiny-tl")
    v = torch.randn(16, generator=torch.Generator().manual_seed(3))
    hook = "blocks.1.hook_resid_post"
    ids = torch.tensor([[0, 0, 5, 23, 25], [6, 7, 8, 9, 10]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    with ActivationAddition(hook, v, alpha=3.0, positions=positions).apply(model):
        out = model.hf_model.generate(ids, attention_mask=mask, max_new_tokens=6, pad_token_id=0)
    assert n_lens_hooks(tl_model) == 0
    for r in range(2):
        row = ids[r][mask[r].bool()].tolist()
        start = {"generated": len(row), "response": len(row) - 1}.get(positions, positions)
        for _ in range(6):
            def add(act, hook, n=len(row)):
                return act + 3.0 * v * (torch.arange(n) >= start)[None, :, None]

            with tl_model.hooks(fwd_hooks=[(hook, add)]):
                row.append(int(tl_model(torch.tensor([row]))[0, -1].argmax()))
        assert out[r, ids.shape[1]:].tolist() == row[-6:]


def test_rewind_with_avoid_token_on_a_hooked_transformer(tl_model):
    """The Guard takes a flagged token back (cropping TransformerLens' cache), re-chooses it away from
    that token, then decodes on from the cropped cache exactly as the uncached forward would."""
    from test_guard import policy, scripted

    from detectors import Guard

    model = load_model(tl_model, model_id="tiny-tl")
    flag_step, k = 3, 2  # the score of step 3 is read at token 2's position: token 2 is taken back
    det = scripted(model, "syc", lambda t: [2.0 if t == flag_step else -1.0, -1.0], seed=4)
    guard = Guard(model, [det], policy=policy(syc={"correct_above": 1.0, "patience": 100, "dose": 80.0,
                                                   "corrector": "avoid_token", "rewind": True}))
    o0, o1 = guard.generate(PROMPTS[:2], max_new_tokens=8, batch_size=2)
    b0, b1 = [reference_greedy(tl_model, list(p.enc.ids), 8) for p in guard._prepare(PROMPTS[:2])]
    assert o1.token_ids == b1  # the other row keeps what it had
    assert o0.token_ids[:k] == b0[:k] and o0.token_ids[k] != b0[k]
    act = next(a for a in o0.actions if a.kind == "correct")
    assert act.detail["rewind"] is True and act.detail["taken_back"] == b0[k] and act.detail["replaced_by"] == o0.token_ids[k]
    prefix = list(guard._prepare(PROMPTS[:1])[0].enc.ids) + o0.token_ids[: k + 1]
    assert o0.token_ids[k + 1:] == reference_greedy(tl_model, prefix, 8 - k - 1)[: len(o0.token_ids) - k - 1]
    assert n_lens_hooks(tl_model) == 0
