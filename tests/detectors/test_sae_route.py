"""Flagged features routed to SAE clamping: the router clamps a detector's linked features where they are
active and falls back (the policy's corrector, or its next tier) where they are silent; the Guard reports
each flagged token's features with an exact decomposition; links load, are checked and never overwrite
what coalign did not write."""

from __future__ import annotations

import json

import pytest
import torch
from sae_fixtures import HOOK, chats, tiny_sae_setup

from circuits import capture
from circuits.errors import ArtifactError
from circuits.sae_clamp import FeatureClamp
from detectors import Detector
from detectors.guard import Guard
from detectors.policy import Policy, PolicyError
from detectors.router import Router
from detectors.sae_link import read_link, write_link


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model, sae, _ = tiny_sae_setup(tmp_path_factory.mktemp("sae"))
    X = torch.as_tensor(capture(model, chats(8, 5), [HOOK], select="all_each")[HOOK]).float()
    f = sae.encode(X)
    rate = (f > 0).float().mean(0)
    live = int(torch.argmax(rate))  # the most frequent latent: active somewhere, silent somewhere (k=4 of 64)
    on, off = X[f[:, live] > 0][0], X[f[:, live] == 0][0]
    return model, sae, live, on, off


def _det(model, threshold=-1e9):
    return Detector.from_linear("dec", model, HOOK, torch.randn(16, generator=torch.Generator().manual_seed(3)), bias=0.0,
                                threshold=threshold)


def test_route_clamps_active_linked_features_and_falls_back_when_silent(setup):
    model, sae, live, on, off = setup
    det = _det(model)
    router = Router()
    router.link(det.name, [live], sae)
    for corrector in ("addition", "sae"):
        res = _policy_res(det, corrector)
        r = router.route(det, res, act=on)
        assert r.corrector == "sae" and r.features == (live,) and r.hook == HOOK
        silent = router.route(det, res, act=off)
        if corrector == "sae":
            assert silent is None  # nothing to clamp and no other corrector: the caller moves up a tier
        else:
            assert silent.corrector == "addition" and silent.features == ()
    built = router.build(router.route(det, _policy_res(det, "sae"), act=on), det, model, state=None)
    assert isinstance(built, FeatureClamp) and built.features.tolist() == [live]


def test_sae_corrector_without_linked_features_is_refused(setup):
    model, sae, *_ = setup
    det = _det(model)
    router = Router()
    router.register_sae(HOOK, sae)
    with pytest.raises(PolicyError, match="no linked features"):
        router.validate("sae", det)
    with pytest.raises(PolicyError, match="out of range"):
        router.link(det.name, [sae.d_sae], sae)


def _policy_res(det, corrector):
    pol = Policy.from_dict({"detectors": {det.name: {"correct_above": 0.0, "corrector": corrector, "dose": 1.0}}})
    return pol.resolve(det.name, det.threshold)


class _Silenced:
    """The tiny SAE with one latent never firing: stands for "the stored features are silent here"."""

    def __init__(self, sae, latent):
        self.sae, self.latent = sae, latent
        self.hook, self.d_sae, self.W_dec, self.b_dec, self.fingerprint = sae.hook, sae.d_sae, sae.W_dec, sae.b_dec, sae.fingerprint

    def parameters(self):
        return self.sae.parameters()

    def encode(self, x):
        f = self.sae.encode(x).clone()
        f[..., self.latent] = 0.0
        return f


def test_guard_moves_up_when_the_linked_features_are_silent(setup):
    model, sae, live, *_ = setup
    det = _det(model, threshold=-1e9)  # every token flags
    router = Router()
    router.link(det.name, [live], _Silenced(sae, live))
    pol = Policy.from_dict({"detectors": {"dec": {"correct_above": -1e8, "block_above": 1e9, "corrector": "sae"}}})
    out = Guard(model, [det], policy=pol, router=router).generate("hello world", max_new_tokens=4)[0]
    ups = [a for a in out.actions if a.kind == "move_up"]
    assert ups and ups[0].detail["reason"] == "sae_features_silent" and ups[0].detail["to"] == "block"
    assert out.blocked and out.correctors == [] and len(out.token_ids) <= 1
    with pytest.raises(PolicyError, match="no SAE is registered"):  # an unlinked router refuses 'sae' before generating
        Guard(model, [det], policy=pol, router=Router())


def test_guard_clamps_linked_features_and_reports_exact_token_features(setup, tmp_path):
    model, sae, live, on, off = setup
    det = _det(model, threshold=-1e9)
    router = Router()
    router.link(det.name, [live], sae)
    pol = Policy.from_dict({"detectors": {"dec": {"correct_above": -1e8, "corrector": "addition", "dose": 1.0}}})
    audit = tmp_path / "audit.jsonl"
    guard = Guard(model, [det], policy=pol, router=router, features=sae.d_sae, scoring="token", audit=audit)
    out = guard.generate(["hello world", "the cat"], max_new_tokens=6)
    flagged = [a for o in out for a in o.actions if "sae_features" in a.detail]
    assert flagged, "every token is flagged, so some action carries its features"
    for a in flagged:
        rep = a.detail["sae_features"]
        assert rep["sae"] == sae.fingerprint and rep["hook"] == HOOK
        total = sum(f["attribution"] for f in rep["features"]) + rep["error"] + rep["bias"]
        assert total == pytest.approx(a.score, abs=1e-4)  # every active latent reported: the parts sum to the score
    routes = [c["corrector"] for o in out for c in o.correctors]
    assert "sae" in routes and set(routes) <= {"sae", "addition"}
    rec = [json.loads(line) for line in audit.read_text().splitlines()]
    assert any("sae_features" in a.get("detail", {}) and a["detail"]["sae_features"]["sae"] == sae.fingerprint
               for r in rec for a in r["actions"])


def test_load_link_checks_the_sae_and_write_link_never_overwrites_foreign_files(setup, tmp_path):
    model, sae, live, *_ = setup
    det = _det(model)
    det.save(tmp_path / "det")
    link = {"sae": str(sae.path), "sae_name": sae.name, "sae_fingerprint": sae.fingerprint, "hook": HOOK, "features": [live]}
    write_link(tmp_path / "det", tmp_path / "linked", link)
    router = Router()
    assert router.load_link(det, tmp_path / "linked", model) == (live,)
    assert router.sae_for(HOOK) is not None and router.linked("dec") == (live,)
    assert Router().load_link(det, tmp_path / "det", model) == ()  # no link: nothing routed
    write_link(tmp_path / "det", tmp_path / "linked", {**link, "features": [live, 0]})  # an earlier link is replaced
    assert read_link(tmp_path / "linked")["features"] == [live, 0]
    bad = tmp_path / "bad"
    write_link(tmp_path / "det", bad, {**link, "sae_fingerprint": "0" * 16})
    with pytest.raises(PolicyError, match="re-run `coalign sae link`"):
        Router().load_link(det, bad, model)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ArtifactError, match="refusing to overwrite"):
        write_link(tmp_path / "det", mine, link)
    assert (mine / "notes.txt").read_text() == "keep me" and not (mine / "sae_link.json").exists()


def test_monitor_only_guard_reports_features_where_a_flag_rises(setup):
    model, sae, live, *_ = setup
    det = _det(model, threshold=-1e9)  # the packaged default policy monitors it: a flag rises at token 0
    router = Router()
    router.register_sae(HOOK, sae)  # no link needed to explain, only to route
    out = Guard(model, [det], router=router, features=3, scoring="token").generate("hello world", max_new_tokens=3)[0]
    mon = [a for a in out.actions if a.kind == "monitor"]
    assert [a.token for a in mon] == [0]
    rep = mon[0].detail["sae_features"]
    assert rep["sae"] == sae.fingerprint and 1 <= len(rep["features"]) <= 3
    assert all(f["activation"] > 0 for f in rep["features"])
    plain = Guard(model, [det], router=router).generate("hello world", max_new_tokens=3)[0]
    assert plain.token_ids == out.token_ids and "sae_features" not in plain.actions[0].detail  # reporting changes nothing else
