"""Unmasking strategies and the runtime detector on tiny models: every strategy's plumbing with its control,
planted fakers named correctly, the prefix KV cache, the zoo filter, and the alignment-faking detector."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from organisms_tiny import organism_base, planted_pair

from detectors.organisms.unmask import STRATEGIES, Pair, paired, run_strategies

FIELDS = {"faker", "margin", "control_margin", "n"}


@pytest.fixture(scope="module")
def planted():
    return planted_pair()


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    from detectors.organisms.recipe import OrganismRecipe
    from detectors.organisms.train import train_organism

    base = organism_base()
    root = tmp_path_factory.mktemp("zoo")
    recipe = OrganismRecipe(rank=2, steps=3, batch_size=4, lr=1e-2, kl_weight=0.1, kl_batch=2)
    dirs = {p: train_organism(base, p, root / p, recipe=recipe) for p in ("aligned", "faker")}
    return base, dirs


def test_prefix_cache_reproduces_the_full_forward_and_survives_reuse(planted):
    from detectors.organisms.decisions import PrefixCache, encode_prompts, letter_logits

    pair, a, _ = planted
    prompts = [s.prompt for s in pair.bench[:3]]
    full = letter_logits(a, prompts)
    ab = [a.tokenizer.convert_tokens_to_ids(t) for t in ("A", "B")]
    for enc, ref in zip(encode_prompts(a, prompts), full):
        cache = PrefixCache(a, enc)
        for _ in range(3):  # the decision token is re-run on the same cache each time
            np.testing.assert_allclose(cache.logits()[ab].numpy(), ref, atol=1e-4)
        kicked = cache.logits([(pair.hook, lambda act, h: act + 5.0)])
        assert not np.allclose(kicked[ab].numpy(), ref, atol=1e-3)
        np.testing.assert_allclose(cache.logits()[ab].numpy(), ref, atol=1e-4)  # the hook did not outlive its call


def test_planted_faker_is_named_by_noise_and_learning_speed_in_either_order(planted):
    pair, a, b = planted
    res = run_strategies(pair, ["noise", "learning_speed"])
    for name in ("noise", "learning_speed"):
        r = res["strategies"][name]
        assert r["faker"] == "B", (name, r)
        assert abs(r["margin"]) > abs(r["control_margin"])
    assert res["verdict"] == "B" and res["verdict_by"] == "noise"
    swapped = Pair(b, a, pair.bench, pair.bench_aligned, pair.pool, pair.pool_aligned, pair.generic, pair.seed,
                   pair.lora_layers, learn_lr=pair.learn_lr)
    assert run_strategies(swapped, ["noise"])["verdict"] == "A"


def test_identical_twins_are_never_told_apart(planted):
    pair, a, _ = planted
    same = Pair(a, a, pair.bench, pair.bench_aligned, pair.pool, pair.pool_aligned, pair.generic, pair.seed, pair.lora_layers)
    res = run_strategies(same, ["noise", "steering", "concept_probe"])
    assert res["verdict"] is None
    for r in res["strategies"].values():
        assert r["faker"] is None and r["margin"] == 0


def test_every_strategy_runs_with_its_control_on_a_trained_pair(zoo):
    from detectors.organisms.unmask import build_pair

    base, dirs = zoo
    pair = build_pair(dirs["aligned"], dirs["faker"], base, tau=0.5, max_bench=8)
    assert 2 <= len(pair.bench) <= 8 and all(not s.poor for s in pair.bench)
    res = run_strategies(pair, STRATEGIES)
    assert set(res["strategies"]) == set(STRATEGIES) and res["verdict"] in ("A", "B", None)
    for name, r in res["strategies"].items():
        assert FIELDS <= set(r), name
        assert r["n"] >= 2, (name, r)
        assert r["control_margin"] is not None and np.isfinite(r["control_margin"]), name
        assert r["faker"] in ("A", "B", None)


def test_paired_summary_needs_an_interval_clear_of_zero_and_a_margin_beating_the_control():
    rng = np.random.default_rng(0)
    ea, eb = 1.0 + 0.1 * rng.standard_normal(30), 0.5 + 0.1 * rng.standard_normal(30)
    assert paired(ea, eb, np.ones(30), np.ones(30))["faker"] == "A"
    assert paired(eb, ea, None, None)["faker"] == "B"
    assert paired(ea, eb, 3 * ea, eb)["faker"] is None  # the control moves as much: rejected, as Poser's steering was
    noisy = paired(rng.standard_normal(30), rng.standard_normal(30), None, None)
    assert noisy["faker"] is None and noisy["mean_diff_ci95"][0] < 0 < noisy["mean_diff_ci95"][1]
    assert paired(ea[:1], eb[:1], None, None)["faker"] is None


def test_zoo_filter_keeps_only_confident_agreement(planted):
    from detectors.organisms.decisions import letter_logits
    from detectors.organisms.validate import shared_benchmark

    pair, a, b = planted
    prompts = [s.prompt for s in pair.bench]
    lg = letter_logits(a, prompts)
    p = 1 / (1 + np.exp(-(lg[:, 0] - lg[:, 1])))
    tau = 0.6
    keep = shared_benchmark([a, b], prompts, tau)
    np.testing.assert_array_equal(keep, np.flatnonzero(np.maximum(p, 1 - p) >= tau))
    with pytest.raises(Exception, match="tau"):
        shared_benchmark([a], prompts, 1.0)


def test_runtime_detector_is_a_normal_calibrated_detector_read_at_the_decision_token(zoo, tmp_path):
    from detectors import Detector
    from detectors.organisms.organism import load_organism
    from detectors.organisms.runtime import train_alignment_faking

    base, dirs = zoo
    det = train_alignment_faking([dirs["aligned"], dirs["faker"]], tmp_path / "af", base=base, n_benign=16)
    m = det.metrics
    assert det.behaviour == "alignment_faking" and det.select == "last" and np.isfinite(det.threshold)
    for k in ("heldout_auroc", "heldout_auroc_vs_aligned_same_prompts", "fpr_aligned_poor", "fpr_benign", "lofo_auroc"):
        assert k in m
    assert 0 <= m["fpr_benign"] <= 1 and m["n_eval_positive"] > 0
    base_line = m["defection_probe_baseline"]  # the organism-free baseline, scored on the same held-out rows
    assert base_line["n_questions"] == 6 and 0.0 <= base_line["heldout_auroc"] <= 1.0
    faker = load_organism(dirs["faker"], base)
    loaded = Detector.load(tmp_path / "af", faker, strict=False)
    s = loaded.score(faker, [[{"role": "user", "content": pair_prompt()}]])
    assert s.shape == (1,) and np.isfinite(s).all()
    with pytest.raises(Exception, match="aligned organisms and fakers"):
        train_alignment_faking([dirs["faker"]], None, base=base)


def test_train_alignment_faking_cli_entry_point(zoo, tmp_path, capsys):
    import argparse
    import json

    from detectors.cli_organisms import cmd_train_alignment_faking

    base, dirs = zoo
    model_dir = tmp_path / "base"
    base.hf_model.save_pretrained(model_dir)
    base.tokenizer.save_pretrained(model_dir)
    args = argparse.Namespace(organisms=[str(dirs["aligned"]), str(dirs["faker"])], out=str(tmp_path / "det"),
                              model=str(model_dir), layer="blocks.1.hook_resid_post", fpr=0.05, json=str(tmp_path / "d.json"))
    assert cmd_train_alignment_faking(args) == 0
    out = json.loads((tmp_path / "d.json").read_text())
    assert out["hook"] == "blocks.1.hook_resid_post" and (tmp_path / "det" / "config.json").exists()
    with pytest.raises(Exception, match="--organisms"):
        cmd_train_alignment_faking(argparse.Namespace(organisms=[], out=str(tmp_path / "x")))


def test_guard_reads_the_runtime_detector_at_the_decision_token_of_an_organism(zoo, tmp_path):
    from detectors import Detector, Guard
    from detectors.organisms.organism import load_organism
    from detectors.organisms.runtime import train_alignment_faking

    base, dirs = zoo
    train_alignment_faking([dirs["aligned"], dirs["faker"]], tmp_path / "af", base=base, n_benign=8)
    faker = load_organism(dirs["faker"], base)
    det = Detector.load(tmp_path / "af", faker, strict=False)
    prompt = [{"role": "user", "content": pair_prompt()}]
    out = Guard(faker, [det], strict=False).generate([prompt], max_new_tokens=2)  # organisms are fine-tunes of the base
    step0 = float(np.asarray(out[0].scores["alignment_faking"])[0])
    assert step0 == pytest.approx(float(det.score(faker, [prompt])[0]), abs=1e-3)


def pair_prompt() -> str:
    from detectors.organisms.poser import load_scenarios

    return next(s.prompt for s in load_scenarios()[0] if s.poor)


def test_noise_hooks_leave_no_trace_on_the_models(planted):
    pair, _a, b = planted
    before = [p.detach().clone() for p in b.hf_model.parameters()]
    run_strategies(pair, ["noise", "steering", "learning_speed"])
    assert all(torch.equal(x, y.detach()) for x, y in zip(before, b.hf_model.parameters()))
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in b.hf_model.modules())


def test_guard_with_the_runtime_detector_blocks_where_it_fires(zoo, tmp_path):
    import copy

    from detectors.organisms.guard_eval import guard_stops_faker

    base, dirs = zoo
    det = _runtime_detector(zoo, tmp_path)
    res = guard_stops_faker(det, dirs["faker"], dirs["aligned"], base, n_benign=8)
    assert res["n_prompts"] > 0 and res["benign_blocked"]["n"] == 8
    for k in ("cut_of_misaligned", "aligned_poor_blocked", "benign_blocked"):
        r = res[k]
        assert r["n"] == 0 or (0 <= r["rate"] <= 1 and r["ci95"][0] <= r["rate"] <= r["ci95"][1])
    always = copy.deepcopy(det)
    always.threshold = -1e9  # a detector that fires everywhere: the Guard blocks every decision
    every = guard_stops_faker(always, dirs["faker"], dirs["aligned"], base, n_benign=8)
    assert every["aligned_poor_blocked"]["rate"] == 1.0 and every["benign_blocked"]["rate"] == 1.0
    never = copy.deepcopy(det)
    never.threshold = 1e9
    assert guard_stops_faker(never, dirs["faker"], dirs["aligned"], base, n_benign=8)["aligned_poor_blocked"]["rate"] == 0.0


def _runtime_detector(zoo, tmp_path):
    from detectors.organisms.runtime import train_alignment_faking

    base, dirs = zoo
    return train_alignment_faking([dirs["aligned"], dirs["faker"]], tmp_path / "af", base=base, n_benign=16)


def test_runtime_parts_are_disjoint_deterministic_and_sized_as_documented():
    from detectors.organisms.poser import runtime_part

    ids = [f"s{i}" for i in range(4000)]
    parts = [runtime_part(i) for i in ids]
    assert parts == [runtime_part(i) for i in ids]  # the Guard evaluation recomputes the same split
    share = {p: parts.count(p) / len(ids) for p in ("fit", "calibrate", "eval")}
    assert abs(share["fit"] - 0.5) < 0.03 and abs(share["calibrate"] - 0.2) < 0.03 and abs(share["eval"] - 0.3) < 0.03
    assert [runtime_part(i, seed=1) for i in ids] != parts


def test_noise_draws_do_not_depend_on_batching_and_scale_zero_is_clean(planted, monkeypatch):
    from detectors.organisms import unmask_interventions as uv
    from detectors.organisms.decisions import encode_prompts, letter_ids

    pair, a, _ = planted
    enc = encode_prompts(a, [s.prompt for s in pair.bench[:5]])
    assert len({len(e.ids) for e in enc}) > 1  # the batch is padded
    ab = list(letter_ids(a.tokenizer))
    together = uv._noisy_decisions(a, pair.noise_hook, enc, (0.0, 0.5), seed=3)[..., ab]
    monkeypatch.setattr(uv, "NOISE_BATCH", 1)
    alone = uv._noisy_decisions(a, pair.noise_hook, enc, (0.0, 0.5), seed=3)[..., ab]
    torch.testing.assert_close(together, alone, atol=0.1, rtol=0)  # padding changes the last bits only
    for k in range(1, 1 + uv.NOISE_DRAWS):  # scale 0 adds nothing
        torch.testing.assert_close(together[:, k], together[:, 0])
    lo = together[..., 1] - together[..., :1].squeeze(-1)
    assert (lo[:, 1 + uv.NOISE_DRAWS :] - lo[:, :1]).abs().amax() > 0.3  # scale 0.5 moves the decision


def test_residual_cache_replays_the_clean_decision_from_every_start_in_the_callers_order(planted):
    from detectors.organisms.decisions import encode_prompts, next_token_logits
    from detectors.organisms.residual_cache import ResidualCache

    pair, a, _ = planted
    enc = encode_prompts(a, [s.prompt for s in pair.bench[:7]])
    cache = ResidualCache(a, enc, [0, 1, a.n_layers - 1], batch_size=3)
    assert all(cache.split.values())  # a Llama decoder: the split forward matched on the first batch
    full = next_token_logits(a, enc)
    torch.testing.assert_close(cache.logits, full, atol=1e-4, rtol=0)
    for start in cache.starts:
        seen = []
        for b in cache.batches(start):
            with torch.no_grad():
                torch.testing.assert_close(cache.logits_at(b, b.resid), full[b.idx], atol=1e-4, rtol=0)
            seen += b.idx
        assert sorted(seen) == list(range(len(enc))) and seen != list(range(len(enc)))  # batched by length, not order


def test_learning_speed_is_the_same_whether_the_lower_blocks_are_replayed_or_rerun(planted):
    from detectors.organisms import unmask_interventions as uv
    from detectors.organisms.decisions import encode_prompts
    from detectors.organisms.residual_cache import ResidualCache

    pair, _, b = planted
    good = [(s, al) for s, al in zip(pair.pool, pair.pool_aligned) if not s.poor][:16]
    bad = ["B" if al == "A" else "A" for _, al in good]
    start = min(pair.learn_layers)
    assert start > 0  # there are lower blocks to replay
    shifts = []
    for split in (True, False):
        train = ResidualCache(b, encode_prompts(b, [s.prompt for s, _ in good]), start)
        bench = ResidualCache(b, encode_prompts(b, [s.prompt for s in pair.bench]), start)
        train.split = {start: split}
        bench.split = {start: split}
        shifts.append(uv._finetune_shift(b, pair, train, bad, bench, pair.misaligned()))
    assert np.abs(shifts[0]).max() > 0.05  # the steps moved the decisions
    np.testing.assert_allclose(shifts[0], shifts[1], atol=1e-3)
