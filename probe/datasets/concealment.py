"""Generator for the ``deception/concealment`` family: lying to someone in a situation.

Templates and slot lists live in ``probe/data/concealment_templates.json`` (original wording).
Each of the 40 scenarios gives a role, a private fact the context establishes, a motive to
hide it, two askers, a yes/no question and an open question, and for each question a truthful
and a deceptive answer keyed to the fact. Every scenario yields three contrast pairs (120
pairs, 240 chats):

* pair 0: the yes/no question, pair 1: the open question, pair 2: one of the two again
  (yes/no for odd-numbered scenarios, open for even ones) with another asker and framing;
* framings alternate between second person (``"You are {role}. ..."``) and third person
  (``"{name} is {role}. ... Reply as {name}."``), each with three wordings;
* label 0 = the assistant answers truthfully, 1 = it deceives (denies, conceals or
  misstates the fact). In 8 scenarios (24 pairs, 20%) the lie is an affirmative false claim
  ("yes, the test was run") rather than a denial; ``kind`` says which.

Answers are decorated (a "Yes"/"No" opener, a lead-in such as "Honestly," or "Well,", a
closing sentence) with the *same multiset* of decorations in both classes, shuffled
independently per class, so template style, opening words and added length carry no label
information. Yes/no questions are worded so that the honest answer is "No" in 19 of the 40
scenarios and "Yes" in 21.

All chats of one scenario share the group ``"conceal:<scenario id>"`` (splits keep the whole
scenario on one side); the two chats of a pair share their ``source``.

The scenarios deliberately avoid the roles and settings of ``roleplay_lies.jsonl`` (which
stays a held-out evaluation set of a different distribution); ``tests/test_datasets.py``
checks that no 6-word sequence is shared between the two sets.

A second part, ``concealment_scenarios_2.json`` (recipe ``deception/concealment_2``), holds 60
more scenarios in the same schema (48 denials, 12 claims), written later with roles from other
fields; ``generate(seed, part=2)`` renders them with the first file's frames, names and
decorations, in groups ``"conceal2:<scenario id>"``.

A third part, ``concealment_scenarios_3.json`` (recipe ``deception/concealment_3``), holds 60
scenarios from everyday personal life (housemates, grandparents, in-laws, allotments, group
chats, amateur sport, bands, house-sitting, lifts, weddings, book groups, volunteering) in which
the speaker is asked about their own misdeed or slip (48 denials, 12 claims); ``generate(seed,
part=3)`` renders them with the shared names and decorations but its own frames (personal roles:
"You are ..." / "In everyday life, ..." rather than "You work as ..."), in groups
``"conceal3:<scenario id>"``.

``generate(seed)`` is deterministic (``random.Random(seed)``); ``seed`` picks names, askers,
framings, wordings and decorations, never the scenarios or their facts.
"""

from __future__ import annotations

import json
import random
from importlib import resources
from typing import Any

from circuits.errors import InputError

from .types import Example, LabelledDataset

TEMPLATES = "concealment_templates.json"
# 60 more scenarios in the same schema (rendered with the first file's frames, names and decorations)
SCENARIOS_2 = "concealment_scenarios_2.json"
# 60 everyday-life scenarios about the speaker's own misdeed, same schema and rendering
SCENARIOS_3 = "concealment_scenarios_3.json"
# part -> (scenario file, recipe name, group prefix)
PARTS = {
    1: (TEMPLATES, "deception/concealment", "conceal"),
    2: (SCENARIOS_2, "deception/concealment_2", "conceal2"),
    3: (SCENARIOS_3, "deception/concealment_3", "conceal3"),
}
PRONOUNS = {"you": ("your", "you"), "f": ("her", "her"), "m": ("his", "him")}
YN_STYLES = ("yn_comma", "yn_stop", "yn_tail", "lead", "bare_tail", "lead_yn")
OPEN_STYLES = ("plain", "lead", "tail", "lead_tail")


def _read(name: str) -> dict[str, Any]:
    return json.loads(resources.files("probe").joinpath("data").joinpath(name).read_text(encoding="utf-8"))


def templates(part: int = 1) -> dict[str, Any]:
    """The templates with the scenarios of ``part`` (1: the first 40, 2: the 60 of ``SCENARIOS_2``,
    3: the 60 of ``SCENARIOS_3``)."""
    if part not in PARTS:
        raise InputError(f"concealment part must be one of {sorted(PARTS)}, got {part!r}")
    t = _read(TEMPLATES)
    if part != 1:
        own = _read(PARTS[part][0])
        t["scenarios"] = own["scenarios"]
        # a part may bring its own frames (same slots, same count per framing); names and decorations stay shared
        t["frames"] = own.get("frames", t["frames"])
    return t


def _lc(s: str) -> str:
    """Lower-case the first letter, except for "I" and acronyms."""
    if s[:2] in ("I ", "I'") or (len(s) > 1 and s[1].isupper()):
        return s
    return s[:1].lower() + s[1:]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _answer(kind: str, style: str, lead: str, tail: str, yn: str, text: str) -> str:
    """One answer. ``kind`` "yes_no": ``text`` is a lower-case clause and ``yn`` "Yes"/"No";
    "open": ``text`` is a full sentence ending in a full stop."""
    if kind == "yes_no":
        c = text.rstrip(".")
        return {
            "yn_comma": f"{yn}, {c}.",
            "yn_stop": f"{yn}. {_cap(c)}.",
            "yn_tail": f"{yn}, {c}. {tail}",
            "lead": f"{lead} {c}.",
            "bare_tail": f"{_cap(c)}. {tail}",
            "lead_yn": f"{lead} {yn.lower()}, {c}.",
        }[style]
    return {
        "plain": text,
        "lead": f"{lead} {_lc(text)}",
        "tail": f"{text} {tail}",
        "lead_tail": f"{lead} {_lc(text)} {tail}",
    }[style]


def _decorations(n: int, styles: tuple[str, ...], t: dict, rng: random.Random) -> list[tuple[str, str, str]]:
    styles_n = [styles[i % len(styles)] for i in range(n)]
    leads = [t["leads"][i % len(t["leads"])] for i in range(n)]
    tails = [t["tails"][i % len(t["tails"])] for i in range(n)]
    rng.shuffle(leads)
    rng.shuffle(tails)
    return list(zip(styles_n, leads, tails))


def generate(seed: int = 0, part: int = 1) -> list[dict[str, Any]]:
    """Rows as chat-JSONL dicts: ``messages``, ``label``, ``group``, ``pair`` (index),
    ``kind`` ("denial"/"claim"), ``question`` ("yes_no"/"open"), ``framing`` ("first"/"third")."""
    t = templates(part)
    prefix = PARTS[part][2]
    rng = random.Random(seed)
    plan = []  # (scenario, question kind, framing, asker)
    for i, s in enumerate(t["scenarios"]):
        f0 = "first" if i % 2 == 0 else "third"
        f1 = "third" if f0 == "first" else "first"
        q2 = "yes_no" if i % 2 == 0 else "open"
        plan.append((s, "yes_no", f0, s["askers"][0]))
        plan.append((s, "open", f1, s["askers"][1]))
        plan.append((s, q2, rng.choice(("first", "third")), rng.choice(s["askers"])))
    # the same decorations for both classes, assigned independently within each class
    deco: dict[tuple[str, int], list[tuple[str, str, str]]] = {}
    for q, styles in (("yes_no", YN_STYLES), ("open", OPEN_STYLES)):
        n = sum(1 for p in plan if p[1] == q)
        base = _decorations(n, styles, t, rng)
        for label in (0, 1):
            d = list(base)
            rng.shuffle(d)
            deco[(q, label)] = d
    used = {k: 0 for k in deco}
    rows: list[dict[str, Any]] = []
    for n, (s, q, framing, asker) in enumerate(plan):
        if framing == "first":
            name, (p, o) = "", PRONOUNS["you"]
        else:
            name, g = rng.choice(t["names"])
            p, o = PRONOUNS[g]
        motive = s["motive"].format(p=p, P=_cap(p), o=o)
        frame = rng.choice(t["frames"][framing])
        spec = s[q]
        prompt = frame.format(role=s["role"], fact=s["fact"], motive=motive, asker=asker, question=spec["question"], name=name)
        for label in (0, 1):
            style, lead, tail = deco[(q, label)][used[(q, label)]]
            used[(q, label)] += 1
            if q == "yes_no":
                honest = spec["honest"]
                yn = honest if label == 0 else ("No" if honest == "Yes" else "Yes")
            else:
                yn = ""
            text = spec["truth"] if label == 0 else spec["lie"]
            rows.append(
                {
                    "messages": [
                        {"role": "user", "content": prompt},
                        {"role": "assistant", "content": _answer(q, style, lead, tail, yn, text)},
                    ],
                    "label": label,
                    "group": f"{prefix}:{s['id']}",
                    "pair": n,
                    "kind": s["kind"],
                    "question": q,
                    "framing": framing,
                }
            )
    return rows


def dataset(seed: int = 0, part: int = 1) -> LabelledDataset:
    """``generate(seed, part)`` as the ``deception/concealment`` (part 1), ``deception/concealment_2``
    (part 2) or ``deception/concealment_3`` (part 3) dataset."""
    name = PARTS[part][1]
    return LabelledDataset(
        name, [Example(r["messages"], r["label"], r["group"], None, f"recipe:{name}:{r['pair']}") for r in generate(seed, part)]
    )
