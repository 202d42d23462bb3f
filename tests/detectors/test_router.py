"""Correctors as an extension point (issue 23 item 4): one factory signature receiving a context,
the built-ins registered through the same call as user ones."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import test_guard as tg
import torch

import detectors.router as router_mod
from circuits.sae_clamp import SAEClamp
from circuits.steering import ActivationAddition, DirectionalAblation
from circuits.token_avoidance import TokenAvoidance
from detectors.guard import Guard
from detectors.policy import Policy, PolicyError
from detectors.router import CorrectorContext, CorrectorKind, Router, register_corrector


def test_builtins_are_registered_like_user_correctors():
    for name in Router.BUILTIN:
        kind = router_mod._REGISTRY[name]
        assert isinstance(kind, CorrectorKind) and kind.name == name
        assert list(inspect.signature(kind.factory).parameters) == ["ctx"]
    src = Path(router_mod.__file__).read_text()
    # no identity dispatch or string special cases in the building path
    build = inspect.getsource(Router.build) + inspect.getsource(Router.validate)
    route = inspect.getsource(Router.route)  # the route alone knows linked SAE features (it chooses the clamp or a fallback)
    assert "is _addition" not in src and '"avoid_token"' not in build + route and '"vector:"' not in build + route
    assert '== "sae"' not in build


def test_a_user_corrector_gets_the_context_and_runs_in_a_guard(tiny):
    seen: list[CorrectorContext] = []

    def half_ablation(ctx: CorrectorContext):
        seen.append(ctx)
        return DirectionalAblation(ctx.hook, ctx.detector.direction, alpha=0.5, positions=ctx.positions, state=ctx.state)

    register_corrector("test_half_ablation", half_ablation)
    try:
        det = tg.lin(tiny, "syc", tg.H1)
        pol = tg.policy(syc={"correct_above": -1e9, "corrector": "test_half_ablation", "dose": 3.0, "positions": "all"})
        out = Guard(tiny, [det], policy=pol).generate(tg.PROMPTS, max_new_tokens=3, batch_size=2)
        assert out[0].correctors[0]["corrector"] == "test_half_ablation"
        ctx = seen[0]
        assert ctx.detector is det and ctx.dose == 3.0 and ctx.model is tiny and ctx.hook == tg.H1
        assert ctx.positions == "all" and ctx.batch == 2 and ctx.readout is None and isinstance(ctx.router, Router)
        assert tg.n_hooks(tiny) == 0
    finally:
        router_mod._REGISTRY.pop("test_half_ablation")
    with pytest.raises(PolicyError, match="unknown corrector 'test_half_ablation'"):
        Guard(tiny, [det], policy=pol)


def test_per_router_registration_and_the_deprecated_signature(tiny):
    det = tg.lin(tiny, "syc", tg.H1)
    r = Router()
    r.register_corrector("mine", lambda ctx: ActivationAddition(ctx.hook, -ctx.detector.direction, alpha=ctx.dose, state=ctx.state))
    with pytest.warns(DeprecationWarning, match="register_corrector"):
        r.register("old", lambda det, dose, model, state: ActivationAddition(det.hooks[0], det.direction, alpha=dose, state=state))
    for name in ("mine", "old"):
        pol = tg.policy(syc={"correct_above": -1e9, "corrector": name})
        assert Guard(tiny, [det], policy=pol, router=r).generate("hello world", max_new_tokens=2)[0].correctors
        with pytest.raises(PolicyError, match=f"unknown corrector '{name}'"):
            Guard(tiny, [det], policy=pol)  # another router does not know it
    with pytest.raises(PolicyError, match="reserved"):
        r.register("sae", lambda *a: None)
    with pytest.raises(PolicyError, match="without ':'"):
        register_corrector("vector:x", lambda ctx: None)


def test_builtin_routes_and_checks(tiny, tmp_path):
    det = tg.lin(tiny, "d", tg.H0)
    r = Router()
    res = Policy.from_dict({"detectors": {"d": {"corrector": "avoid_token", "timing": "rewind"}}}).resolve("d", 0.0)
    route = r.route(det, res, model=tiny)
    assert route.hook == "blocks.1.hook_resid_post"  # the last block
    from circuits.steering import GenerationState

    assert isinstance(r.build(route, det, tiny, GenerationState(), batch=2), TokenAvoidance)
    with pytest.raises(PolicyError, match="no SAE is registered"):
        r.validate("sae", det)
    with pytest.raises(PolicyError, match="steering vector directory"):
        r.validate(f"vector:{tmp_path / 'none'}", det)
    with pytest.raises(PolicyError, match=r"registered: .*addition.*vector:ARG"):
        r.validate("nope", det)
    with pytest.raises(PolicyError, match="unknown corrector 'addition:x'"):
        r.validate("addition:x", det)

    class SAE:
        def encode(self, x):
            return torch.relu(x)

        def decode(self, f):
            return f

    r.register_sae(tg.H0, SAE())
    with pytest.raises(PolicyError, match="no linked features"):
        r.validate("sae", det)
    r.link(det.name, [1, 2])
    r.validate("sae", det)
    sroute = r.route(det, res, features=[1, 2], model=tiny)
    assert sroute.corrector == "sae" and sroute.features == (1, 2)
    assert isinstance(r.build(sroute, det, tiny, GenerationState()), SAEClamp)
