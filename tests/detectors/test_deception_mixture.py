"""detectors.deception_mixture on the tiny model: the one-call mixture is the benchmark's rule."""

from __future__ import annotations

from tiny import tiny_long_model as _tiny_long_context


def test_train_deception_mixture_is_the_benchmarks_rule(tmp_path, monkeypatch):
    """The library's one-call mixture (``coalign train deception --mixture``) folds the default and
    the concealment detectors with the weight its rule picks from held-out instructed pairs."""
    import numpy as np
    import pytest

    from circuits.errors import InputError
    from detectors import Detector
    from detectors.deception_mixture import (
        FLOOR,
        WEIGHT_GRID,
        held_out_families,
        train_deception_mixture,
    )

    monkeypatch.setenv("COALIGN_CACHE", str(tmp_path / "cache"))
    model = _tiny_long_context()
    mix = train_deception_mixture(model, n_control=40)
    m = mix.metrics
    assert mix.probe_kind == "ensemble" and mix.behaviour == "deception" and mix.name == "deception_mixture"
    assert [r["weight"] for r in m["mixture_selection"]] == list(WEIGHT_GRID)
    ok = [r["weight"] for r in m["mixture_selection"] if min(r["instructed"], r["false_statement"]) >= FLOOR]
    assert m["mixture_weight"] == (max(ok) if ok else 0.0)
    parts = m["components"]
    assert [round(p["weight"], 6) for p in parts] == [round(1 - m["mixture_weight"], 6), round(m["mixture_weight"], 6)]
    # the same as training both parts by hand and combining them with that weight
    base = Detector.train("deception", model, n_control=40)
    conc = Detector.train("deception", model, data=["recipe:deception/concealment", "recipe:deception/concealment_2"],
                          negatives=None, n_control=40)
    by_hand = Detector.combine([base, conc], model, weights=[1 - m["mixture_weight"], m["mixture_weight"]], n_control=40)
    items = held_out_families()["instructed"].items[:8]
    np.testing.assert_allclose(mix.score(model, items), by_hand.score(model, items), rtol=1e-5, atol=1e-5)
    assert mix.threshold == pytest.approx(by_hand.threshold)
    mix.save(tmp_path / "mix")
    assert Detector.load(tmp_path / "mix", model).metrics["mixture_weight"] == m["mixture_weight"]
    with pytest.raises(InputError, match="'data' is fixed"):
        train_deception_mixture(model, data=["x.jsonl"])
