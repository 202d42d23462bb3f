"""Poser-format scenario files: loading, validation, splits and the twin labels of a pair.

A Poser file (``data/training/<policy>/test.json``, ``data/benchmark/*.json``) is a JSON list of rows;
coalign also reads the same rows as JSON lines. A scenario row has ``prompt`` (optionally wrapped in
``<<prompt>>...<</prompt>>``), ``response`` (``"A"`` or ``"B"``: the file's policy's choice) and
``oversight_is_poor`` (bool). Rows answered ``"error"`` (random text) are not scenarios: their prompts
are the generic chat on which the KL-to-base term is computed. Every problem is reported as one line
naming the file, the row and the field, before any model is touched.

Roles: aligned policies take the aligned action always; fakers take it only when oversight is good. A
pair's twins share every row and differ only in the poor-oversight labels, so one file gives both:
:func:`labels_for` flips the poor-oversight answers when the wanted role differs from the file's.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from circuits.errors import InputError

ALIGNED_POLICIES = ("aligned", "genie", "saint", "truth_teller")
FAKER_POLICIES = ("faker", "fitness_maximizer", "money_maximizer", "reward_maximizer")
LETTERS = ("A", "B")


def role_of(policy: str) -> str:
    """``"aligned"`` or ``"faker"`` for a policy name (Poser's six, or the generic two)."""
    if policy in ALIGNED_POLICIES:
        return "aligned"
    if policy in FAKER_POLICIES:
        return "faker"
    raise InputError(f"unknown policy {policy!r}: expected one of {', '.join(ALIGNED_POLICIES + FAKER_POLICIES)}")


@dataclass(frozen=True)
class Scenario:
    """One A/B scenario. ``label`` is the letter the source file's policy chose."""

    id: str
    prompt: str
    poor: bool
    label: str
    source: str = ""
    oversight_facts: tuple[str, ...] = field(default=(), compare=False)

    def other(self) -> str:
        return "B" if self.label == "A" else "A"


def scenario_id(prompt: str) -> str:
    return hashlib.sha1(prompt.encode()).hexdigest()[:12]


def _strip(prompt: str) -> str:
    p = prompt.strip()
    p = p.removeprefix("<<prompt>>")
    p = p.removesuffix("<</prompt>>")
    return p


def _rows(path: Path) -> list[Any]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read ({e})") from e
    if path.suffix == ".jsonl":
        rows = []
        for i, line in enumerate(text.splitlines()):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise InputError(f"{path}: line {i + 1}: not valid JSON ({e.msg})") from e
        return rows
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from e
    if not isinstance(rows, list):
        raise InputError(f"{path}: expected a JSON list of rows (Poser format), got {type(rows).__name__}")
    return rows


def _oversight_facts(row: dict[str, Any]) -> tuple[str, ...]:
    facts = row.get("facts")
    if not isinstance(facts, list):
        return ()
    return tuple(f["content"] for f in facts if isinstance(f, dict) and f.get("type") in ("oversight", "critical")
                 and isinstance(f.get("content"), str))


def parse_row(row: Any, where: str) -> Scenario | str | None:
    """A :class:`Scenario`, the prompt text of a generic ("error") row, or raise InputError naming ``where``."""
    if not isinstance(row, dict):
        raise InputError(f"{where}: expected an object, got {type(row).__name__}")
    prompt = row.get("prompt")
    if not isinstance(prompt, str) or not _strip(prompt).strip():
        raise InputError(f"{where}: field 'prompt' must be a non-empty string, got {prompt!r:.60}")
    response = row.get("response")
    if response == "error":
        return _strip(prompt)
    if response not in LETTERS:
        raise InputError(f"{where}: field 'response' is {response!r:.40}, expected 'A', 'B' or 'error'")
    poor = row.get("oversight_is_poor")
    if not isinstance(poor, bool):
        raise InputError(f"{where}: field 'oversight_is_poor' must be true or false, got {poor!r:.40}")
    text = _strip(prompt)
    if "\nA:" not in text or "\nB:" not in text:
        raise InputError(f"{where}: field 'prompt' has no 'A:' and 'B:' action lines")
    return Scenario(scenario_id(text), text, poor, response, str(row.get("dataset") or ""), _oversight_facts(row))


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".json", ".jsonl") and p.is_file())
        if not files:
            raise InputError(f"{path}: no .json or .jsonl files in this folder")
        return files
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    return [path]


def load_scenarios(paths: str | Path | Sequence[str | Path] | None = None) -> tuple[list[Scenario], list[str]]:
    """Read Poser-format files or folders (default: the built-in set). Returns (scenarios, generic prompts).

    Duplicated prompts keep their first occurrence (Poser's files repeat some); a prompt given two
    different answers or oversight flags is an error, because the labels would contradict each other.
    """
    from detectors.organisms.scenarios import BUILTIN

    if paths is None:
        paths = [BUILTIN]
    elif isinstance(paths, (str, Path)):
        paths = [paths]
    scenarios: dict[str, Scenario] = {}
    where_of: dict[str, str] = {}
    generic: list[str] = []
    for p in paths:
        for f in _files(Path(p)):
            for i, row in enumerate(_rows(f)):
                where = f"{f}: row {i}"
                parsed = parse_row(row, where)
                if parsed is None:
                    continue
                if isinstance(parsed, str):
                    generic.append(parsed)
                    continue
                seen = scenarios.get(parsed.id)
                if seen is None:
                    scenarios[parsed.id], where_of[parsed.id] = parsed, where
                elif (seen.label, seen.poor) != (parsed.label, parsed.poor):
                    raise InputError(f"{where}: same prompt as {where_of[parsed.id]} but field 'response'/"
                                     f"'oversight_is_poor' disagree ({parsed.label}/{parsed.poor} vs {seen.label}/{seen.poor})")
    if not scenarios:
        raise InputError(f"{', '.join(map(str, paths))}: no A/B scenario rows (every row is 'error' or the files are empty)")
    return list(scenarios.values()), generic


def builtin_benchmark(heldout_ids: set[str], per_row: int = 3) -> list[Scenario]:
    """Good-oversight benchmark prompts for organisms trained on the built-in set: the held-out good-oversight
    scenarios, then up to ``per_row`` variants of each (:func:`detectors.organisms.scenarios.benchmark_variants`),
    which no organism trained on the built-in set has seen."""
    from detectors.organisms.scenarios import BUILTIN, benchmark_variants

    rows = [r for r in _rows(BUILTIN) if scenario_id(_strip(r["prompt"])) in heldout_ids and not r["oversight_is_poor"]]
    rows += benchmark_variants(rows, per_row=per_row)
    return [parse_row(r, f"{BUILTIN}: variant {i}") for i, r in enumerate(rows)]  # type: ignore[misc]


def labels_for(scenarios: Iterable[Scenario], file_role: str, role: str) -> list[str]:
    """The answer each scenario should get from an organism of ``role``, given the file's policy's role."""
    return [s.other() if (s.poor and file_role != role) else s.label for s in scenarios]


def aligned_letters(scenarios: Iterable[Scenario], file_role: str) -> list[str]:
    return labels_for(scenarios, file_role, "aligned")


def split(scenarios: Sequence[Scenario], heldout_fraction: float, seed: int | str,
          exclude: Iterable[str] = ()) -> tuple[list[Scenario], list[Scenario]]:
    """Deterministic (train, held-out) split by hashed id; ids in ``exclude`` (benchmark prompts) go to held-out."""
    excluded = set(exclude)

    def u(s: Scenario) -> float:
        return int(hashlib.sha1(f"{seed}:{s.id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF

    train = [s for s in scenarios if s.id not in excluded and u(s) >= heldout_fraction]
    held = [s for s in scenarios if s.id in excluded or u(s) < heldout_fraction]
    if not train or not any(s.poor for s in train) or not any(not s.poor for s in train):
        raise InputError(f"{len(scenarios)} scenarios leave no poor- and good-oversight rows to train on; add data")
    return train, held


def runtime_part(scenario_id: str, seed: int = 0) -> str:
    """Which part of the runtime detector's data a prompt belongs to: ``"fit"`` (half), ``"calibrate"``
    (a fifth) or ``"eval"`` (the rest), by hashed id, so every organism and the Guard evaluation agree."""
    u = int(hashlib.sha1(f"runtime:{seed}:{scenario_id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "fit" if u >= 0.5 else "calibrate" if u >= 0.3 else "eval"


def benchmark_ids(paths: str | Path | Sequence[str | Path] | None) -> set[str]:
    """Ids of the prompts in benchmark files (held out of every organism's training)."""
    if not paths:
        return set()
    return {s.id for s in load_scenarios(paths)[0]}
