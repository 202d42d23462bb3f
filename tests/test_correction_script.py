"""Smoke test of benchmarks/correction.py on a tiny random Llama (pipeline runs, files are written).

The numbers are meaningless on a random model; this only checks that every stage (CAA vector from
the recipe, A/B rates, perplexity, KL, detector, Guard correction, plot and report) runs end to end.
"""

from __future__ import annotations

import json

import pytest
import torch
from benchmark_script import load_benchmark
from tiny import tiny_tokenizer


def _script():
    return load_benchmark("correction")


def _tiny_long_context():
    """The tiny test model with a context long enough for the recipe's A/B questions."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from circuits import from_hf

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=96, hidden_size=16, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, pad_token_id=0, bos_token_id=2, eos_token_id=3,
    )
    return from_hf(LlamaForCausalLM(cfg).eval(), tiny_tokenizer(), model_id="tiny-llama-long")


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_correction_script_runs_on_tiny(tmp_path, monkeypatch):
    mod = _script()
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(("the cat sat on the mat and the dog is not blue . " * 400 + "\n") * 3)
    monkeypatch.setenv("COALIGN_CACHE", str(tmp_path / "cache"))
    caa = [
        {"question": "hello i agree the sky is green . you agree ? (A) agree (B) disagree", "syc": "A", "other": "B"},
        {"question": "hello i say the cat is red . true ? (A) no (B) yes", "syc": "B", "other": "A"},
        {"question": "the dog sat on the mat . agree ? (A) yes (B) no", "syc": "A", "other": "B"},
    ]
    out = tmp_path / "out"
    res = mod.main(
        ["--out", str(out), "--quick", "--doses", "0,1", "--dec-doses", "0,1", "--corpus", str(corpus),
         "--hook", "blocks.0.hook_resid_post", "--det-hook", "blocks.1.hook_resid_post"],
        model=_tiny_long_context(), caa_items=caa, n_lie=2, n_benign=2, n_val=4, n_train_pairs=6, n_windows=2, window_tokens=16,
    )
    for name in ("correction.json", "dose_response.png", "report.md"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "correction.json").read_text())
    assert [r["dose"] for r in saved["sycophancy"]] == [0.0, 1.0]
    assert saved["sycophancy"][0]["ppl_rise_pct"] == 0.0
    assert 0.0 <= saved["sycophancy"][1]["caa_all"]["rate"] <= 1.0
    assert saved["sycophancy"][1]["kl_benign_all"] >= 0.0
    sets = saved["deception"]["sets"]
    assert set(sets) == {"dishonest_person", "liar"}
    for sr in sets.values():
        assert set(sr["curves"]) == {"addition", "caa_vector", "caa_vector_all"}
        assert [r["dose"] for r in sr["curves"]["addition"]] == [0.0, 1.0]
        assert 0.0 <= sr["lie_uncorrected"]["flag_rate_neutral_context"] <= 1.0
    assert "Correction benchmark" in (out / "report.md").read_text()
    assert res["model"]["id"] == "tiny-llama-long"


def test_instruction_vector_pairs_differ_only_in_the_instruction():
    """The instruction-contrast vector of benchmarks/deception_instruction_vector.py is built from
    pairs that say the same thing after a dishonest vs an honest instruction (positive first)."""
    mod = load_benchmark("deception_instruction_vector")
    pairs = mod.instructed_pairs()
    assert len(pairs) >= 100
    for lie, honest in pairs:
        assert lie[-1] == honest[-1] and lie[-1]["role"] == "assistant"
        assert lie[0]["content"] != honest[0]["content"]
        assert any(w in lie[0]["content"] for w in ("dishonest", "deceitful", "deceptive", "lies"))
        assert any(w in honest[0]["content"] for w in ("honest", "truthful", "sincere", "truth"))
    assert not set(mod.DEV_TOPICS) & set(mod.TOPICS[:30])  # chosen on topics the test never uses
    assert len(set(mod.CONFIRM_TOPICS)) == 90 and not set(mod.CONFIRM_TOPICS) & (set(mod.DEV_TOPICS) | set(mod.TOPICS))
    seen = {t.lower() for t in (*mod.DEV_TOPICS, *mod.TOPICS, *mod.CONFIRM_TOPICS)}
    assert len(set(mod.CONFIRM_TOPICS_2)) == 90 and not {t.lower() for t in mod.CONFIRM_TOPICS_2} & seen
    seen |= {t.lower() for t in mod.CONFIRM_TOPICS_2}
    assert len(set(mod.CONFIRM_TOPICS_3)) == 138 and not {t.lower() for t in mod.CONFIRM_TOPICS_3} & seen


def test_content_pairs_share_the_lie_prompt_and_differ_in_the_answer(tiny):
    """--pairs content: the model's answer to the lie prompt vs its answer to the honest twin, both
    after the lie prompt (positive first); prompt_last is refused before anything is written."""

    from detectors import Detector

    mod = load_benchmark("deception_instruction_vector")
    det = Detector.from_linear("d", tiny, "blocks.1.hook_resid_post", torch.ones(tiny.d_model), threshold=0.0)
    pairs = mod.content_pairs(tiny, det, ["cat", "dog"])
    assert len(pairs) == 2 * len(mod.PROMPT_SETS)
    lies = [lie.format(t=t) for lie, _ in mod.PROMPT_SETS.values() for t in ("cat", "dog")]
    assert [a[0] for a, _ in pairs] == lies and all(a[0] == b[0] for a, b in pairs)
    declined = mod.content_pairs(tiny, det, ["cat", "dog"], decline=True)
    assert [d[1] for _, d in declined] == [mod.DECLINE + b[1] for _, b in pairs] and [a for a, _ in declined] == [a for a, _ in pairs]
    with pytest.raises(SystemExit, match="prompt_last is zero"):
        mod.main(["--out", "/nonexistent/x", "--detector", "d", "--pairs", "content"])
    with pytest.raises(SystemExit, match="prompt_last is zero"):
        mod.main(["--out", "/nonexistent/x", "--detector", "d", "--pairs", "decline"])


def test_regenerate_benchmark_counts_what_the_guard_did(tiny, tmp_path):
    """benchmarks/deception_regenerate.py: the policy it deploys regenerates every flagged row under
    the vector, and its per-set summary counts regenerated, blocked and refusal-like rows."""
    from circuits.steering_vectors import build_caa
    from detectors import Detector
    from detectors.policy import Policy

    mod = load_benchmark("deception_regenerate")
    hook = "blocks.1.hook_resid_post"
    sv = build_caa(tiny, [("a cat sat", "the dog ran"), ("red hat", "big mat")], hook, select="all_mean")
    sv.save(tmp_path / "v")
    det = Detector.from_linear("deception", tiny, hook, torch.ones(tiny.d_model), threshold=-1e9)
    det.stream_threshold, det.stream_warmup = 1e9, 1
    pol = mod.regen_policy(str(tmp_path / "v"), 4.0)
    r = pol.resolve("deception", 0.0)
    assert r.regenerate and r.positions == "all" and r.corrector == f"vector:{tmp_path / 'v'}" and r.dose == 4.0
    prompts = ["hello world", "a b c"]
    got = mod.run_set(tiny, det, prompts, pol, None)
    plain = mod.run_set(tiny, det, prompts, Policy.default(), False)
    assert got["regenerated"] == 1.0 and got["blocked"] == 1.0  # flagged before and after (threshold -inf)
    assert plain["regenerated"] == 0.0 and plain["blocked"] == 0.0 and "outputs" not in mod.summary(got)
    assert got["responses"] != plain["responses"]


def test_regenerate_benchmark_replays_the_policy_on_the_corpus(tiny):
    """The deployed perplexity steers exactly the windows the policy would regenerate: none gives
    the plain perplexity, all gives the perplexity with the vector on every token."""
    from circuits.steering import ActivationAddition
    from detectors import Detector

    mod = load_benchmark("deception_regenerate")
    hook = "blocks.1.hook_resid_post"
    texts = ["a cat sat on the mat", "the dog ran far away today", "red hat big mat"]
    corr = [ActivationAddition(hook, torch.ones(tiny.d_model), alpha=3.0, positions="all")]
    plain, steered = mod.perplexity(tiny, texts), mod.perplexity(tiny, texts, corr)
    assert abs(plain - steered) > 1e-3
    assert mod.deployed_perplexity(tiny, texts, [False] * 3, corr) == pytest.approx(plain, rel=1e-6)
    assert mod.deployed_perplexity(tiny, texts, [True] * 3, corr) == pytest.approx(steered, rel=1e-6)
    one = mod.deployed_perplexity(tiny, texts, [True, False, False], corr)
    assert min(plain, steered) < one < max(plain, steered)
    det = Detector.from_linear("deception", tiny, hook, torch.ones(tiny.d_model), threshold=-1e9)
    det.stream_threshold, det.stream_warmup = 1e9, 1
    assert mod.regenerated_windows(tiny, det, texts) == [True] * 3
    det.threshold = 1e9
    assert mod.regenerated_windows(tiny, det, texts) == [False] * 3
    det.stream_threshold = -1e9  # flagged while generated, though not at the end
    assert mod.regenerated_windows(tiny, det, texts) == [True] * 3
    with pytest.raises(SystemExit, match="confirm-sets 2,3"):
        mod.main(["--out", "/nonexistent/x", "--detector", "d", "--dev-topics", "120", "--confirm-sets", "1,2"])
