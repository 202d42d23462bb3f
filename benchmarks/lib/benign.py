"""Benign prompts the suite reads from the public datasets (the path comes from a config)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def alpaca_prompts(seed_tasks: str | Path, n: int) -> list[str]:
    """The first ``n`` of Stanford Alpaca's seed tasks (``seed_tasks.jsonl``) as user prompts
    (instruction, a blank line and the first instance's input where it has one)."""
    rows = [json.loads(line) for line in Path(seed_tasks).read_text().splitlines() if line.strip()]
    out = []
    for r in rows[:n]:
        inp = (r.get("instances") or [{}])[0].get("input", "")
        out.append(r["instruction"] + (f"\n\n{inp}" if inp else ""))
    return out


def alpaca_chats(model: Any, seed_tasks: str | Path, n: int, max_new_tokens: int, cache: Path) -> list[list[dict[str, str]]]:
    """The model's own greedy answers to :func:`alpaca_prompts`, as chats (cached like detector training)."""
    from circuits.generation import complete

    prompts = [[{"role": "user", "content": t}] for t in alpaca_prompts(seed_tasks, n)]
    answers = complete(model, prompts, max_new_tokens=max_new_tokens, cache_dir=cache / "completions")
    return [p + [{"role": "assistant", "content": a or "OK."}] for p, a in zip(prompts, answers)]
