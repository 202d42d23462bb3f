"""ActivationSet: a labelled dataset's activations at one or more hooks, ready for probes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from circuits import HookedModel, capture
from circuits.errors import InputError


@dataclass
class ActivationSet:
    """Activations ``X[hook]`` ``[n, d]`` with labels and the metadata probes need.

    Attributes:
        X: ``{hook_name: float32 [n, d]}``.
        y: labels, 1 = behaviour present.
        groups: contrast-pair ids (``None`` entries become -1) or None.
        polarity: 1 affirmative / 0 negated statements, -1 unknown; or None.
        select: token selection used for capture.
        data_hash: content hash of the dataset the activations came from.
    """

    X: dict[str, np.ndarray]
    y: np.ndarray
    groups: np.ndarray | None
    polarity: np.ndarray | None
    select: str
    data_hash: str = ""

    @property
    def hooks(self) -> list[str]:
        return list(self.X)

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: Sequence[int] | np.ndarray) -> "ActivationSet":
        idx = np.asarray(idx)
        return ActivationSet(
            {h: x[idx] for h, x in self.X.items()}, self.y[idx],
            None if self.groups is None else self.groups[idx],
            None if self.polarity is None else self.polarity[idx], self.select, self.data_hash,
        )

    def append(self, other: "ActivationSet") -> "ActivationSet":
        """These rows followed by ``other``'s (same hooks). Rows without a pair or polarity id get -1,
        so pair- and polarity-based fitting is off for the result unless both sets have them."""
        if set(other.X) != set(self.X):
            raise InputError(f"cannot append activations at hooks {sorted(other.X)} to activations at {sorted(self.X)}")

        def ids(a: np.ndarray | None, b: np.ndarray | None, shift: bool) -> np.ndarray | None:
            if a is None and b is None:
                return None
            a = np.full(len(self), -1) if a is None else a
            b = np.full(len(other), -1) if b is None else b
            if shift and len(a) and (b >= 0).any():  # pair ids of the two sets must not collide
                b = np.where(b >= 0, b + int(a.max()) + 1, -1)
            return np.concatenate([a, b])

        return ActivationSet(
            {h: np.concatenate([x, other.X[h]]) for h, x in self.X.items()}, np.concatenate([self.y, other.y]),
            ids(self.groups, other.groups, True), ids(self.polarity, other.polarity, False), self.select, self.data_hash,
        )

    def fit_params(self) -> dict[str, Any]:
        """Extra ``fit`` arguments a probe may use (pairs for LAT/CCS, polarity for TTPD)."""
        out: dict[str, Any] = {}
        if self.groups is not None and (self.groups >= 0).all():
            out["groups"] = self.groups
        if self.polarity is not None and (self.polarity >= 0).all() and len(np.unique(self.polarity)) == 2:
            out["polarity"] = self.polarity
        return out

    @classmethod
    def from_dataset(
        cls,
        model: HookedModel,
        dataset: Any,
        hooks: str | Sequence[str],
        select: str = "response_mean",
        batch_size: int = 16,
        cache_dir: str | Path | None = None,
        progress: bool = False,
    ) -> "ActivationSet":
        """Capture ``dataset`` (a ``probe.datasets.LabelledDataset``) at ``hooks``."""
        acts = capture(model, dataset.items, hooks, select=select, batch_size=batch_size, cache_dir=cache_dir, progress=progress)
        return cls(acts.acts, np.asarray(dataset.labels), _ids(dataset, "group"), _ids(dataset, "polarity"), select, dataset.content_hash())


def group_codes(dataset: Any) -> np.ndarray | None:
    """Integer contrast-pair ids of a dataset's examples, as an ActivationSet built from it holds them."""
    return _ids(dataset, "group")


def _ids(dataset: Any, field: str) -> np.ndarray | None:
    values = [getattr(e, field) for e in dataset.examples]
    if all(v is None for v in values):
        return None
    if field == "polarity":
        return np.array([-1 if v is None else int(v) for v in values])
    codes: dict[Any, int] = {}
    return np.array([-1 if v is None else codes.setdefault(v, len(codes)) for v in values])
