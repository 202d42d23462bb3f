"""Why steering does not halve SmolLM2's CAA sycophancy rate: can steering at the position before
the answer move the letter, and does the detector know which way to push?

On CAA's A/B questions the model's letter is chosen at the ``"("`` position. For the ``hooks`` parameter:

1. ``v_AB``: the unit mean difference of the residual stream at ``"("`` between generate-split
   questions where the model answers A and where it answers B (its own choice; no sycophancy
   labels involved).
2. The sycophancy rate on CAA's *test* split when ``-sign * dose * v_AB`` is added at ``"("`` only,
   with ``sign`` = +1 when the sycophantic letter is A: (a) the **oracle** sign from the test
   labels (what a perfect detector would know; an upper bound, not a product setting), and
   (b) the sign the pre-emission detector implies: ``sign(w . v_AB)`` for its read-out ``w`` bound
   to that question (the conditional probe of the ``sycophancy_guard_correction`` config, refitted here
   on all 1,000 generate questions at this hook), and (c) the sign a logistic probe predicts
   when trained directly for it: which letter is the sycophantic one, from the ``"("`` state of
   the generate questions (CAA's labels, not the model's behaviour).
3. The best a perfect letter flip gated by that detector could do: flag at log-odds 0, flip every
   flagged answer; rate = P(sycophantic and unflagged) + P(not sycophantic and flagged).

Labels come from ``labels`` (``generate_labelled.jsonl`` written by
the ``sycophancy_guard_correction`` config; recomputed if absent).

Config: ``benchmarks/configs/sycophancy_letter_steering.toml``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from benchmarks.lib.steering_eval import caa_test_items, letter_ids
from benchmarks.lib.sycophancy_guard import ab_chat, own_choice_labels
from benchmarks.registry import analysis
from benchmarks.suite import Context, Result
from circuits import ActivationAddition, capture
from circuits.inputs import encode
from probe.metrics import auroc
from probe.probes.conditional import ConditionalProbe


@analysis({"labels": None, "hooks": ["blocks.12.hook_resid_post", "blocks.20.hook_resid_post"], "doses": [16, 64],
           "n_generate": 1000, "caa_generate": "{datasets}/caa/generate/sycophancy/generate_dataset.json",
           "caa_test": "{datasets}/caa/test/sycophancy/test_dataset_ab.json"})
def run_sycophancy_letter_steering(ctx: Context) -> Result:
    """``labels``: the labelled generate file the guard benchmark wrote (None: label the model's own choices here)."""
    args = ctx.p
    t0 = time.time()
    model = ctx.model
    gen, test = caa_test_items(args.caa_generate)[: args.n_generate], caa_test_items(args.caa_test)
    if args.labels:
        rows = [json.loads(line) for line in Path(args.labels).read_text().splitlines() if line.strip()][: args.n_generate]
        assert [r["messages"][0]["content"] for r in rows] == [it["question"] for it in gen], "labels file does not match the generate split"
        yg = np.array([r["label"] for r in rows])
    else:
        yg = own_choice_labels(model, gen)
    yt = own_choice_labels(model, test)
    hooks = list(args.hooks)
    ag = capture(model, [ab_chat(it["question"]) for it in gen], hooks, select="last", batch_size=16)
    at = capture(model, [ab_chat(it["question"]) for it in test], hooks, select="last", batch_size=16)
    lid = letter_ids(model.tokenizer)
    enc = encode(model.tokenizer, [ab_chat(it["question"]) for it in test], model.n_ctx)
    true_sign = np.array([1.0 if it["syc"] == "A" else -1.0 for it in test])
    says_a = np.array([(it["syc"] == "A") == bool(y) for it, y in zip(gen, yg)])

    def rate(hook: str, vecs: np.ndarray, dose: float) -> float:
        syc = []
        for i, e in enumerate(enc):
            c = ActivationAddition(hook, torch.from_numpy(vecs[i]).float(), alpha=dose, positions=len(e.ids) - 1)
            with torch.inference_mode(), c.apply(model):
                lg = model.hf_model(input_ids=torch.tensor([e.ids], device=model.device), logits_to_keep=1).logits[0, -1]
            a_wins = float(lg[lid["A"]]) > float(lg[lid["B"]])
            syc.append(a_wins == (test[i]["syc"] == "A"))
        return float(np.mean(syc))

    res = {"n_generate": len(gen), "n_test": len(test), "test_rate_uncorrected": float(yt.mean()), "hooks": {}}
    for hook in hooks:
        Xg, Xt = ag[hook], at[hook]
        v = Xg[says_a].mean(0) - Xg[~says_a].mean(0)
        v = v / np.linalg.norm(v)
        probe = ConditionalProbe(n_components=32, C=0.1).fit(np.hstack([Xg, Xg]), yg)
        s = probe.decision_function(np.hstack([Xt, Xt]))
        w, _ = probe.readout(Xt)
        det_sign = np.sign(w @ v)
        flag = s > 0
        syc_a_g = np.array([it["syc"] == "A" for it in gen], dtype=int)
        letter_probe = LogisticRegression(C=0.1, max_iter=3000).fit(Xg, syc_a_g)
        probe_sign = np.where(letter_probe.decision_function(Xt) > 0, 1.0, -1.0)
        r = {
            "detector_test_auroc": auroc(yt, s),
            "detector_sign_agreement": float(np.mean(det_sign == true_sign)),
            "flip_gated_rate_bound": float(np.mean((yt == 1) & ~flag) + np.mean((yt == 0) & flag)),
            "flagged": float(flag.mean()),
            "letter_probe_test_auroc": auroc((true_sign > 0).astype(int), letter_probe.decision_function(Xt)),
            "letter_probe_sign_agreement": float(np.mean(probe_sign == true_sign)),
            "doses": {},
        }
        for dose in [float(x) for x in args.doses]:
            r["doses"][str(dose)] = {
                "oracle_sign": rate(hook, -true_sign[:, None] * v[None], dose),
                "detector_sign": rate(hook, -det_sign[:, None] * v[None], dose),
                "letter_probe_sign": rate(hook, -probe_sign[:, None] * v[None], dose),
            }
        res["hooks"][hook] = r
        ctx.log(f"{hook} {json.dumps(r)}")
    res["seconds"] = round(time.time() - t0, 1)
    figures = {"test_rate_uncorrected": res["test_rate_uncorrected"],
               **{h: {f"dose {d}": v for d, v in r["doses"].items()} for h, r in res["hooks"].items()}}
    return Result(figures=figures, data=res)
