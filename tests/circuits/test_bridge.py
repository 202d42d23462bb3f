"""A TransformerLens ``TransformerBridge``: the same activations, fingerprint, detectors and Guard
as the Hugging Face model it wraps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import planted_dataset, tiny_hf_model, tiny_tokenizer

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
model_bridge = pytest.importorskip("transformer_lens.model_bridge")

from circuits import TLHookedModel, capture, from_hf, load_model  # noqa: E402
from circuits.errors import InputError, UnsupportedModelError  # noqa: E402
from circuits.bridge_checks import kv_cache_matches_full_forward  # noqa: E402
from circuits.generation import complete  # noqa: E402
from circuits.steering import ActivationAddition  # noqa: E402
from detectors import Detector, Guard, Policy  # noqa: E402

H = "blocks.1.hook_resid_post"
PROMPTS = ["hello world", "the cat sat on the mat and the dog sat"]
CHATS = [[{"role": "user", "content": "the cat"}, {"role": "assistant", "content": "sat on the mat"}],
         [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "world"}]]


def bridged_tiny(seed: int):
    tok = tiny_tokenizer()
    # TL re-loads a tokenizer by name unless it already adds BOS; this one has no hub name
    tok.init_kwargs.update(name_or_path="tiny", add_bos_token=True)
    bridge = model_bridge.TransformerBridge.boot_transformers("tiny-llama", hf_model=tiny_hf_model(seed), tokenizer=tok)
    return bridge, load_model(bridge, model_id="tiny-llama")


@pytest.fixture(scope="module")
def both():
    plain = from_hf(tiny_hf_model(3), tiny_tokenizer(), model_id="tiny-llama")  # an untouched twin
    bridge, bridged = bridged_tiny(3)
    return plain, bridged, bridge


def n_lens_hooks(bridge) -> int:
    return sum(len(hp.fwd_hooks) for hp in bridge.hook_dict.values())


def test_bridge_is_hf_backed_with_the_plain_models_fingerprint(both):
    plain, bridged, bridge = both
    assert isinstance(bridged, TLHookedModel) and bridged.hf_model is bridge.original_model
    assert bridged.fingerprint == plain.fingerprint
    _, other = bridged_tiny(4)
    assert other.fingerprint != plain.fingerprint  # other weights, another fingerprint


def test_capture_and_detector_scores_match_the_plain_model(both):
    plain, bridged, _ = both
    a = capture(plain, CHATS, H, select="response_mean")[H]
    b = capture(bridged, CHATS, H, select="response_mean")[H]
    np.testing.assert_allclose(a, b, atol=1e-4)
    g = torch.Generator().manual_seed(0)
    det = Detector.from_linear("d", plain, H, torch.randn(plain.d_model, generator=g), threshold=0.0)
    np.testing.assert_allclose(det.score(plain, CHATS), det.score(bridged, CHATS), atol=1e-3)


def test_guard_on_a_bridge_decodes_and_scores_as_on_the_plain_model(both):
    plain, bridged, bridge = both
    g = torch.Generator().manual_seed(1)
    det = Detector.from_linear("d", plain, H, torch.randn(plain.d_model, generator=g), threshold=0.0)
    ref = Guard(plain, [det]).generate(PROMPTS, max_new_tokens=8)
    out = Guard(bridged, [det]).generate(PROMPTS, max_new_tokens=8)
    for r, o in zip(ref, out):
        assert o.token_ids == r.token_ids
        np.testing.assert_allclose(o.scores["d"], r.scores["d"], atol=1e-3)
    assert n_lens_hooks(bridge) == 0  # nothing left on the bridge's hook points
    assert complete(bridged, PROMPTS, max_new_tokens=6) == complete(plain, PROMPTS, max_new_tokens=6)


def test_guard_correction_on_a_bridge_matches_the_plain_model(both, tmp_path):
    plain, bridged, bridge = both
    g = torch.Generator().manual_seed(2)
    det = Detector.from_linear("d", plain, H, torch.randn(plain.d_model, generator=g) * 5, threshold=-1e9)
    pol = Policy.from_dict({"detectors": {"d": {"correct_above": -1e9, "corrector": "addition", "dose": 4.0}}})
    ref = Guard(plain, [det], policy=pol).generate(PROMPTS, max_new_tokens=8, correct=True)
    out = Guard(bridged, [det], policy=pol).generate(PROMPTS, max_new_tokens=8, correct=True)
    free = Guard(plain, [det]).generate(PROMPTS, max_new_tokens=8)
    assert [o.token_ids for o in out] == [r.token_ids for r in ref]
    assert [o.token_ids for o in out] != [f.token_ids for f in free]  # the correction did something
    assert n_lens_hooks(bridge) == 0
    v = torch.randn(plain.d_model, generator=g)
    with ActivationAddition(H, v, alpha=2.0).apply(bridged):
        steered = capture(bridged, CHATS, "blocks.1.hook_resid_post", select="response_mean")[H]
    np.testing.assert_allclose(steered, capture(bridged, CHATS, H, select="response_mean")[H] + 2.0 * v.numpy(), atol=1e-4)
    assert n_lens_hooks(bridge) == 0


def test_a_model_that_cannot_decode_gets_a_clear_error(both):
    plain, _, _ = both
    det = Detector.from_linear("d", plain, H, torch.ones(16), threshold=0.0)
    plain.hf_model, hf = None, plain.hf_model  # as a backend without a decoder would be
    try:
        for call in (lambda: Guard(plain, [det]), lambda: complete(plain, ["hi"], max_new_tokens=2)):
            with pytest.raises(InputError, match="decoding needs a model that can generate"):
                call()
    finally:
        plain.hf_model = hf


class ForgetfulLM(torch.nn.Module):
    """A causal LM that drops the KV cache it is given, as a bridge does whose attention reads the
    cache under another keyword than its transformers version passes."""

    def __init__(self, lm):
        super().__init__()
        self.lm, self.config = lm, lm.config

    def forward(self, input_ids, past_key_values=None, use_cache=False, **_):
        return self.lm(input_ids=input_ids, use_cache=use_cache)


def test_the_kv_cache_check_tells_a_working_cache_from_an_ignored_one(both):
    plain, bridged, _ = both
    assert kv_cache_matches_full_forward(plain.hf_model, plain.device)
    assert not kv_cache_matches_full_forward(ForgetfulLM(plain.hf_model), plain.device)
    # on the installed versions, the check's verdict on the bridge is what decoding shows
    ids = plain.tokenizer(PROMPTS[1], return_tensors="pt").input_ids
    greedy = [m.hf_model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0) for m in (plain, bridged)]
    assert kv_cache_matches_full_forward(bridged.hf_model, bridged.device) == torch.equal(*greedy)


def test_a_bridge_that_ignores_its_kv_cache_is_refused_with_the_reason(tmp_path):
    _, bridged = bridged_tiny(3)
    bridged._bridge_cache_ok = False  # the verdict the check gives on such a bridge (above)
    det = Detector.from_linear("d", bridged, H, torch.ones(16), threshold=0.0)
    for call in (lambda: Guard(bridged, [det]), lambda: complete(bridged, ["hi"], max_new_tokens=2)):
        with pytest.raises(UnsupportedModelError, match="ignores its KV cache.*transformers<5.24"):
            call()
    assert capture(bridged, CHATS, H, select="response_mean")[H].shape == (2, 16)  # reading still works


def test_training_on_a_bridge_gives_the_plain_models_detector(both, tmp_path):
    plain, bridged, bridge = both
    a = Detector.train("planted", plain, data=planted_dataset(), n_control=20, cache_dir=tmp_path / "a")
    b = Detector.train("planted", bridged, data=planted_dataset(), n_control=20, cache_dir=tmp_path / "b")
    assert a.hooks == b.hooks and a.model_fingerprint == b.model_fingerprint
    np.testing.assert_allclose(b.weight.numpy(), a.weight.numpy(), rtol=1e-2, atol=1e-3)
    assert b.threshold == pytest.approx(a.threshold, rel=1e-2, abs=1e-3)
    assert b.metrics["val_auroc"] == pytest.approx(a.metrics["val_auroc"], abs=1e-6)
    assert n_lens_hooks(bridge) == 0
