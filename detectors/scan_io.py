"""Corpora in and scan results out: Parquet (file, folder or glob) or the JSONL/JSON/CSV formats of ``probe``.

A Parquet corpus has an id column (``--id-column``, default ``id``: unique, never null) and, per row,
one of:

* ``messages``: a chat (a list of ``{role, content}`` structs, or that list as a JSON string); if the
  last message is the assistant's, it is the judged response;
* ``prompt`` and optionally ``response``: a one-turn chat;
* ``text``: plain text.

A JSONL/JSON/CSV corpus is read with :func:`probe.datasets.load_data`; each row's id is its
``id_column`` field when every row has one (CSV: a column of that name), else the row's place in the
file (``"chats.jsonl:line 3"``, an A/B row's two answers ``"... matching"`` / ``"... not matching"``).

Everything here reads or checks; nothing scores. Each check fails before any model loads, naming the
file, the row and the field.
"""

from __future__ import annotations

import csv
import glob
import json
from pathlib import Path
from typing import Any, Iterator

from circuits.errors import InputError
from circuits.inputs import Item

ITEM_COLUMNS = ("messages", "prompt", "response", "text")
TABLE_SUFFIXES = (".jsonl", ".json", ".csv")


def parquet_files(spec: str) -> list[str] | None:
    """The Parquet files a corpus spec names (a file, a folder of them, a glob), or None if not Parquet."""
    if any(c in spec for c in "*?["):
        files = sorted(f for f in glob.glob(spec, recursive=True) if f.endswith(".parquet"))
        if not files:
            raise InputError(f"{spec}: the pattern matches no .parquet files")
        return files
    p = Path(spec)
    if p.is_dir():
        files = sorted(str(f) for f in p.rglob("*.parquet"))
        if not files:
            raise InputError(f"{spec}: folder holds no .parquet files")
        return files
    if p.suffix == ".parquet":
        if not p.exists():
            raise InputError(f"{spec}: no such file")
        return [str(p)]
    if p.suffix.lower() not in TABLE_SUFFIXES and not spec.startswith("recipe:"):
        raise InputError(f"{spec}: not a corpus (expected .parquet, a folder or glob of them, or {', '.join(TABLE_SUFFIXES)})")
    return None


def item_of(row: dict[str, Any], where: str) -> Item:
    """The model input of one corpus row (see the module docstring); InputError naming the row and field."""
    msgs = row.get("messages")
    if msgs is not None:
        if isinstance(msgs, str):
            try:
                msgs = json.loads(msgs)
            except json.JSONDecodeError as e:
                raise InputError(f"{where}, field 'messages': not JSON ({e.msg})") from None
        if not isinstance(msgs, list) or not msgs or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in msgs):
            raise InputError(f"{where}, field 'messages': must be a non-empty list of {{role, content}} strings")
        if msgs[-1]["role"] == "assistant" and not msgs[-1]["content"].strip():
            raise InputError(f"{where}, field 'messages': the assistant's response (last message) is empty")
        return [{"role": m["role"], "content": m["content"]} for m in msgs]
    prompt, response, text = row.get("prompt"), row.get("response"), row.get("text")
    if prompt is not None:
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError(f"{where}, field 'prompt': empty or not a string")
        if response is None:
            return [{"role": "user", "content": prompt}]
        if not isinstance(response, str) or not response.strip():
            raise InputError(f"{where}, field 'response': empty (leave it out, or null, to judge the prompt alone)")
        return (prompt, response)
    if text is not None:
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"{where}, field 'text': empty or not a string")
        return text
    raise InputError(f"{where}: no input: give 'messages', 'prompt' (and 'response') or 'text'")


def row_of(rid: Any, item: Item, id_column: str) -> dict[str, Any]:
    """A corpus row (Parquet shape) holding ``item``: what a JSONL/CSV corpus becomes for the engines."""
    row: dict[str, Any] = {id_column: rid, "messages": None, "prompt": None, "response": None, "text": None}
    if isinstance(item, str):
        row["text"] = item
    elif isinstance(item, tuple):
        row["prompt"], row["response"] = item
    else:
        row["messages"] = json.dumps(item)
    return row


def _file_ids(path: Path, id_column: str, n: int) -> list[Any] | None:
    """The id field of every row of a JSON(L)/CSV file, if each row has one and there is one example per row."""
    try:
        if path.suffix.lower() == ".csv":
            with path.open(encoding="utf-8-sig", newline="") as f:
                rows = list(csv.DictReader(f))
        else:
            text = path.read_text(encoding="utf-8-sig")
            rows = json.loads(text) if text.lstrip().startswith("[") else [json.loads(ln) for ln in text.splitlines() if ln.strip()]
    except (OSError, ValueError):
        return None
    ids = [r.get(id_column) if isinstance(r, dict) else None for r in rows]
    if len(ids) != n or any(i is None or i == "" for i in ids):
        return None
    return ids


def table_rows(spec: str, id_column: str) -> list[dict[str, Any]]:
    """A JSONL/JSON/CSV corpus (or ``recipe:NAME``) as Parquet-shaped rows."""
    from probe.datasets import load_data

    ds = load_data(spec)
    ids = None if spec.startswith("recipe:") else _file_ids(Path(spec), id_column, len(ds.examples))
    ids = ids or [e.source for e in ds.examples]
    return [row_of(i, e.item, id_column) for i, e in zip(ids, ds.examples)]


def parquet_schema_check(files: list[str], id_column: str) -> list[str]:
    """The columns a scan reads; InputError naming the file if the id column or every input column is missing."""
    import pyarrow.parquet as pq

    for f in files:
        names = pq.read_schema(f).names
        if id_column not in names:
            raise InputError(f"{f}: no id column {id_column!r} (columns: {', '.join(names)}); pick one with --id-column")
        if not any(c in names for c in ("messages", "prompt", "text")):
            raise InputError(f"{f}: no input column: give 'messages', 'prompt' (and 'response') or 'text'")
    names = pq.read_schema(files[0]).names
    return [id_column, *[c for c in ITEM_COLUMNS if c in names]]


def iter_parquet(files: list[str], columns: list[str], batch_rows: int) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """``(file, rows)`` batches of a Parquet corpus, streamed."""
    import pyarrow.parquet as pq

    for f in files:
        pf = pq.ParquetFile(f)
        for b in pf.iter_batches(batch_size=batch_rows, columns=[c for c in columns if c in pf.schema_arrow.names]):
            yield f, b.to_pylist()


def check_rows(batches: Iterator[tuple[str, list[dict[str, Any]]]], id_column: str) -> list[Any]:
    """Every row's id (unique, not null) with its input checked; the ids in corpus order."""
    seen: dict[Any, str] = {}
    n = 0
    for f, rows in batches:
        for row in rows:
            n += 1
            rid = row.get(id_column)
            where = f"{f}, row {n}"
            if rid is None:
                raise InputError(f"{where}, field {id_column!r}: null id")
            if rid in seen:
                raise InputError(f"{where}, field {id_column!r}: duplicate id {rid!r} (also in {seen[rid]})")
            seen[rid] = where
            item_of(row, f"{where} (id {rid!r})")
    if not seen:
        raise InputError("the corpus has no rows")
    return list(seen)


def read_output_ids(folder: Path, id_column: str) -> tuple[list[Any], list[str], list[str]]:
    """Ids of every readable result file under ``folder``, the files read, and the unreadable ones
    (a file a killed run left half-written: its rows count as not done)."""
    import pyarrow.parquet as pq

    ids: list[Any] = []
    good, bad = [], []
    for f in sorted(folder.rglob("*.parquet")) if folder.exists() else []:
        try:
            ids += pq.read_table(f, columns=[id_column]).column(id_column).to_pylist()
            good.append(str(f))
        except Exception:  # truncated or partial: pyarrow raises several kinds
            bad.append(str(f))
    return ids, good, bad
