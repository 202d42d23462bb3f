"""Correctors (circuits.steering) and CAA steering vectors (circuits.steering_vectors) on the tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from circuits.errors import ArtifactError, InputError, ModelMismatchError
from circuits.inputs import batches, encode, pad_id
from circuits.steering import (
    ActivationAddition,
    DirectionalAblation,
    GenerationState,
    apply_all,
    logits_with,
    response_logprobs,
)
from circuits.sae_clamp import SAEClamp, SparseAutoencoder
from circuits.steering_vectors import SteeringVector, build_caa, read_pairs
from tiny import tiny_model

HOOK = "blocks.0.hook_resid_post"



def n_hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.hf_model.modules())


def ids_mask(model, texts, side="right"):
    enc = encode(model.tokenizer, texts, model.n_ctx)
    _, ids, mask = next(batches(enc, len(texts), pad_id(model.tokenizer), side=side, sort=False))
    return ids, mask


class Recorder:
    """Records the activation at a hook on every forward (register before/after a corrector)."""

    def __init__(self):
        self.acts = []

    def __call__(self, act, _hp):
        self.acts.append(act.detach().clone())


def around(model, corrector, hook=HOOK):
    """Hooks: recorder (sees the input of the corrector), corrector, recorder (sees its output)."""
    before, after = Recorder(), Recorder()
    h1 = model.add_hooks([(hook, before)])
    h2 = corrector.attach(model)
    h3 = model.add_hooks([(hook, after)])
    return before, after, [h3, h2, h1]


def generate_around(model, corrector, ids, mask, max_new_tokens):
    """Greedy KV-cache generate with :func:`around`'s recorders; returns (before, after)."""
    before, after, hs = around(model, corrector)
    try:
        model.hf_model.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0)
    finally:
        for h in hs:
            h.remove()
    return before, after


# --------------------------------------------------------------------------------------------
# activation addition
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(16,), (2, 16)], ids=["one_vector", "per_row"])
def test_addition_exact_all_positions(tiny, shape):
    torch.manual_seed(0)
    v = torch.randn(*shape)
    ids, mask = ids_mask(tiny, ["the sky is blue", "paris is in france and rome is in italy"])
    c = ActivationAddition(HOOK, v, alpha=2.5)
    before, after, hs = around(tiny, c)
    try:
        tiny.forward(ids, mask)
    finally:
        for h in hs:
            h.remove()
    x, y = before.acts[0], after.acts[0]
    # exact, not approximately; a [batch, d] vector gives row b its own vector at every position
    assert torch.equal(y, x + 2.5 * (v if v.ndim == 1 else v.unsqueeze(1)))


def test_addition_per_row_vector_checks(tiny):
    c = ActivationAddition(HOOK, torch.randn(2, 16), alpha=-1.5)
    assert c.describe()["per_row"] == 2
    three, _ = ids_mask(tiny, ["a", "b", "c"])
    with pytest.raises(InputError, match="2 per-row steering vectors but the batch has 3 rows"):
        with c.apply(tiny):
            tiny.forward(three)
    assert n_hooks(tiny) == 0
    with pytest.raises(InputError, match=r"\[d_model\] or \[batch, d_model\]"):
        ActivationAddition(HOOK, torch.randn(2, 3, 16))
    with pytest.raises(InputError, match="16 dimensions|d_model"):
        ActivationAddition(HOOK, torch.randn(2, 15)).attach(tiny)


def test_addition_context_manager_and_no_leftover_hooks(tiny):
    v = torch.ones(16)
    ids, mask = ids_mask(tiny, ["hello world"])
    base = tiny.forward(ids, mask)
    n0 = n_hooks(tiny)
    with ActivationAddition(HOOK, v, alpha=3.0).apply(tiny):
        assert n_hooks(tiny) == n0 + 1
        steered = tiny.forward(ids, mask)
    assert n_hooks(tiny) == n0
    assert not torch.allclose(base, steered)
    assert torch.equal(tiny.forward(ids, mask), base)  # the model is unchanged afterwards


def test_hooks_removed_when_the_block_raises(tiny):
    n0 = n_hooks(tiny)
    c = ActivationAddition(HOOK, torch.ones(16), positions="generated")
    with pytest.raises(RuntimeError):
        with c.apply(tiny):
            assert n_hooks(tiny) == n0 + 2  # the corrector and its position tracker
            raise RuntimeError("boom")
    assert n_hooks(tiny) == n0
    h = c.attach(tiny)
    h.remove()
    h.remove()  # idempotent
    assert n_hooks(tiny) == n0


def test_attach_twice_raises_and_width_checked(tiny):
    c = ActivationAddition(HOOK, torch.ones(16))
    with c.apply(tiny):
        with pytest.raises(InputError, match="already attached"):
            c.attach(tiny)
    with pytest.raises(InputError, match="d_model"):
        ActivationAddition(HOOK, torch.ones(8)).attach(tiny)
    with pytest.raises(InputError):
        ActivationAddition(HOOK, torch.ones(16), positions="prompt")
    with pytest.raises(Exception):
        ActivationAddition("blocks.9.hook_resid_post", torch.ones(16)).attach(tiny)


def test_addition_generated_positions_under_kv_cache_generate(tiny):
    torch.manual_seed(1)
    v = torch.randn(16)
    ids, mask = ids_mask(tiny, ["hello world", "the cat sat on the mat"], side="left")
    c = ActivationAddition(HOOK, v, alpha=1.5, positions="generated")
    before, after = generate_around(tiny, c, ids, mask, 4)
    assert len(before.acts) == 4  # prefill + 3 decode steps
    assert torch.equal(after.acts[0], before.acts[0])  # the prompt is untouched
    for x, y in zip(before.acts[1:], after.acts[1:]):
        assert x.shape[1] == 1
        assert torch.equal(y, x + 1.5 * v)  # every decode step is a generated position


def test_generated_positions_in_a_hand_written_decode_loop(tiny):
    """A serving loop that passes only the cache (no ``cache_position``): transformers >= 5.24
    hands the base model the cache as ``cache=`` rather than ``past_key_values=``; a decode step
    must still count as generated, not as the start of a new prompt."""
    torch.manual_seed(1)
    v = torch.randn(16)
    ids, _ = ids_mask(tiny, ["the cat sat on the mat"])  # batch 1: no attention mask, as loops often do
    c = ActivationAddition(HOOK, v, alpha=1.5, positions="generated")
    before, after, hs = around(tiny, c)
    try:
        with torch.no_grad():
            out = tiny.hf_model(input_ids=ids, use_cache=True)
            for _ in range(3):
                nxt = out.logits[:, -1:].argmax(-1)
                out = tiny.hf_model(input_ids=nxt, past_key_values=out.past_key_values, use_cache=True)
    finally:
        for h in hs:
            h.remove()
    assert len(before.acts) == 4
    assert torch.equal(after.acts[0], before.acts[0])  # the prompt is untouched
    for x, y in zip(before.acts[1:], after.acts[1:]):
        assert torch.equal(y, x + 1.5 * v)


def test_response_positions_steer_the_first_generated_token(tiny):
    """'generated' leaves the first new token's logits (read at the last prompt token) unsteered;
    'response' edits exactly that prompt position too, and every decode step."""
    torch.manual_seed(2)
    v = torch.randn(16) * 4
    ids, mask = ids_mask(tiny, ["hello world", "the cat sat on the mat"], side="left")
    c = ActivationAddition(HOOK, v, alpha=1.0, positions="response")
    before, after = generate_around(tiny, c, ids, mask, 3)
    x, y = before.acts[0], after.acts[0]
    assert torch.equal(y[:, -1], x[:, -1] + v)  # the last prompt token of each (left-padded) row
    assert torch.equal(y[:, :-1], x[:, :-1])
    for x, y in zip(before.acts[1:], after.acts[1:]):
        assert torch.equal(y, x + v)
    with ActivationAddition(HOOK, v, positions="generated").apply(tiny):
        gen_first = tiny.forward(ids, mask)[:, -1]
    with ActivationAddition(HOOK, v, positions="response").apply(tiny):
        resp_first = tiny.forward(ids, mask)[:, -1]
    assert torch.equal(gen_first, tiny.forward(ids, mask)[:, -1])
    assert not torch.allclose(resp_first, gen_first)


def test_addition_from_position_with_left_padding(tiny):
    v = torch.ones(16)
    texts = ["hello world", "the cat sat on the mat"]
    ids, mask = ids_mask(tiny, texts, side="left")
    c = ActivationAddition(HOOK, v, alpha=2.0, positions=3)
    before, after, hs = around(tiny, c)
    try:
        tiny.forward(ids, mask)
    finally:
        for h in hs:
            h.remove()
    x, y = before.acts[0], after.acts[0]
    row_pos = (mask.cumsum(-1) - 1).clamp(min=0)
    for r in range(2):
        for col in range(ids.shape[1]):
            real = bool(mask[r, col])
            if real and row_pos[r, col] >= 3:
                assert torch.equal(y[r, col], x[r, col] + 2.0 * v)
            else:
                assert torch.equal(y[r, col], x[r, col])


def test_rows_dose_and_enabled_change_without_reattaching(tiny):
    v = torch.randn(16)
    ids, mask = ids_mask(tiny, ["hello world", "hello world"])
    c = ActivationAddition(HOOK, v, alpha=1.0)
    before, after, hs = around(tiny, c)
    try:
        c.set_rows([True, False])
        tiny.forward(ids, mask)
        c.set_rows(None)
        c.set_dose(-2.0)
        tiny.forward(ids, mask)
        c.enabled = False
        tiny.forward(ids, mask)
        c.enabled = True
        c.rows_off(2)
        tiny.forward(ids, mask)
        c.set_row(1, 1.0)
        tiny.forward(ids, mask)
        c.rows_off(3)
        c.set_row(0, 1.0)
        with pytest.raises(InputError, match="rows"):
            tiny.forward(ids, mask)
    finally:
        for h in hs:
            h.remove()
    x = before.acts[0]
    y = after.acts
    assert torch.equal(y[0][0], x[0] + 1.0 * v) and torch.equal(y[0][1], x[1])
    assert torch.equal(y[1], x + (-2.0) * v)
    assert torch.equal(y[2], x)
    assert torch.equal(y[3], x)
    assert torch.equal(y[4][0], x[0]) and torch.equal(y[4][1], x[1] + (-2.0) * v)


# --------------------------------------------------------------------------------------------
# ablation
# --------------------------------------------------------------------------------------------
def test_directional_ablation_zeroes_the_component(tiny):
    torch.manual_seed(2)
    d = torch.randn(16) * 3
    unit = d / d.norm()
    ids, mask = ids_mask(tiny, ["the sky is blue", "paris is in france"])
    c = DirectionalAblation(HOOK, d)
    before, after, hs = around(tiny, c)
    try:
        tiny.forward(ids, mask)
        c.set_dose(0.5)
        tiny.forward(ids, mask)
    finally:
        for h in hs:
            h.remove()
    x, y, y_half = before.acts[0], after.acts[0], after.acts[1]
    comp_x = x @ unit
    assert comp_x.abs().max() > 1e-2
    scale = x.norm(dim=-1).max()
    assert (y @ unit).abs().max() <= 1e-6 * scale  # the ablated component is 0 (to float precision)
    assert torch.allclose(y + comp_x.unsqueeze(-1) * unit, x, atol=1e-5)  # nothing else changed
    assert torch.allclose(y_half @ unit, 0.5 * comp_x, atol=1e-5)


def test_ablation_zero_direction_rejected():
    with pytest.raises(InputError, match="zero norm"):
        DirectionalAblation(HOOK, torch.zeros(16))


# --------------------------------------------------------------------------------------------
# SAE clamping
# --------------------------------------------------------------------------------------------
class ToySAE(torch.nn.Module):
    def __init__(self, d=16, f=32, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W_enc = torch.nn.Parameter(torch.randn(d, f, generator=g) / 4)
        self.b_enc = torch.nn.Parameter(torch.zeros(f))
        self.W_dec = torch.nn.Parameter(torch.randn(f, d, generator=g) / 4)
        self.b_dec = torch.nn.Parameter(torch.randn(d, generator=g) / 10)

    def encode(self, x):
        return torch.relu(x @ self.W_enc + self.b_enc)

    def decode(self, f):
        return f @ self.W_dec + self.b_dec


def test_sae_clamp_keeps_reconstruction_error(tiny):
    sae = ToySAE()
    assert isinstance(sae, SparseAutoencoder)
    ids, mask = ids_mask(tiny, ["the sky is blue"])
    feats = [1, 5, 7]
    c = SAEClamp(HOOK, sae, feats, values=0.0)
    before, after, hs = around(tiny, c)
    try:
        with torch.no_grad():
            tiny.forward(ids, mask)
    finally:
        for h in hs:
            h.remove()
    x, y = before.acts[0], after.acts[0]
    with torch.no_grad():
        f = sae.encode(x)
        f2 = f.clone()
        f2[..., feats] = 0.0
        expected = x + (sae.decode(f2) - sae.decode(f))
        # the reconstruction error x - decode(f) is carried over unchanged
        assert torch.allclose(y - sae.decode(f2), x - sae.decode(f), atol=1e-5)
    assert torch.allclose(y, expected, atol=1e-6)


def test_sae_clamp_no_op_when_values_unchanged(tiny):
    sae = ToySAE()
    ids, mask = ids_mask(tiny, ["hello world"])
    c = SAEClamp(HOOK, sae, [3], values=1.0, mode="scale")  # scaling by 1 changes nothing
    before, after, hs = around(tiny, c)
    try:
        with torch.no_grad():
            tiny.forward(ids, mask)
    finally:
        for h in hs:
            h.remove()
    assert torch.equal(after.acts[0], before.acts[0])


def test_sae_clamp_with_a_sae_lens_sae(tiny):
    sae_lens = pytest.importorskip("sae_lens")
    sae = sae_lens.StandardSAE(sae_lens.StandardSAEConfig(d_in=16, d_sae=32, dtype="float32", device="cpu"))
    with torch.no_grad():
        torch.manual_seed(0)
        sae.W_enc.normal_()
        sae.W_dec.normal_()
    assert isinstance(sae, SparseAutoencoder)
    ids, mask = ids_mask(tiny, ["the sky is blue"])
    c = SAEClamp(HOOK, sae, [1, 2], values=0.0)
    before, after, hs = around(tiny, c)
    try:
        with torch.no_grad():
            tiny.forward(ids, mask)
    finally:
        for h in hs:
            h.remove()
    x, y = before.acts[0], after.acts[0]
    with torch.no_grad():
        f = sae.encode(x)
        f2 = f.clone()
        f2[..., [1, 2]] = 0.0
        assert (f[..., [1, 2]] != 0).any()
        assert torch.allclose(y, x + sae.decode(f2) - sae.decode(f), atol=1e-5)


def test_sae_clamp_validation():
    with pytest.raises(InputError):
        SAEClamp(HOOK, object(), [1])
    with pytest.raises(InputError):
        SAEClamp(HOOK, ToySAE(), [])
    with pytest.raises(InputError):
        SAEClamp(HOOK, ToySAE(), [1, 2], values=[0.0])


# --------------------------------------------------------------------------------------------
# state, logits with correctors
# --------------------------------------------------------------------------------------------
def test_generation_state_scope():
    st = GenerationState()
    with pytest.raises(InputError):
        st.in_scope("generated")
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    st.begin(4, attention_mask=mask, prompt_lens=[2, 2])  # row 0 is left-padded by one
    scope = st.in_scope("generated")
    assert scope.tolist() == [[False, False, False, True], [False, False, True, True]]
    assert st.in_scope("all") is True
    assert st.in_scope("response").tolist() == [[False, False, True, True], [False, True, True, True]]
    st.step(torch.tensor([[3], [4]]))
    assert st.in_scope("generated") is True
    assert st.in_scope("response") is True
    assert st.in_scope(4).tolist() == [[False], [True]]
    assert st.in_scope(10) is False


def test_logits_with_only_changes_generated_positions(tiny):
    items = [("hello world", "yes i agree"), ("the sky is", "blue")]
    base = logits_with(tiny, items)
    v = torch.randn(16) * 5
    steered = logits_with(tiny, items, [ActivationAddition(HOOK, v, alpha=1.0, positions="generated")])
    enc = encode(tiny.tokenizer, items, tiny.n_ctx)
    for e, b, s in zip(enc, base, steered):
        assert b.shape == (len(e.ids), tiny.hf_model.config.vocab_size)
        assert torch.allclose(b[: e.prompt_end], s[: e.prompt_end], atol=1e-6)
        assert not torch.allclose(b[e.prompt_end:], s[e.prompt_end:])
    # without correctors, logits equal a plain forward
    ids, mask = ids_mask(tiny, ["the sky is blue"])
    ref = tiny.forward(ids, mask)[0]
    assert torch.allclose(logits_with(tiny, ["the sky is blue"])[0], ref, atol=1e-6)
    lp = response_logprobs(tiny, items)
    assert [len(x) for x in lp] == [len(e.ids) - e.prompt_end for e in enc]
    assert all((x <= 0).all() for x in lp)


def test_apply_all_removes_everything(tiny):
    n0 = n_hooks(tiny)
    cs = [ActivationAddition(HOOK, torch.ones(16)), DirectionalAblation("blocks.1.hook_resid_post", torch.ones(16), positions="generated")]
    with pytest.raises(ValueError):
        with apply_all(tiny, cs):
            raise ValueError("x")
    assert n_hooks(tiny) == n0


# --------------------------------------------------------------------------------------------
# steering vectors
# --------------------------------------------------------------------------------------------
PAIRS = [
    (("is the sky blue", "yes"), ("is the sky blue", "no")),
    (("is paris in france", "yes"), ("is paris in france", "no")),
    (("is rome in italy", "yes i agree"), ("is rome in italy", "no i disagree")),
]


def test_build_caa_is_the_mean_difference(tiny):
    from circuits import capture

    sv = build_caa(tiny, PAIRS, HOOK, select="last", behaviour="agreeing")
    pos = capture(tiny, [p for p, _ in PAIRS], HOOK, select="last")[HOOK]
    neg = capture(tiny, [n for _, n in PAIRS], HOOK, select="last")[HOOK]
    expected = (pos.astype(np.float64) - neg).mean(0)
    assert np.allclose(sv.vector.numpy(), expected, atol=1e-5)
    assert sv.n_pairs == 3 and sv.hook == HOOK and sv.d_model == 16
    assert sv.metrics["norm"] == pytest.approx(float(np.linalg.norm(expected)), rel=1e-5)
    c = sv.corrector(alpha=-2.0)
    assert isinstance(c, ActivationAddition) and c.alpha == -2.0 and c.positions == "generated"


def test_steering_vector_roundtrip_and_checks(tiny, tmp_path):
    sv = build_caa(tiny, PAIRS, HOOK, behaviour="agreeing")
    path = sv.save(tmp_path / "vec")
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["kind"] == "steering_vector" and cfg["hook"] == HOOK
    back = SteeringVector.load(path, tiny)
    assert torch.equal(back.vector, sv.vector) and back.id == sv.id and back.behaviour == "agreeing"
    other = tiny_model(seed=5)
    with pytest.raises(ModelMismatchError):
        SteeringVector.load(path, other)
    SteeringVector.load(path, other, strict=False)
    (path / "config.json").write_text(json.dumps({**cfg, "kind": "linear_detector"}))
    with pytest.raises(ArtifactError, match="not a steering vector"):
        SteeringVector.load(path)
    with pytest.raises(ArtifactError):
        SteeringVector.load(tmp_path / "missing")


def test_build_caa_validation(tiny):
    with pytest.raises(InputError):
        build_caa(tiny, [], HOOK)
    with pytest.raises(InputError):
        build_caa(tiny, PAIRS, HOOK, select="all_each")
    with pytest.raises(InputError):
        build_caa(tiny, [("a",)], HOOK)


def test_read_pairs_formats(tmp_path):
    p = tmp_path / "pairs.jsonl"
    rows = [
        {"positive": "the sky is blue", "negative": "the sky is green"},
        {"prompt": "is it true", "positive": "yes", "negative": "no"},
        {"prompt": [{"role": "user", "content": "hi"}], "positive": "hello", "negative": "no"},
        {"positive": ["q", "a"], "negative": ["q", "b"]},
    ]
    p.write_text("\n".join(json.dumps(r) for r in rows))
    pairs = read_pairs(p)
    assert pairs[0] == ("the sky is blue", "the sky is green")
    assert pairs[1] == (("is it true", "yes"), ("is it true", "no"))
    assert pairs[2][0][-1] == {"role": "assistant", "content": "hello"}
    assert pairs[3] == (("q", "a"), ("q", "b"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"positive": "x"}))
    with pytest.raises(InputError, match="row 1"):
        read_pairs(bad)


@pytest.mark.slow
def test_smollm2_caa_vector_shifts_answer_probabilities(smollm2):
    hook = "blocks.15.hook_resid_post"
    q = [
        ("Is Paris the capital of France? Answer yes or no.", "Yes"),
        ("Is the sun hot? Answer yes or no.", "Yes"),
        ("Is water wet? Answer yes or no.", "Yes"),
        ("Do cats bark? Answer yes or no.", "No"),
        ("Is ice hot? Answer yes or no.", "No"),
    ]
    pairs = [((p, "Yes"), (p, "No")) for p, _ in q]
    sv = build_caa(smollm2, pairs, hook, select="last", behaviour="says_yes")
    assert sv.metrics["pair_consistency"] > 0.5
    tok = smollm2.tokenizer
    yes, no = tok.encode("Yes", add_special_tokens=False)[0], tok.encode("No", add_special_tokens=False)[0]
    items = [[{"role": "user", "content": "Is the grass blue? Answer yes or no."}]]
    dose = 0.5 * sv.metrics["mean_resid_norm"] / sv.metrics["norm"]

    def margin(correctors):
        lg = logits_with(smollm2, items, correctors)[0][-1]
        return float(lg[yes] - lg[no])

    base = margin([])
    toward = margin([sv.corrector(alpha=dose, positions="all")])
    away = margin([sv.corrector(alpha=-dose, positions="all")])
    assert toward > base > away


def test_token_avoidance_is_an_exact_addition_along_the_logit_lens_contrast(tiny):
    from circuits.token_avoidance import TokenAvoidance, unembedding

    c = TokenAvoidance(tiny, batch=2, alpha=3.0)
    hook = f"blocks.{tiny.n_layers - 1}.hook_resid_post"
    assert c.hook == hook
    W, g = unembedding(tiny)
    v = (W[5] - W[9]) * g
    unit = v / v.norm()
    assert torch.allclose(c.direction(5, 9), unit)
    assert float(c.direction(5, 9) @ (g * (W[5] - W[9]))) > 0  # it raises token 5 against 9
    ids, mask = ids_mask(tiny, ["hello world", "the cat sat"])
    before, after, handles = around(tiny, c, hook)
    try:
        tiny.forward(ids, mask)  # every row off: nothing changes
        c.avoid(0, 5, 9)
        tiny.forward(ids, mask)
        c.release(0)
        tiny.forward(ids, mask)
    finally:
        for h in handles:
            h.remove()
    assert torch.equal(after.acts[0], before.acts[0]) and torch.equal(after.acts[2], before.acts[2])
    assert torch.equal(after.acts[1][0], before.acts[1][0] + 3.0 * (-unit))  # x + alpha * v, exactly
    assert torch.equal(after.acts[1][1], before.acts[1][1])  # the other row is untouched
    assert c.describe()["avoided"] == {"0": [5, 9]}
    with pytest.raises(InputError, match="token id 999 is outside the vocabulary"):
        c.avoid(1, 999, 9)
    with pytest.raises(InputError, match="token and instead are the same id 5"):
        c.avoid(1, 5, 5)
    with pytest.raises(InputError, match="batch must be at least 1"):
        TokenAvoidance(tiny, batch=0)
    one = TokenAvoidance(tiny, batch=1)
    assert one.vector.shape == (1, tiny.d_model)
