"""Labelled examples and datasets for training and evaluating probes.

An :class:`Example` holds one input item in a form ``circuits.inputs`` accepts (plain text, a
chat whose last assistant message is the judged response, or a ``(prompt, response)`` pair)
and a binary label: **1 = the behaviour is present** (deceptive, sycophantic, a false
statement), 0 = absent.

A :class:`LabelledDataset` is an ordered list of examples with array views and helpers for
contrast-pair-preserving splits and stable content hashes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence, Union

import numpy as np

from circuits.errors import InputError

Chat = list[dict[str, str]]
Item = Union[str, Chat, tuple[str, str]]

UNKNOWN_POLARITY = -1
"""Value used in :attr:`LabelledDataset.polarity` for examples whose polarity is unknown."""


def _check_item(item: Any, where: str) -> None:
    if isinstance(item, str):
        if not item.strip():
            raise InputError(f"{where}: empty text")
        return
    if isinstance(item, tuple):
        if len(item) != 2 or not all(isinstance(x, str) for x in item):
            raise InputError(f"{where}: a tuple item must be (prompt, response) strings")
        return
    if isinstance(item, list):
        if not item:
            raise InputError(f"{where}: empty chat")
        for j, m in enumerate(item):
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                raise InputError(f"{where}: message {j} must be a dict with string 'role' and 'content'")
        return
    raise InputError(
        f"{where}: item must be a string, a list of chat messages or a (prompt, response) tuple, "
        f"got {type(item).__name__}"
    )


@dataclass(frozen=True)
class Example:
    """One labelled input.

    Attributes:
        item: what the model reads (see ``circuits/inputs.py``).
        label: 1 = behaviour present (deceptive / sycophantic / false statement), 0 = absent.
        group: contrast-pair id; examples sharing it are kept on the same side of a split.
        polarity: for statements, 1 affirmative, 0 negated; None if unknown / not a statement.
        source: where it came from (``"file.csv:row 12"``, ``"recipe:deception/instructed:17"``).
    """

    item: Item
    label: int
    group: str | None = None
    polarity: int | None = None
    source: str = ""

    def __post_init__(self) -> None:
        where = self.source or "example"
        _check_item(self.item, where)
        if isinstance(self.label, bool) or self.label not in (0, 1):
            raise InputError(f"{where}: label must be 0 or 1, got {self.label!r}")
        if self.polarity is not None and (isinstance(self.polarity, bool) or self.polarity not in (0, 1)):
            raise InputError(f"{where}: polarity must be 0, 1 or None, got {self.polarity!r}")
        if self.group is not None and not isinstance(self.group, str):
            raise InputError(f"{where}: group must be a string or None, got {type(self.group).__name__}")

    def __hash__(self) -> int:  # items may be lists; hash the canonical JSON instead
        return hash(json.dumps(self.canonical(), sort_keys=True))

    def canonical(self) -> dict:
        """JSON-able form used by :meth:`LabelledDataset.content_hash` (``source`` excluded)."""
        item: Any = self.item
        if isinstance(item, tuple):
            item = {"prompt": item[0], "response": item[1]}
        elif isinstance(item, list):
            item = [{"role": m["role"], "content": m["content"]} for m in item]
        return {"item": item, "label": int(self.label), "group": self.group, "polarity": self.polarity}


class LabelledDataset:
    """A named, ordered collection of :class:`Example`.

    Array views: ``labels`` (int64, 0/1), ``polarity`` (int64: 1 affirmative, 0 negated,
    ``-1`` = unknown, see :data:`UNKNOWN_POLARITY`), ``groups`` (list of ``str | None``).
    """

    def __init__(self, name: str, examples: Iterable[Example]):
        self.name = str(name)
        self.examples: list[Example] = list(examples)
        for i, e in enumerate(self.examples):
            if not isinstance(e, Example):
                raise InputError(f"dataset {self.name!r}: element {i} is a {type(e).__name__}, not an Example")

    # ---- views -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.examples)

    def __iter__(self) -> Iterator[Example]:
        return iter(self.examples)

    def __getitem__(self, i: int) -> Example:
        return self.examples[i]

    def __repr__(self) -> str:
        n1 = int(self.labels.sum()) if len(self) else 0
        return f"LabelledDataset({self.name!r}, n={len(self)}, positive={n1}, negative={len(self) - n1})"

    @property
    def items(self) -> list[Item]:
        return [e.item for e in self.examples]

    @property
    def labels(self) -> np.ndarray:
        return np.array([e.label for e in self.examples], dtype=np.int64)

    @property
    def groups(self) -> list[str | None]:
        return [e.group for e in self.examples]

    @property
    def polarity(self) -> np.ndarray:
        return np.array(
            [UNKNOWN_POLARITY if e.polarity is None else e.polarity for e in self.examples], dtype=np.int64
        )

    @property
    def sources(self) -> list[str]:
        return [e.source for e in self.examples]

    def class_counts(self) -> dict[int, int]:
        lab = self.labels
        return {0: int((lab == 0).sum()), 1: int((lab == 1).sum())}

    # ---- checks and hashing -------------------------------------------------------------
    def check_two_classes(self) -> "LabelledDataset":
        """Raise :class:`InputError` if the dataset is empty or has a single class; else return self."""
        if not self.examples:
            raise InputError(f"dataset {self.name!r} is empty; a probe needs examples of both classes (0 and 1)")
        c = self.class_counts()
        for lab in (0, 1):
            if c[lab] == 0:
                raise InputError(
                    f"dataset {self.name!r} has only label {1 - lab} ({c[1 - lab]} examples) and no label {lab}; "
                    "a probe needs examples of both classes"
                )
        return self

    def content_hash(self) -> str:
        """sha256 hex digest of a canonical JSON of the examples (items, labels, groups, polarity).

        The dataset name and the examples' ``source`` strings are not part of it, so the same
        data loaded from another path hashes the same; any change to an item, a label, a group
        or a polarity, or to the order, changes it.
        """
        payload = json.dumps(
            [e.canonical() for e in self.examples], sort_keys=True, ensure_ascii=False, separators=(",", ":")
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    # ---- subsets ------------------------------------------------------------------------
    def subset(self, indices: Sequence[int] | np.ndarray, name: str | None = None) -> "LabelledDataset":
        """Examples at ``indices`` (ints, in the given order, or a boolean mask of length ``len(self)``)."""
        idx = np.asarray(indices)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise InputError(f"dataset {self.name!r}: boolean mask of shape {idx.shape}, expected ({len(self)},)")
            idx = np.flatnonzero(idx)
        out = []
        for i in idx.reshape(-1).tolist():
            if not isinstance(i, int) or not -len(self) <= i < len(self):
                raise InputError(f"dataset {self.name!r}: index {i!r} out of range for {len(self)} examples")
            out.append(self.examples[i])
        return LabelledDataset(name or self.name, out)

    def split(self, test_fraction: float = 0.2, seed: int = 0) -> tuple["LabelledDataset", "LabelledDataset"]:
        """Split into ``(train, test)`` keeping every group on one side.

        Examples without a group are their own unit. Units are stratified by their set of
        labels (pairs with both labels, all-positive, all-negative), shuffled with ``seed``
        and about ``test_fraction`` of each stratum goes to test. Order within each side is
        the original order. Deterministic for a given dataset and seed.
        """
        if not 0.0 < float(test_fraction) < 1.0:
            raise InputError(f"dataset {self.name!r}: test_fraction must be in (0, 1), got {test_fraction}")
        units: dict[Any, list[int]] = {}
        for i, e in enumerate(self.examples):
            units.setdefault(("g", e.group) if e.group is not None else ("i", i), []).append(i)
        strata: dict[tuple[int, ...], list[list[int]]] = {}
        for members in units.values():
            key = tuple(sorted({self.examples[i].label for i in members}))
            strata.setdefault(key, []).append(members)
        rng = np.random.default_rng(seed)
        test: list[int] = []
        for key in sorted(strata):
            us = strata[key]
            order = rng.permutation(len(us))
            n_test = int(round(test_fraction * len(us)))
            for k in order[:n_test]:
                test.extend(us[k])
        if not test and len(units) >= 2:  # tiny datasets: put at least one unit in test
            first = sorted(units.values(), key=min)[int(rng.integers(len(units)))]
            test.extend(first)
        test_set = set(test)
        train_idx = [i for i in range(len(self)) if i not in test_set]
        test_idx = sorted(test_set)
        return self.subset(train_idx, f"{self.name}[train]"), self.subset(test_idx, f"{self.name}[test]")

    @staticmethod
    def concat(*datasets: "LabelledDataset", name: str | None = None) -> "LabelledDataset":
        """Concatenate datasets in order. Group ids are kept as they are (a group id used in
        two datasets ties their examples together in :meth:`split`, which is never a leak)."""
        if not datasets:
            raise InputError("concat needs at least one dataset")
        name = name or "+".join(d.name for d in datasets)
        return LabelledDataset(name, [e for d in datasets for e in d.examples])


def concat(*datasets: LabelledDataset, name: str | None = None) -> LabelledDataset:
    """Module-level alias of :meth:`LabelledDataset.concat`."""
    return LabelledDataset.concat(*datasets, name=name)
