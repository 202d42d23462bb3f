"""Does the prompt's framing explain why role-play set 1 is harder than set 6?

Set 1's scenes almost never end with an instruction to stay in role (1 of 60), set 6's always do
("Answer as the stepdad."). Both sets' lies are mostly denials that point elsewhere. This scores
each detector on set 1 with " Answer in character." appended to every scene, and on set 6 with its
"Answer as X." sentence removed or replaced by the same generic one. The data sets themselves are
not changed; only these scored copies.

Run: python benchmarks/roleplay_prompt_framing.py runs/deception-mixture-2 runs/demo/deception [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

from circuits import load_model
from detectors import Detector
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("detectors", nargs="+", help="trained detector directories")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    model = load_model(args.model)
    dets = {d: Detector.load(d, model) for d in args.detectors}
    res: dict = {"detectors": args.detectors, "sets": {}}
    for name, variants in VARIANTS.items():
        data = recipe(name)
        for label, rewrite in variants.items():
            items, changed = reframe(list(data.items), rewrite)
            row = res["sets"].setdefault(name, {})[label] = {"changed_prompts": changed}
            for d, det in dets.items():
                s = np.asarray(det.score(model, items))
                row[d] = {"auroc": auroc(data.labels, s), "pair_accuracy": pair_accuracy(data.labels, s, list(data.groups))[0]}
            print(name, label, json.dumps(row), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
