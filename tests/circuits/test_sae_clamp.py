"""The error-preserving feature clamp: a no-op is exactly the identity, the edit is the decoded
difference of the clamped latents only, activity is reported, and hooks never outlive their use."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_model

from circuits import InputError
from circuits.sae import load_sae
from circuits.sae_clamp import FeatureClamp
from circuits.sae_clamp import SAEClamp

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    model = tiny_model()
    torch.manual_seed(0)
    s = StandardSAE(StandardSAEConfig(d_in=16, d_sae=40, metadata=SAEMetadata(hook_name=HOOK)))
    with torch.no_grad():
        s.b_enc.uniform_(-0.05, 0.1)
    path = tmp_path_factory.mktemp("sae") / "s"
    s.save_model(str(path))
    sae = load_sae(path, model)
    ids = torch.tensor([[2, 10, 11, 12, 13, 14, 15], [2, 20, 21, 22, 23, 0, 0]])
    mask = torch.tensor([[1] * 7, [1] * 5 + [0, 0]])
    return model, sae, ids, mask


def _resid(model, ids, mask):
    got = {}
    with model.hooks([(HOOK, lambda a, h: got.__setitem__("x", a.clone()))]):
        model.forward(ids, mask, stop_at_layer=1)
    return got["x"]


def test_noop_clamp_is_exactly_the_identity(setup):
    model, sae, ids, mask = setup
    clean = model.forward(ids, mask)
    for clamp in (FeatureClamp(HOOK, sae, range(40), values=1.0, mode="scale"),
                  FeatureClamp(HOOK, sae, [0, 5], values=0.0, alpha=0.0)):
        with clamp.apply(model):
            assert torch.equal(model.forward(ids, mask), clean)


def test_clamp_of_silent_latents_is_the_identity_and_reports_no_activity(setup):
    model, sae, ids, mask = setup
    f = sae.encode(_resid(model, ids, mask))
    silent = [int(i) for i in torch.nonzero(~(f > 0).flatten(0, 1).any(0)).flatten()]
    if not silent:
        pytest.skip("every latent fires somewhere on this input")
    clamp = FeatureClamp(HOOK, sae, silent[:3], values=0.0)
    with clamp.apply(model):
        assert torch.equal(model.forward(ids, mask), model.forward(ids, mask))
        model.forward(ids, mask)
    assert clamp.last_active == 0


def test_clamp_removes_exactly_the_clamped_latents(setup):
    model, sae, ids, mask = setup
    x = _resid(model, ids, mask)
    f = sae.encode(x)
    feats = [int(i) for i in torch.argsort(-(f > 0).flatten(0, 1).sum(0))[:3]]
    clamp = FeatureClamp(HOOK, sae, feats, values=0.0)
    edited = {}
    with clamp.apply(model), model.hooks([(HOOK, lambda a, h: edited.__setitem__("x", a.clone()))]):
        model.forward(ids, mask, stop_at_layer=1)
    want = x - f[..., feats] @ sae.W_dec[feats]
    assert torch.allclose(edited["x"], want, atol=1e-6)
    assert clamp.last_active == int((f[..., feats] > 0).any(-1).sum()) > 0
    # the same edit as the generic SAEClamp (decode difference), here without decoding every latent
    ref = {}
    with SAEClamp(HOOK, sae, feats, values=0.0).apply(model), model.hooks([(HOOK, lambda a, h: ref.__setitem__("x", a.clone()))]):
        model.forward(ids, mask, stop_at_layer=1)
    assert torch.allclose(edited["x"], ref["x"], atol=1e-5)


def test_hooks_are_removed_even_on_error(setup):
    model, sae, ids, mask = setup
    clean = model.forward(ids, mask)
    with pytest.raises(RuntimeError, match="boom"):
        with FeatureClamp(HOOK, sae, [0, 1, 2], values=0.0).apply(model):
            raise RuntimeError("boom")
    assert torch.equal(model.forward(ids, mask), clean)


def test_bad_clamps_are_refused(setup):
    model, sae, *_ = setup
    with pytest.raises(InputError, match="out of range"):
        FeatureClamp(HOOK, sae, [40])
    with pytest.raises(InputError, match="W_dec"):
        FeatureClamp(HOOK, object(), [0])
    wide = tiny_model(d_model=32)
    with pytest.raises(InputError, match="16 dimensions"):
        FeatureClamp(HOOK, sae, [0]).attach(wide)
