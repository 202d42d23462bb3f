"""Datasets of the probe benchmark: which files and recipes, row caps, contrast pairs and splits.

Every dataset is capped with a seeded sample (balanced by class for statements, whole groups for
chats), stripped of items longer than the model's context, and split once into
``fit / val / test`` parts (60 / 20 / 20 % of its groups, stratified by label) that every part
of the benchmark re-uses. Files missing from the datasets folder are skipped with a note.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from circuits import HookedModel
from circuits.errors import InputError
from circuits.inputs import encode
from probe.datasets import LabelledDataset, load_dataset, recipe

#: statement sets trained on (affirmative and negated, for TTPD's polarity)
TRUTH_TRAIN = ("truth_is_universal/cities.csv", "truth_is_universal/neg_cities.csv",
               "truth_is_universal/sp_en_trans.csv", "truth_is_universal/neg_sp_en_trans.csv")
#: statement sets never trained on (topics absent from TRUTH_TRAIN; negated ones included)
TRUTH_TEST = ("truth_is_universal/animal_class.csv", "truth_is_universal/neg_animal_class.csv",
              "truth_is_universal/element_symb.csv", "truth_is_universal/neg_element_symb.csv",
              "truth_is_universal/inventors.csv", "truth_is_universal/neg_inventors.csv",
              "truth_is_universal/facts.csv", "truth_is_universal/neg_facts.csv",
              "geometry_of_truth/larger_than.csv", "geometry_of_truth/companies_true_false.csv")
CAA_SYCOPHANCY = "caa/test/sycophancy/test_dataset_ab.json"
#: fractions of each dataset's groups in the validation and held-out test parts
VAL_FRACTION, TEST_FRACTION = 0.2, 0.2

#: row caps: statements (per file), deception, sycophancy; None = all rows
CAPS = {"full": {"statements": 400, "deception": None, "sycophancy": None},
        "quick": {"statements": 120, "deception": 320, "sycophancy": 200}}


@dataclass
class BenchData:
    """One dataset of the benchmark.

    Attributes:
        name: short name (file stem or recipe name).
        data: the (capped, context-filtered) examples.
        select: token selection for capture (``last`` for statements, ``response_mean`` for chats).
        source: file path or ``recipe:<name>``.
        pairs: contrast-pair id per row (one positive and one negative each), or None.
        parts: ``(fit, val, test)`` row indices.
        n_total: rows before capping; n_dropped: rows too long for the model's context.
    """

    name: str
    data: LabelledDataset
    select: str
    source: str
    pairs: np.ndarray | None
    parts: tuple[np.ndarray, np.ndarray, np.ndarray]
    n_total: int
    n_dropped: int = 0


def cap_rows(ds: LabelledDataset, cap: int | None, seed: int) -> LabelledDataset:
    """At most ``cap`` rows, original order kept: class-balanced rows if no groups, else whole groups."""
    if cap is None or len(ds) <= cap:
        return ds
    rng = np.random.default_rng(seed)
    y = ds.labels
    if all(g is None for g in ds.groups):
        n1 = min(int(y.sum()), max(cap // 2, cap - int((y == 0).sum())))
        pick = [rng.choice(np.flatnonzero(y == 1), n1, replace=False),
                rng.choice(np.flatnonzero(y == 0), cap - n1, replace=False)]
        return ds.subset(np.sort(np.concatenate(pick)))
    units = _unit_ids(ds)
    keep: list[int] = []
    for u in rng.permutation(np.unique(units)):
        members = np.flatnonzero(units == u)
        if keep and len(keep) + len(members) > cap:
            break
        keep.extend(members.tolist())
    return ds.subset(sorted(keep))


def _unit_ids(ds: LabelledDataset) -> np.ndarray:
    """Split unit per row: its group, or the row itself when it has none."""
    codes: dict[Any, int] = {}
    return np.array([codes.setdefault(("g", g) if g is not None else ("i", i), len(codes))
                     for i, g in enumerate(ds.groups)])


def _prompt_key(item: Any) -> str | None:
    if isinstance(item, tuple):
        return item[0]
    if isinstance(item, list):
        return json.dumps(item[:-1], sort_keys=True)
    return None


def contrast_pairs(ds: LabelledDataset) -> np.ndarray | None:
    """Pair ids if every example has exactly one partner of the other label, else None.

    Tried in turn: the group itself (CAA A/B rows); group + source (the deception recipe: both
    chats of a pair share a source); group + prompt (same prompt, two responses: sycophancy).
    """
    if len(ds) == 0 or any(g is None for g in ds.groups):
        return None
    y = ds.labels
    keys = (lambda e: e.group, lambda e: (e.group, e.source), lambda e: (e.group, _prompt_key(e.item)))
    for key in keys:
        codes: dict[Any, int] = {}
        ids = np.array([codes.setdefault(key(e), len(codes)) for e in ds])
        if all(sorted(y[ids == k].tolist()) == [0, 1] for k in range(len(codes))):
            return ids
    return None


def split_parts(y: np.ndarray, units: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fit, val, test)`` row indices; units never straddle parts; strata = each unit's label set."""
    rng = np.random.default_rng(seed)
    uniq = np.unique(units)
    strata: dict[tuple[int, ...], list[int]] = {}
    for u in uniq:
        strata.setdefault(tuple(sorted(set(y[units == u].tolist()))), []).append(int(u))
    part_of: dict[int, int] = {}
    for key in sorted(strata):
        us = [strata[key][k] for k in rng.permutation(len(strata[key]))]
        n_val, n_test = round(VAL_FRACTION * len(us)), round(TEST_FRACTION * len(us))
        for j, u in enumerate(us):
            part_of[u] = 1 if j < n_val else 2 if j < n_val + n_test else 0
    which = np.array([part_of[int(u)] for u in units])
    parts = tuple(np.flatnonzero(which == k) for k in range(3))
    for p, name in zip(parts, ("fit", "validation", "test")):
        if len(np.unique(y[p])) < 2:
            raise InputError(f"{len(y)} rows cannot be split with both classes in the {name} part; add data")
    return parts  # type: ignore[return-value]


def drop_overlong(model: HookedModel, ds: LabelledDataset) -> tuple[LabelledDataset, int]:
    """Remove items longer than the model's context (they cannot be captured)."""
    keep = []
    for i, item in enumerate(ds.items):
        try:
            encode(model.tokenizer, [item], model.n_ctx)
            keep.append(i)
        except InputError:
            pass
    return (ds, 0) if len(keep) == len(ds) else (ds.subset(keep), len(ds) - len(keep))


def _prepare(model: HookedModel, name: str, ds: LabelledDataset, select: str, source: str, cap: int | None,
             seed: int, notes: list[str]) -> BenchData | None:
    n_total = len(ds)
    ds, dropped = drop_overlong(model, cap_rows(ds, cap, seed))
    if dropped:
        notes.append(f"{name}: {dropped} items longer than the model context ({model.n_ctx} tokens) were dropped")
    try:
        ds.check_two_classes()
        parts = split_parts(ds.labels, _unit_ids(ds), seed)
    except InputError as e:
        notes.append(f"{name}: skipped ({e})")
        return None
    return BenchData(name, ds, select, source, contrast_pairs(ds), parts, n_total, dropped)


#: chat datasets captured a second time at the last token, for the naive baselines (``<name>:last``)
LAST_TOKEN_VARIANTS = ("deception", "sycophancy", "sycophancy_caa")


def load_bench_data(
    model: HookedModel, datasets_dir: Path, quick: bool, seed: int, notes: list[str],
    max_rows: int | None = None, overrides: Mapping[str, LabelledDataset] | None = None,
) -> dict[str, BenchData]:
    """Every dataset the benchmark uses, by name (statement-file stems, ``deception``,
    ``roleplay_lies``, ``sycophancy``, ``sycophancy_caa``, and ``<chat set>:last``: the same rows
    and split read at the last token). ``overrides`` replaces any of them by base name."""
    caps = dict(CAPS["quick" if quick else "full"])
    if max_rows is not None:
        caps = {k: max_rows for k in caps}
    overrides = dict(overrides or {})
    specs: list[tuple[str, str, str, int | None, Any]] = []  # name, select, source, cap, loader
    for rel in TRUTH_TRAIN + TRUTH_TEST:
        specs.append((Path(rel).stem, "last", rel, caps["statements"], datasets_dir / rel))
    chats = [("deception", "recipe:deception", caps["deception"], "deception"),
             ("roleplay_lies", "recipe:roleplay_lies", None, "roleplay_lies"),
             ("sycophancy", "recipe:sycophancy", caps["sycophancy"], "sycophancy"),
             ("sycophancy_caa", CAA_SYCOPHANCY, None, datasets_dir / CAA_SYCOPHANCY)]
    specs += [(n, "response_mean", src, cap, ld) for n, src, cap, ld in chats]
    specs += [(f"{n}:last", "last", src, cap, ld) for n, src, cap, ld in chats if n in LAST_TOKEN_VARIANTS]
    out: dict[str, BenchData] = {}
    for name, select, source, cap, loader in specs:
        base = name.split(":")[0]
        if base in overrides:
            ds, source = overrides[base], f"override:{base}"
        elif isinstance(loader, Path):
            if not loader.is_file():
                if base == name:
                    notes.append(f"{name}: {loader} not found; skipped")
                continue
            ds = load_dataset(loader, name=base)
        else:
            ds = recipe(loader, seed=seed)
        prepared = _prepare(model, name, ds, select, source, cap, seed, notes)
        if prepared is not None:
            out[name] = prepared
    return out


@dataclass
class Suite:
    """A training setup: fit on ``train`` (fit parts), choose the hook on their validation parts,
    evaluate on ``evals`` (whole datasets never trained on) and, if ``heldout``, on the training
    datasets' test parts (reported as ``<train> (held-out)``); otherwise test parts are trained on."""

    name: str
    train: list[str]
    evals: list[str]
    heldout: bool
    select: str
    methods: list[str] | None = None
    description: str = ""


def build_suites(data: Mapping[str, BenchData], notes: list[str]) -> list[Suite]:
    """The benchmark's suites, restricted to the datasets that could be loaded."""
    def have(names: Sequence[str]) -> list[str]:
        return [n for n in names if n in data]

    truth_train, truth_test = have([Path(p).stem for p in TRUTH_TRAIN]), have([Path(p).stem for p in TRUTH_TEST])
    suites = [
        Suite("truth", truth_train, truth_test, False, "last",
              description="train on affirmative + negated statement sets, test on unseen topics"),
        Suite("deception", have(["deception"]), have(["roleplay_lies"]), True, "response_mean",
              description="instructed honest/dishonest pairs; held-out fact groups and role-play lies"),
        Suite("sycophancy", have(["sycophancy"]), have(["sycophancy_caa"]), False, "response_mean",
              description="built-in sycophancy A/B chats; test on the CAA sycophancy A/B test set"),
        Suite("baseline", have(["cities"]), have(["neg_cities"]), True, "last", ["logistic"],
              description="naive baseline: last-token logistic probe on cities, one layer"),
        Suite("baseline_deception", have(["deception:last"]), [], True, "last", ["logistic"],
              description="naive baseline: last-token logistic probe on the deception recipe, one layer"),
        Suite("baseline_sycophancy", have(["sycophancy:last"]), have(["sycophancy_caa:last"]), False, "last",
              ["logistic"], description="naive baseline: last-token logistic probe on sycophancy, tested on CAA"),
    ]
    kept = [s for s in suites if s.train and (s.evals or s.heldout)]
    for s in suites:
        if s not in kept:
            notes.append(f"suite {s.name}: skipped (its datasets are missing)")
    return kept
