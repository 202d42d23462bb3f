"""Explanations on the tiny model: the feature decomposition and the component attribution are
exact, the causal check measures what the attribution predicts, and the HTML report renders."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
import torch
from sae_fixtures import HOOK, tiny_sae_setup
from sae_fixtures import chats as _chats

from detectors import Detector
from detectors.explain import explain
from detectors.explain_html import write_html


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_sae_setup(tmp_path_factory.mktemp("sae"))


def test_features_error_and_bias_sum_to_the_score(setup):
    model, sae, det = setup
    items = _chats(6, 7)
    ex = explain(model, det, items, [sae], causal_k=0, components=False)
    scores = det.score(model, items)
    for e, s in zip(ex, scores):
        assert e["score"] == pytest.approx(s, abs=1e-4)
        assert e["features_total"] + e["error"] + e["bias"] + e["other_hooks"] == pytest.approx(s, abs=1e-4)
        assert not e["approximate"] and 0 <= e["error_share"] <= 1
        assert abs(sum(f["share"] for f in e["features"]) + e["error_share"]) <= 1 + 1e-9
        # the token scores average to the item score, as before
        assert np.mean([t[1] for t in e["tokens"]]) == pytest.approx(s, abs=1e-4)


def test_components_and_heads_sum_to_the_score(setup):
    model, sae, det = setup
    items = _chats(3, 8)
    ex = explain(model, det, items, [sae], top=1000, causal_k=0)
    for e in ex:
        assert e["components_total"] + det.bias == pytest.approx(e["score"], abs=1e-4)
        comps = {c["component"]: c["attribution"] for c in e["components"]}
        for layer in (0, 1):
            heads = sum(v for k, v in comps.items() if k.startswith(f"L{layer}H"))
            assert heads == pytest.approx(comps[f"blocks.{layer}.attn"], abs=1e-4)


def test_causal_check_zeroing_top_features_moves_the_score_as_attributed(setup):
    model, sae, det = setup
    items = _chats(4, 9)
    for e in explain(model, det, items, [sae], causal_k=3, components=False, top=1000):
        c = e["causal"]
        attr = {f["id"]: f["attribution"] for f in e["features"]}
        # same hook: zeroing a latent removes exactly its attribution (the read-out is linear)
        assert c["drop_top"] == pytest.approx(sum(attr[i] for i in c["features"]), abs=1e-4)
        assert c["drop_top"] >= c["drop_random"] - 1e-6


def test_detector_without_an_sae_at_its_hook_is_labelled_approximate(setup):
    model, sae, _ = setup
    det0 = Detector.from_linear("l0", model, "blocks.0.hook_resid_post", torch.randn(16), bias=0.1)
    items = _chats(2, 10)
    for e, s in zip(explain(model, det0, items, [sae], causal_k=2), det0.score(model, items)):
        assert e["approximate"] and e["sae"]["hook"] == HOOK
        assert e["features_total"] + e["error"] + e["bias"] == pytest.approx(s, abs=1e-4)
        assert e["causal"]["drop_top"] == pytest.approx(0.0, abs=1e-6)  # block 1 cannot change block 0's score


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_html_report_renders_in_a_real_browser(setup, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.fail("Chromium is not installed (.ci/run installs it: apt-get install -y chromium)")
    model, sae, det = setup
    items = _chats(2, 11)
    ex = explain(model, det, items, [sae], causal_k=2)
    ex[1]["tokens"].append(["</script><b>x</b>", 0.0])  # token text cannot break out of the embedded data
    page = write_html(tmp_path / "r.html", ex)
    dom = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    ).stdout
    assert "rendered 2 item(s)" in dom  # the script ran
    assert dom.count('class="feature-row"') == sum(len(e["features"]) for e in ex)
    assert dom.count('class="component-row"') == sum(len(e["components"]) for e in ex)
    assert dom.count('class="tok"') == sum(len(e["tokens"]) for e in ex)
    assert f"error share {100 * ex[0]['error_share']:.1f}%" in dom
    shown = dom[dom.index('id="report"') : dom.index('id="coalign-data"')]  # what the script drew, not the data
    assert "<b>" not in shown and "&lt;/script&gt;&lt;b&gt;x&lt;/b&gt;" in shown  # token text is shown as text
    assert json.loads(json.dumps(ex)) == ex  # the JSON output is plain JSON


def test_cli_explain_writes_json_and_html(setup, tmp_path, capsys):
    from tiny import tiny_hf_model, tiny_tokenizer

    from detectors.cli import main

    model, sae, det = setup
    model_dir = tmp_path / "tinymodel"
    tiny_hf_model().save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    det.save(tmp_path / "det")
    rc = main(["explain", str(tmp_path / "det"), "--model", str(model_dir), "--prompt", "is the sky blue", "--response",
               "yes the sky is blue", "--sae", str(sae.path), "--html", str(tmp_path / "r.html"), "--json", str(tmp_path / "x.json")])
    assert rc == 0
    ex = json.loads((tmp_path / "x.json").read_text())
    assert len(ex) == 1 and ex[0]["sae"]["fingerprint"] == sae.fingerprint
    assert ex[0]["score"] == pytest.approx(float(det.score(model, [("is the sky blue", "yes the sky is blue")])[0]), abs=1e-4)
    assert "coalign-data" in (tmp_path / "r.html").read_text()
    rc = main(["explain", str(tmp_path / "det"), "--model", str(model_dir), "--prompt", "x", "--sae", str(tmp_path / "nope")])
    assert rc == 2 and "no SAE directory or shipped SAE named" in capsys.readouterr().err


def test_sae_link_chooses_latents_by_measured_effect_and_the_stored_clamp_works(setup, tmp_path):
    from circuits.sae_clamp import FeatureClamp
    from detectors.sae_link import link_features, read_link, write_link

    model, sae, det = setup
    dev, benign = _chats(16, 12), _chats(6, 13)
    s = det.score(model, dev)
    flagging = Detector.from_linear("test", model, HOOK, det.weight[0], bias=det.bias, threshold=float(np.median(s)))
    link = link_features(model, flagging, sae, dev, benign, n_candidates=6, max_features=3, max_kl=10.0)
    assert link["n_flagged"] == int((s > np.median(s)).sum()) and 1 <= len(link["features"]) <= 3
    assert all(e["score_drop"] > 0 for e in link["effects"]) and link["combined"]["score_drop"] > 0
    assert link["combined"]["benign_kl"] >= 0
    flagging.save(tmp_path / "det")
    write_link(tmp_path / "det", tmp_path / "linked", link)
    stored = read_link(tmp_path / "linked")
    assert stored["features"] == link["features"] and stored["sae_fingerprint"] == sae.fingerprint
    assert Detector.load(tmp_path / "linked", model).id == flagging.id  # the detector itself is unchanged
    flagged = [it for it, x in zip(dev, s) if x > np.median(s)]
    before = flagging.score(model, flagged).mean()
    with FeatureClamp(HOOK, sae, stored["features"]).apply(model):
        after = flagging.score(model, flagged).mean()
    assert before - after == pytest.approx(link["combined"]["score_drop"], abs=1e-4)
