"""benchmarks/truth_likelihood.py: padded batches give each statement its own log-probabilities,
PMI removes exactly the ending's BOS-only likelihood, and negated statements are scored the other way."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from benchmark_script import load_benchmark
from tiny import tiny_hf_model, tiny_tokenizer

from circuits.errors import InputError


def _script():
    return load_benchmark("truth_likelihood")


STATEMENTS = ["the sky is blue and green", "paris is in france and rome is in italy", "the cat sat on the mat", "one two three four five"]


def test_batched_logprobs_equal_a_manual_unpadded_forward():
    mod, hf, tok = _script(), tiny_hf_model(), tiny_tokenizer()
    toks = [tok(s, add_special_tokens=False)["input_ids"] for s in STATEMENTS]
    batched = mod.token_logprobs(hf, tok, toks, batch_size=4)
    for t, got in zip(toks, batched):
        ids = torch.tensor([[tok.bos_token_id, *t]])
        with torch.no_grad():
            lp = torch.log_softmax(hf(input_ids=ids).logits.float(), -1)[0, :-1]
        want = lp[torch.arange(len(t)), torch.tensor(t)].numpy()
        assert got.shape == (len(t),)
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_pmi_is_raw_minus_the_ending_alone():
    mod, hf, tok = _script(), tiny_hf_model(), tiny_tokenizer()
    feats = mod.likelihood_features(hf, tok, [s + "." for s in STATEMENTS])
    for k in mod.KS:
        endings = [tok(s, add_special_tokens=False)["input_ids"][-k:] for s in STATEMENTS]
        alone = np.array([a.sum() for a in mod.token_logprobs(hf, tok, endings, batch_size=1)])
        np.testing.assert_allclose(feats[f"raw_{k}"] - feats[f"pmi_{k}"], alone, atol=1e-5)
    assert not np.allclose(feats["raw_1"], feats["raw_2"])


def test_short_statement_uses_all_its_tokens_and_empty_one_is_named():
    mod, hf, tok = _script(), tiny_hf_model(), tiny_tokenizer()
    feats = mod.likelihood_features(hf, tok, ["paris is in france and italy", "the sky"])
    whole = mod.token_logprobs(hf, tok, [tok("the sky", add_special_tokens=False)["input_ids"]])[0].sum()
    for k in mod.KS[1:]:
        assert feats[f"raw_{k}"][1] == pytest.approx(whole, abs=1e-5) and feats[f"pmi_{k}"][1] == pytest.approx(0, abs=1e-5)
    with pytest.raises(InputError, match="'.' has no tokens"):
        mod.likelihood_features(hf, tok, ["the sky", "."])


def test_negated_statements_score_the_other_way():
    mod = _script()
    lik = np.array([-1.0, -5.0, -1.0, -5.0])
    neg = np.array([False, False, True, True])
    # a likely affirmative ending is true (low falseness); a likely negated ending is false
    np.testing.assert_array_equal(mod.falseness(lik, neg), [1.0, 5.0, -1.0, -5.0])
