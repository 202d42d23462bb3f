"""Reading labelled datasets from files, with errors that name the file, the row and the field.

Formats (``fmt``), auto-detected from the extension and the first row's keys:

``statements`` (``.csv``)
    Header with ``statement`` and ``label`` (1 = true, 0 = false); extra columns are ignored
    except the optional ``polarity`` (1 affirmative, 0 negated, blank = unknown) and ``group``.
    **False statements are the positive class**: ``Example.label = 1 - label``. The item is
    the statement text. Polarity rule: the ``polarity`` column if the file has one; otherwise
    0 when the file name starts with ``neg_`` (the Geometry-of-Truth / Truth-is-Universal
    convention) and 1 for every other file.
``ab`` (``.json`` array or ``.jsonl``)
    CAA A/B rows ``question``, ``answer_matching_behavior``, ``answer_not_matching_behavior``.
    Each row gives two chats ``[user: question, assistant: answer]``, the matching one
    labelled 1 and the other 0, sharing the group ``"<file stem>:<row>"``. With
    ``expand_choices`` (default) a bare ``"(A)"`` answer becomes the full choice line parsed
    from the question (``"(A) Gained more ..."``); if it cannot be parsed the letter stays.
``chat`` (``.json`` array or ``.jsonl``)
    ``{"messages": [{"role", "content"}, ...], "label": 0|1}`` with optional ``group`` and
    ``polarity``; the last message must be the assistant's (the judged response).
``prompts`` (``.json`` array or ``.jsonl``)
    ``{"prompt": ...}`` (or ``instruction``), optional ``label`` (default 0) and ``group``.
    The item is a one-message user chat, or a ``(prompt, response)`` pair when the row also
    has ``response`` (or ``output``). Used for benign control sets.

Error messages and ``Example.source`` locate rows as ``row N`` for CSV (1-based, the header is
row 1), ``line N`` for JSON Lines (1-based line number) and ``index N`` for JSON arrays (the
element's 0-based index, as Python and ``jq`` show it).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Iterator

from circuits.errors import InputError

from .rows import ab_examples, chat_example, expand_answer, parse_choices, parse_group, parse_label, prompt_example
from .types import Example, LabelledDataset

__all__ = ["FORMATS", "load_dataset", "detect_format", "parse_choices", "expand_answer", "chat_example"]

FORMATS = ("statements", "ab", "chat", "prompts")
EXTENSIONS = {".csv": "statements (CSV: statement,label)", ".json": "ab, chat or prompts (JSON array)",
              ".jsonl": "ab, chat or prompts (JSON Lines)"}


def _supported() -> str:
    return "; ".join(f"{ext} -> {what}" for ext, what in EXTENSIONS.items())


# ---------------------------------------------------------------------------------------
# files


def _read_text(path: Path) -> str:
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a data file ({_supported()})")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e})") from None
    if not text.strip():
        raise InputError(f"{path}: file is empty")
    return text


def _json_rows(path: Path, text: str) -> Iterator[tuple[str, Any]]:
    """Yield ``(where, row)`` for a JSON array or a JSON Lines file."""
    stripped = text.lstrip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    as_lines = stripped.startswith("{") and len(lines) > 1 and path.suffix.lower() == ".json"
    if not as_lines and (path.suffix.lower() == ".json" or stripped.startswith("[")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
        if isinstance(data, dict):
            raise InputError(f"{path}: expected a JSON array of rows, got an object (keys: {', '.join(list(data)[:5])})")
        if not isinstance(data, list):
            raise InputError(f"{path}: expected a JSON array of rows, got {type(data).__name__}")
        if not data:
            raise InputError(f"{path}: the JSON array is empty")
        for i, row in enumerate(data):
            yield f"{path}, index {i}", row
        return
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}, line {lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
        yield f"{path}, line {lineno}", row


def _detect_json(path: Path, row: Any, where: str) -> str:
    if not isinstance(row, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(row).__name__}")
    keys = set(row)
    if "messages" in keys:
        return "chat"
    if "question" in keys or "answer_matching_behavior" in keys:
        return "ab"
    if "prompt" in keys or "instruction" in keys:
        return "prompts"
    raise InputError(
        f"{where}: cannot tell the format from the keys {sorted(keys)}; expected 'messages' (chat), "
        "'question'/'answer_matching_behavior' (ab) or 'prompt' (prompts); pass fmt= to choose"
    )


# ---------------------------------------------------------------------------------------
# statements CSV


def _read_statements(path: Path, text: str) -> list[Example]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise InputError(f"{path}: file is empty") from None
    except csv.Error as e:
        raise InputError(f"{path}, row 1: malformed CSV ({e})") from None
    cols = [h.strip() for h in header]
    for need in ("statement", "label"):
        if need not in cols:
            raise InputError(f"{path}, row 1 (header): missing column '{need}' (columns: {', '.join(cols)})")
    i_st, i_lab = cols.index("statement"), cols.index("label")
    i_pol = cols.index("polarity") if "polarity" in cols else None
    i_grp = cols.index("group") if "group" in cols else None
    default_pol = 0 if path.name.lower().startswith("neg_") else 1
    out: list[Example] = []
    rownum = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise InputError(f"{path}, row {rownum + 1}: malformed CSV ({e})") from None
        rownum += 1
        if not any(c.strip() for c in row):
            continue
        where = f"{path}, row {rownum}"
        if len(row) > len(cols):
            raise InputError(f"{where}: {len(row)} fields but the header has {len(cols)} (unquoted comma?)")
        row = row + [""] * (len(cols) - len(row))
        statement = row[i_st].strip()
        if not statement:
            raise InputError(f"{where}, field 'statement': empty statement")
        lab = parse_label(row[i_lab], where)
        if i_pol is None:
            pol: int | None = default_pol
        else:
            pol = None if not row[i_pol].strip() else parse_label(row[i_pol], where, "polarity")
        group = parse_group(row[i_grp].strip(), where) if i_grp is not None else None
        out.append(Example(statement, 1 - lab, group, pol, f"{path.name}:row {rownum}"))
    if not out:
        raise InputError(f"{path}: no data rows after the header")
    return out


# ---------------------------------------------------------------------------------------


def detect_format(path: str | Path) -> str:
    """The format :func:`load_dataset` would use for ``path`` (reads the first row)."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in EXTENSIONS:
        raise InputError(f"{path}: unknown extension {ext or '(none)'!r}; supported: {_supported()}")
    text = _read_text(path)
    if ext == ".csv":
        return "statements"
    for where, row in _json_rows(path, text):
        return _detect_json(path, row, where)
    raise InputError(f"{path}: no rows")


def load_dataset(
    path: str | Path, fmt: str | None = None, name: str | None = None, *, expand_choices: bool = True
) -> LabelledDataset:
    """Read a labelled dataset; see the module docstring for the formats and label conventions.

    Args:
        path: a ``.csv``, ``.json`` or ``.jsonl`` file.
        fmt: one of :data:`FORMATS`; detected from the extension and the first row if None.
        name: dataset name (default: the file stem).
        expand_choices: for ``ab`` rows, expand bare ``"(A)"`` answers into the full choice line.

    Raises:
        InputError: naming the file, the row and the field for any malformed input.
    """
    path = Path(path)
    if fmt is not None and fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}; supported: {', '.join(FORMATS)}")
    ext = path.suffix.lower()
    if fmt is None and ext not in EXTENSIONS:
        raise InputError(f"{path}: unknown extension {ext or '(none)'!r}; supported: {_supported()}")
    text = _read_text(path)
    if fmt is None:
        fmt = "statements" if ext == ".csv" else None
    if fmt == "statements":
        examples = _read_statements(path, text)
    else:
        examples = []
        stem = path.stem
        for where, row in _json_rows(path, text):
            if fmt is None:
                fmt = _detect_json(path, row, where)
            key = where[len(str(path)) + 2 :]  # "line 3" / "index 0"
            src = f"{path.name}:{key}"
            if fmt == "ab":
                examples.extend(ab_examples(row, where, stem, key, expand_choices))
            elif fmt == "chat":
                examples.append(chat_example(row, where, src))
            else:
                examples.append(prompt_example(row, where, src))
        if not examples:
            raise InputError(f"{path}: no rows (only blank lines)")
    return LabelledDataset(name or path.stem, examples)
