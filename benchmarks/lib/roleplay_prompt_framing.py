"""Does the prompt's framing explain why role-play set 1 is harder than set 6?

Set 1's scenes almost never end with an instruction to stay in role (1 of 60), set 6's always do
("Answer as the stepdad."). Both sets' lies are mostly denials that point elsewhere. This scores
each detector on set 1 with " Answer in character." appended to every scene, and on set 6 with its
"Answer as X." sentence removed or replaced by the same generic one. The data sets themselves are
not changed; only these scored copies.

Config: ``benchmarks/configs/roleplay_prompt_framing.toml``.
"""

from __future__ import annotations

import json
import re

import numpy as np

from benchmarks.registry import analysis
from benchmarks.suite import Context, Result
from probe.datasets import recipe
from probe.metrics import auroc, pair_accuracy

ANSWER_AS = re.compile(r"\s*(Answer|Reply|Respond) as [^.]*\.\s*$")
IN_CHARACTER = " Answer in character."
VARIANTS = {
    "roleplay_lies": {"original": lambda s: s, "append 'Answer in character.'": lambda s: s.rstrip() + IN_CHARACTER},
    "roleplay_lies_6": {"original": lambda s: s, "drop 'Answer as X.'": lambda s: ANSWER_AS.sub("", s),
                        "'Answer as X.' -> 'Answer in character.'": lambda s: ANSWER_AS.sub(IN_CHARACTER, s)},
}


def reframe(items: list, rewrite) -> tuple[list, int]:
    """Copies of the chats with the first (user) message rewritten; and how many changed."""
    out, changed = [], 0
    for chat in items:
        first = rewrite(chat[0]["content"])
        changed += first != chat[0]["content"]
        out.append([{**chat[0], "content": first}, *chat[1:]])
    return out, changed


@analysis({"detectors": ["train:deception_mixture", "train:deception"]})
def run_roleplay_prompt_framing(ctx: Context) -> Result:
    """Every detector on every reframed copy of sets 1 and 6 (AUROC and within-pair accuracy)."""
    model = ctx.model
    dets = {d: ctx.detector(d) for d in ctx.p.detectors}
    res: dict = {"detectors": list(ctx.p.detectors), "sets": {}}
    for name, variants in VARIANTS.items():
        data = recipe(name)
        for label, rewrite in variants.items():
            items, changed = reframe(list(data.items), rewrite)
            row = res["sets"].setdefault(name, {})[label] = {"changed_prompts": changed}
            for d, det in dets.items():
                s = np.asarray(det.score(model, items))
                row[d] = {"auroc": auroc(data.labels, s), "pair_accuracy": pair_accuracy(data.labels, s, list(data.groups))[0]}
            ctx.log(f"{name} {label} {json.dumps(row)}")
    table = [{"set": n, "variant": v, "changed": r["changed_prompts"], **{f"{d} AUROC": r[d]["auroc"] for d in dets}}
             for n, vs in res["sets"].items() for v, r in vs.items()]
    figures = {f"{n} / {v}": {d: r[d]["auroc"] for d in dets} for n, vs in res["sets"].items() for v, r in vs.items()}
    return Result(figures=figures, data=res, tables={"AUROC by framing": table})
