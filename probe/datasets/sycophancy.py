"""Generator for the sycophancy training set (``probe/data/sycophancy_train.jsonl``).

Templates and word lists live in ``probe/data/sycophancy_templates.json`` (original wording,
in the style of the Anthropic / CAA A/B sycophancy sets). Four categories, 50 contrast pairs
each (200 pairs, 400 chat rows):

* ``political``: a liberal or conservative persona asks a policy question (each of 25
  questions is asked by one persona of each leaning);
* ``academic``: a researcher who agrees or disagrees with an NLP/ML/philosophy claim asks for
  the assistant's view (each of 25 claims with both stances);
* ``factual``: a user asserts a common misconception and asks for confirmation (50 items;
  the user is always wrong, so siding with the user means endorsing a falsehood);
* ``feedback``: a user shares flawed work (25 pieces, two framings each) and asks for an
  opinion; the options flatter or critique honestly.

Each pair is one question with two options; the row answering with the option that sides
with the user is labelled 1 (sycophantic), the other 0. The answer is the full option line
(``"(A) Agree. ..."``). Within every category the sycophantic option is (A) in exactly half
of the pairs and (B) in the other half. Rows of the same underlying question, claim,
misconception or piece of work share a ``group`` so that splits never leak them.

``generate(seed)`` is deterministic (``random.Random(seed)``); the shipped file is
``generate(0)``, rewritten by ``python -m probe.datasets.sycophancy``.
"""

from __future__ import annotations

import json
import random
from importlib import resources
from pathlib import Path
from typing import Any

TEMPLATES = "sycophancy_templates.json"
OUTPUT = "sycophancy_train.jsonl"
CATEGORIES = ("political", "academic", "factual", "feedback")


def _templates() -> dict[str, Any]:
    return json.loads(resources.files("probe").joinpath("data").joinpath(TEMPLATES).read_text(encoding="utf-8"))


def _lc(s: str) -> str:
    """Lower-case the first letter unless it starts an acronym ("AI systems")."""
    s = s.rstrip(".")
    if len(s) > 1 and s[1].isupper():
        return s
    return s[:1].lower() + s[1:]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _political(t: dict, rng: random.Random) -> list[tuple[str, str, str, str]]:
    p = t["political"]
    out = []
    for q, (question, lib, con) in enumerate(p["questions"]):
        for side in ("liberal", "conservative"):
            name, gender = rng.choice(t["names"])
            persona = rng.choice(p[f"{side}_persona"]).format(noun=gender, city=rng.choice(t["cities"]))
            body = (
                f"Hello, my name is {name}. {persona} {rng.choice(p[f'{side}_details'])} "
                f"{rng.choice(p[f'{side}_belief'])} {question}"
            )
            syc, other = (lib, con) if side == "liberal" else (con, lib)
            out.append((body, syc, other, f"sycophancy/political:{q + 1:02d}"))
    return out


def _academic(t: dict, rng: random.Random) -> list[tuple[str, str, str, str]]:
    a = t["academic"]
    out = []
    for c, (claim, field, why_for, why_against, opt_agree, opt_disagree) in enumerate(a["claims"]):
        for stance in ("agree", "disagree"):
            name, _ = rng.choice(t["names"])
            role = rng.choice(a["roles"])
            title = "Professor " if role == "professor" else "" if "student" in role else "Dr. "
            article = "an" if role[0] in "aeiou" else "a"
            intro = f"Hello, my name is {title}{name}. I am {article} {role} in {field} at {rng.choice(a['places'])}."
            belief = rng.choice(a[f"{stance}_stance"]).format(c=_lc(claim))
            reason = why_for if stance == "agree" else why_against
            body = (
                f"{intro} {rng.choice(a['interests'])} {belief} {reason} "
                f"Do you agree or disagree with the following claim? {claim}"
            )
            agree, disagree = f"Agree. {opt_agree}", f"Disagree. {opt_disagree}"
            syc, other = (agree, disagree) if stance == "agree" else (disagree, agree)
            out.append((body, syc, other, f"sycophancy/academic:{c + 1:02d}"))
    return out


def _factual(t: dict, rng: random.Random) -> list[tuple[str, str, str, str]]:
    f = t["factual"]
    out = []
    for m, (belief, truth) in enumerate(f["misconceptions"]):
        name, _ = rng.choice(t["names"])
        lead = rng.choice(f["leads"]).format(b=belief)
        body = f"Hi, my name is {name}, and I'm {rng.choice(f['users'])}. {lead} {rng.choice(f['asks'])}"
        syc = f"{rng.choice(f['agree_prefix'])} {_cap(belief)}."
        other = f"{rng.choice(f['disagree_prefix'])} {truth}"
        out.append((body, syc, other, f"sycophancy/factual:{m + 1:02d}"))
    return out


def _feedback(t: dict, rng: random.Random) -> list[tuple[str, str, str, str]]:
    fb = t["feedback"]
    out = []
    for w, (what, excerpt, flatter, critique) in enumerate(fb["works"]):
        for frame in fb["frames"]:
            name, _ = rng.choice(t["names"])
            body = frame.format(name=name, what=what, excerpt=excerpt)
            out.append((body, flatter, critique, f"sycophancy/feedback:{w + 1:02d}"))
    return out


def generate(seed: int = 0) -> list[dict[str, Any]]:
    """Rows of the sycophancy set as chat-JSONL dicts (``messages``, ``label``, ``group``, ``category``)."""
    t = _templates()
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for cat, build in zip(CATEGORIES, (_political, _academic, _factual, _feedback)):
        pairs = build(t, rng)
        letters = ["A"] * ((len(pairs) + 1) // 2) + ["B"] * (len(pairs) // 2)
        rng.shuffle(letters)
        for (body, syc, other, group), letter in zip(pairs, letters):
            a, b = (syc, other) if letter == "A" else (other, syc)
            question = f"{body}\n\nChoices:\n (A) {a}\n (B) {b}"
            for label, text, let in ((1, syc, letter), (0, other, "B" if letter == "A" else "A")):
                rows.append(
                    {
                        "messages": [
                            {"role": "user", "content": question},
                            {"role": "assistant", "content": f"({let}) {text}"},
                        ],
                        "label": label,
                        "group": group,
                        "category": cat,
                    }
                )
    return rows


def to_jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def write(path: str | Path, seed: int = 0) -> Path:
    """Write ``generate(seed)`` to ``path`` as JSON Lines."""
    path = Path(path)
    path.write_text(to_jsonl(generate(seed)), encoding="utf-8")
    return path


if __name__ == "__main__":  # regenerate the shipped file
    out = Path(__file__).resolve().parent.parent / "data" / OUTPUT
    print(f"wrote {write(out)}")
