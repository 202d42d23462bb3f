"""Benign control sets: the model's own answers to shipped everyday instructions, or the user's label-0 rows.

Thresholds are calibrated on these (training, ensembles, ``coalign calibrate``), and the benign training
negatives are built the same way.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from circuits import HookedModel
from circuits.errors import InputError
from circuits.generation import complete
from probe.datasets import Example, LabelledDataset, is_data_spec, load_data, recipe


def default_cache_dir() -> Path:
    return Path(os.environ.get("COALIGN_CACHE", Path.home() / ".cache" / "coalign"))


def control_items(model: HookedModel, n: int, cache_dir: Path, max_new_tokens: int = 32, source: str = "benign",
                  progress: bool = False) -> list[Any]:
    """Benign instructions (recipe ``source``) with the model's own greedy answers (generated once,
    cached by fingerprint)."""
    prompts = recipe(source).items[:n]
    answers = complete(model, prompts, max_new_tokens=max_new_tokens, cache_dir=cache_dir,
                       progress=progress and f"model's own answers to {source} instructions")
    return [p + [{"role": "assistant", "content": a or "OK."}] for p, a in zip(prompts, answers)]


def control_dataset(
    model: HookedModel,
    control: Sequence[str | os.PathLike] | Sequence[Any] | LabelledDataset | None,
    n_control: int,
    cache_dir: Path,
    progress: bool = False,
) -> LabelledDataset:
    """The benign set the threshold is calibrated on: the shipped benign instructions with the
    model's own answers, or the user's (files in any supported format, a dataset, or chats); from
    labelled data only the label-0 rows are used."""
    if control is None:
        return LabelledDataset("benign_control", _control_examples(
            control_items(model, n_control, cache_dir / "completions", progress=progress)))
    return _label0(_user_set(control, "control"), "control set")


def _label0(ds: LabelledDataset, what: str) -> LabelledDataset:
    neg = ds.subset(ds.labels == 0, name=f"{ds.name} (label 0)")
    if len(neg) == 0:
        raise InputError(f"{what} {ds.name!r} has no label-0 (benign) rows")
    return neg


def _user_set(rows: Sequence[str | os.PathLike] | Sequence[Any] | LabelledDataset, name: str) -> LabelledDataset:
    """Files in any supported format, a dataset, or bare chats (taken as label 0)."""
    if isinstance(rows, LabelledDataset):
        return rows
    if rows and all(is_data_spec(c) for c in rows):
        return LabelledDataset.concat(*[load_data(p) for p in rows], name=name)  # type: ignore[arg-type]
    return LabelledDataset(name, _control_examples(list(rows)))


def _control_examples(items: list[Any]) -> list[Any]:
    return [Example(item=it, label=0, source=f"control:{i}") for i, it in enumerate(items)]
