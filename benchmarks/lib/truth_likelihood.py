"""Does the model's own next-token likelihood know more truth than a probe reads out?

Every truth probe in this project is a read-out at one position. This asks the model directly,
without training a truth direction: how likely does it find the end of the statement? For
"The salmon is a fish", the log-probability of " fish" after "The salmon is a". Language models
largely ignore negation ("is not a fish" still makes " fish" likely), so the score is flipped
for negated statements, using either the set's file name (an oracle) or a polarity probe trained
on the truth suite's training sets (affirmative vs negated, logistic regression on the last
token; the polarity is syntax, not knowledge).

Candidate scores: the summed log-probability of the statement's last k tokens (k = 1..4, final
full stop removed), raw or as pointwise mutual information (minus the log-probability of the
same k tokens right after BOS, so that a frequent object word gains nothing). The candidate is
chosen on the training sets (cities, sp_en_trans and their negations); the mean AUROC over the
10 unseen sets (label 1 = false) is reported for it, and for every candidate as an upper bound.

Config: ``benchmarks/configs/truth_likelihood.toml``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from benchmarks.lib.probes.data import TRUTH_TEST, TRUTH_TRAIN, cap_rows
from benchmarks.lib.truth_prompt_formats import hooks_for
from benchmarks.registry import analysis
from benchmarks.suite import BenchmarkConfigError, Context, Result
from circuits import capture
from circuits.errors import InputError
from probe.datasets import load_dataset

KS = (1, 2, 3, 4)


@torch.no_grad()
def token_logprobs(hf_model, tokenizer, token_lists: list[list[int]], batch_size: int = 32) -> list[np.ndarray]:
    """Log-probability of each token after BOS and the tokens before it (one array per sequence)."""
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[np.ndarray] = []
    for i in range(0, len(token_lists), batch_size):
        seqs = [[bos, *t] for t in token_lists[i : i + batch_size]]
        width = max(map(len, seqs))
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for j, s in enumerate(seqs):  # right padding: positions before a token never see a pad
            ids[j, : len(s)] = torch.tensor(s)
            mask[j, : len(s)] = 1
        ids, mask = ids.to(hf_model.device), mask.to(hf_model.device)
        logits = hf_model(input_ids=ids, attention_mask=mask).logits
        lp = torch.log_softmax(logits.float(), -1)[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
        out += [lp[j, : len(s) - 1].cpu().numpy() for j, s in enumerate(seqs)]
    return out


def likelihood_features(hf_model, tokenizer, statements: list[str]) -> dict[str, np.ndarray]:
    """``raw_k`` and ``pmi_k`` for each k in KS: how likely the model finds each statement's ending.

    A statement of k tokens or fewer is scored on all of them (its PMI is then 0)."""
    toks = [tokenizer(s.rstrip().rstrip("."), add_special_tokens=False)["input_ids"] for s in statements]
    if not all(toks):
        raise InputError(f"statement {statements[next(i for i, t in enumerate(toks) if not t)]!r} has no tokens")
    full = token_logprobs(hf_model, tokenizer, toks)
    feats: dict[str, np.ndarray] = {}
    for k in KS:
        raw = np.array([f[-k:].sum() for f in full])
        alone = np.array([a.sum() for a in token_logprobs(hf_model, tokenizer, [t[-k:] for t in toks])])
        feats[f"raw_{k}"], feats[f"pmi_{k}"] = raw, raw - alone
    return feats


def falseness(likelihood: np.ndarray, negated: np.ndarray) -> np.ndarray:
    """Higher = more likely false: an unlikely ending of an affirmative statement, a likely one of a negated."""
    return np.where(negated.astype(bool), likelihood, -likelihood)


def mean_auroc(sets: dict, names: list[str], feature: str, polarity: str) -> float:
    return float(np.mean([roc_auc_score(sets[n]["y"], falseness(sets[n]["feats"][feature], sets[n][polarity]))
                          for n in names]))


@analysis({"rows": 400})
def run_truth_likelihood(ctx: Context) -> Result:
    """The ending's likelihood as a falseness score, polarity from a probe trained on the training sets."""
    args, model = ctx.p, ctx.model
    if not hasattr(model, "hf_model"):
        raise BenchmarkConfigError("this benchmark reads logits from a Hugging Face model")
    hook = hooks_for(model.n_layers)[0]
    root = ctx.datasets
    sets: dict[str, dict] = {}
    for rel in TRUTH_TRAIN + TRUTH_TEST:
        ds = cap_rows(load_dataset(root / rel), args.rows, 0)
        stmts = list(ds.items)
        acts = capture(model, stmts, [hook], select="last", batch_size=32, cache_dir=ctx.cache / "acts")
        name = Path(rel).stem
        sets[name] = {"y": np.asarray(ds.labels), "acts": acts.acts[hook].astype(np.float64),
                      "oracle": np.full(len(ds), name.startswith("neg_")),
                      "feats": likelihood_features(model.hf_model, model.tokenizer, stmts)}
        ctx.log(f"{name} {len(ds)}")
    train, test = [Path(p).stem for p in TRUTH_TRAIN], [Path(p).stem for p in TRUTH_TEST]
    X = np.concatenate([sets[n]["acts"] for n in train])
    pol = np.concatenate([sets[n]["oracle"] for n in train])
    mu, sd = X.mean(0), X.std(0) + 1e-6
    polarity_probe = LogisticRegression(C=0.1, max_iter=3000).fit((X - mu) / sd, pol)
    for n in sets:
        sets[n]["learned"] = polarity_probe.predict((sets[n]["acts"] - mu) / sd)
    features = [f"{kind}_{k}" for kind in ("raw", "pmi") for k in KS]
    table = {f: {pol_kind: {"train": mean_auroc(sets, train, f, pol_kind), "test": mean_auroc(sets, test, f, pol_kind)}
                 for pol_kind in ("learned", "oracle")} for f in features}
    chosen = max(features, key=lambda f: table[f]["learned"]["train"])
    per_set = {n: roc_auc_score(sets[n]["y"], falseness(sets[n]["feats"][chosen], sets[n]["learned"])) for n in test}
    res = {
        "model": model.model_id, "rows_per_set": args.rows, "polarity_hook": hook,
        "polarity_accuracy_unseen": float(np.mean(np.concatenate([sets[n]["learned"] == sets[n]["oracle"] for n in test]))),
        "chosen_on_training_sets": chosen,
        "test_mean_auroc_chosen": table[chosen]["learned"]["test"],
        "test_per_set_chosen": per_set,
        # an upper bound: the candidate and polarity source picked on the unseen sets themselves
        "test_mean_auroc_best_any": max(v["test"] for f in features for v in table[f].values()),
        "features": table,
    }
    figures = {k: res[k] for k in ("chosen_on_training_sets", "test_mean_auroc_chosen", "test_mean_auroc_best_any",
                                   "polarity_accuracy_unseen")}
    return Result(figures=figures, data=res, tables={"per unseen set (chosen feature)": [{"set": n, "auroc": v} for n, v in per_set.items()]})
