"""Row-level parsing for :mod:`.loaders`: labels, groups, A/B choices and one example per row.

Every error is an :class:`~circuits.errors.InputError` whose message starts with ``where``
(the file and the row) and names the field.
"""

from __future__ import annotations

import re
from typing import Any

from circuits.errors import InputError

from .types import Example

_CHOICE = re.compile(r"^[ \t]*\(([A-Za-z0-9])\)[ \t]*(\S.*?)[ \t]*$", re.M)
_LETTER = re.compile(r"^\s*\(?([A-Za-z0-9])\)?\s*$")


def parse_choices(question: str) -> dict[str, str]:
    """Map each choice letter to its full line, e.g. ``{"A": "(A) Gained more ..."}``.

    A choice is a line that starts with ``(X)``; if a letter occurs twice the last one wins
    (choices come at the end of CAA questions). Returns ``{}`` when there are none.
    """
    out: dict[str, str] = {}
    for m in _CHOICE.finditer(question or ""):
        out[m.group(1).upper()] = f"({m.group(1)}) {m.group(2)}"
    return out


def expand_answer(question: str, answer: str) -> str:
    """``"(A)"`` -> the full choice line from ``question``; anything else is returned unchanged."""
    m = _LETTER.match(answer)
    if not m:
        return answer
    return parse_choices(question).get(m.group(1).upper(), answer)


def parse_label(value: Any, where: str, field: str = "label") -> int:
    """0 or 1 from an int, a 0.0/1.0 float or a "0"/"1" string; anything else is an InputError."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InputError(f"{where}, field '{field}': missing value (expected 0 or 1)")
    if isinstance(value, bool):
        raise InputError(f"{where}, field '{field}': must be 0 or 1, got {value!r}")
    if isinstance(value, int) and value in (0, 1):
        return value
    if isinstance(value, float) and value in (0.0, 1.0):
        return int(value)
    if isinstance(value, str) and value.strip() in ("0", "1"):
        return int(value.strip())
    raise InputError(f"{where}, field '{field}': must be 0 or 1, got {value!r}")


def parse_group(value: Any, where: str) -> str | None:
    """A group id as a string (ints are converted); None or "" -> None."""
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InputError(f"{where}, field 'group': must be a string or an integer, got {value!r}")
    return str(value)


def need_str(row: dict, field: str, where: str) -> str:
    """``row[field]`` as a non-blank string, or an InputError naming the field."""
    if field not in row:
        raise InputError(f"{where}, field '{field}': missing")
    v = row[field]
    if not isinstance(v, str):
        raise InputError(f"{where}, field '{field}': must be a string, got {type(v).__name__}")
    if not v.strip():
        raise InputError(f"{where}, field '{field}': empty")
    return v


def ab_examples(row: Any, where: str, stem: str, key: str, expand: bool) -> list[Example]:
    """A CAA row -> [matching (label 1), not matching (label 0)] chats sharing group ``stem:key``."""
    if not isinstance(row, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(row).__name__}")
    q = need_str(row, "question", where)
    pos = need_str(row, "answer_matching_behavior", where).strip()
    neg = need_str(row, "answer_not_matching_behavior", where).strip()
    if expand:
        pos, neg = expand_answer(q, pos), expand_answer(q, neg)
    group = f"{stem}:{key}"
    src = f"{stem}:{key}"
    return [
        Example([{"role": "user", "content": q}, {"role": "assistant", "content": pos}], 1, group, None, src + " matching"),
        Example([{"role": "user", "content": q}, {"role": "assistant", "content": neg}], 0, group, None, src + " not matching"),
    ]


def chat_example(row: Any, where: str, src: str) -> Example:
    """A ``{"messages", "label", "group"?, "polarity"?}`` row -> Example; the last message must be the assistant's."""
    if not isinstance(row, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if "messages" not in row:
        raise InputError(f"{where}, field 'messages': missing")
    msgs = row["messages"]
    if not isinstance(msgs, list) or not msgs:
        raise InputError(f"{where}, field 'messages': must be a non-empty list of {{role, content}} objects")
    for j, m in enumerate(msgs):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise InputError(
                f"{where}, field 'messages': message {j} must be an object with string 'role' and 'content', "
                f"got {m!r:.80}"
            )
    if msgs[-1]["role"] != "assistant":
        raise InputError(
            f"{where}, field 'messages': the last message must be the assistant's (the judged response), "
            f"got role {msgs[-1]['role']!r}"
        )
    if not msgs[-1]["content"].strip():
        raise InputError(f"{where}, field 'messages': the assistant's response (last message) is empty")
    if "label" not in row:
        raise InputError(f"{where}, field 'label': missing")
    lab = parse_label(row["label"], where)
    pol = None if row.get("polarity") is None else parse_label(row["polarity"], where, "polarity")
    item = [{"role": m["role"], "content": m["content"]} for m in msgs]
    return Example(item, lab, parse_group(row.get("group"), where), pol, src)


def prompt_example(row: Any, where: str, src: str) -> Example:
    """A ``{"prompt" | "instruction", "response" | "output"?, "label"?}`` row -> Example (label defaults to 0)."""
    if not isinstance(row, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(row).__name__}")
    field = "prompt" if "prompt" in row else "instruction" if "instruction" in row else "prompt"
    prompt = need_str(row, field, where)
    lab = parse_label(row["label"], where) if "label" in row else 0
    rfield = "response" if "response" in row else "output" if "output" in row else None
    if rfield is not None:
        item: Any = (prompt, need_str(row, rfield, where))
    else:
        item = [{"role": "user", "content": prompt}]
    return Example(item, lab, parse_group(row.get("group"), where), None, src)
