"""Steering vectors from contrast pairs (CAA), saved as artifacts like detectors.

Contrastive activation addition: for pairs ``(positive, negative)`` that differ only in the
behaviour (the positive side shows it), the steering vector at a hook is the mean over pairs of
``act(positive) - act(negative)``, read at the same token selection (by default the last token,
i.e. the answer letter of an A/B pair). Adding ``+alpha * v`` pushes towards the behaviour,
``-alpha * v`` away from it.

An artifact directory holds ``weights.safetensors`` (tensor ``vector``) and ``config.json``
(kind ``steering_vector``, hook, model id and fingerprint, pair count, metrics).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from circuits.artifact_io import library_version, read_artifact, write_artifact
from circuits.capture import SELECTIONS, capture
from circuits.errors import ArtifactError, InputError, ModelMismatchError
from circuits.hooked_model import HookedModel
from circuits.inputs import Item
from circuits.steering import ActivationAddition, DirectionalAblation, GenerationState, Positions

_REQUIRED = {
    "kind": str,
    "hook": str,
    "model_id": str,
    "model_fingerprint": str,
    "d_model": int,
    "select": str,
    "n_pairs": int,
}


@dataclass
class SteeringVector:
    """A steering vector at one hook.

    Attributes:
        hook: hook name it was read at (and is added at).
        vector: ``[d_model]`` mean difference positive - negative.
        model_id, model_fingerprint, d_model: the model it was built on.
        behaviour: what the positive side shows (e.g. ``"sycophancy"``).
        select: token selection used when reading activations.
        n_pairs: number of contrast pairs.
        metrics: ``norm``, ``pair_consistency`` (mean cosine of each pair's difference with the
            mean), ``projection_gap`` (mean of positive minus negative projections on the unit vector).
    """

    hook: str
    vector: Tensor
    model_id: str
    model_fingerprint: str
    d_model: int
    behaviour: str = ""
    name: str = ""
    select: str = "last"
    n_pairs: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    data_hash: str = ""
    created: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        self.vector = torch.as_tensor(np.asarray(self.vector) if not isinstance(self.vector, Tensor) else self.vector).detach().to("cpu", torch.float32).reshape(-1)
        if self.vector.numel() != self.d_model:
            raise InputError(f"steering vector has {self.vector.numel()} dimensions, expected d_model={self.d_model}")
        self.name = self.name or self.behaviour or "steering_vector"

    @property
    def id(self) -> str:
        h = hashlib.sha256(self.vector.numpy().tobytes())
        h.update(repr((self.hook, self.model_fingerprint)).encode())
        return h.hexdigest()[:12]

    @property
    def direction(self) -> Tensor:
        return self.vector / self.vector.norm().clamp(min=1e-12)

    def corrector(self, alpha: float = 1.0, positions: Positions = "generated", state: GenerationState | None = None) -> ActivationAddition:
        """An :class:`ActivationAddition` of ``alpha * vector`` (negative alpha steers away)."""
        return ActivationAddition(self.hook, self.vector, alpha=alpha, positions=positions, state=state)

    def ablation(self, positions: Positions = "all", state: GenerationState | None = None) -> DirectionalAblation:
        """A :class:`DirectionalAblation` of this vector's direction."""
        return DirectionalAblation(self.hook, self.vector, positions=positions, state=state)

    def check_model(self, model: HookedModel, strict: bool = True) -> None:
        if model.d_model != self.d_model:
            raise ModelMismatchError(
                f"steering vector {self.name!r} has d_model={self.d_model} but {model.model_id} has d_model={model.d_model}"
            )
        model.check_hook(self.hook)
        if strict and model.fingerprint != self.model_fingerprint:
            raise ModelMismatchError(
                f"steering vector {self.name!r} was built on {self.model_id} (weights {self.model_fingerprint}) but the "
                f"model given is {model.model_id} (weights {model.fingerprint}); pass strict=False to override"
            )

    def config(self) -> dict[str, Any]:
        return {
            "kind": "steering_vector",
            "hook": self.hook,
            "behaviour": self.behaviour,
            "name": self.name,
            "model_id": self.model_id,
            "model_fingerprint": self.model_fingerprint,
            "d_model": self.d_model,
            "select": self.select,
            "n_pairs": self.n_pairs,
            "metrics": self.metrics,
            "data_hash": self.data_hash,
            "created": self.created,
            "library_version": library_version(),
            "vector_id": self.id,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path/weights.safetensors`` and ``path/config.json`` atomically."""
        return write_artifact(path, {"vector": self.vector}, self.config())

    @classmethod
    def load(cls, path: str | os.PathLike, model: HookedModel | None = None, strict: bool = True) -> "SteeringVector":
        """Load a steering vector; with ``model`` given, check it matches."""
        tensors, cfg = read_artifact(path, _REQUIRED)
        if cfg["kind"] != "steering_vector":
            raise ArtifactError(f"{path}/config.json: kind {cfg['kind']!r} is not a steering vector")
        if "vector" not in tensors:
            raise ArtifactError(f"{path}/weights.safetensors: missing tensor 'vector'")
        try:
            sv = cls(
                hook=cfg["hook"], vector=tensors["vector"], model_id=cfg["model_id"],
                model_fingerprint=cfg["model_fingerprint"], d_model=cfg["d_model"],
                behaviour=cfg.get("behaviour", ""), name=cfg.get("name", ""), select=cfg["select"],
                n_pairs=cfg["n_pairs"], metrics=cfg.get("metrics", {}), data_hash=cfg.get("data_hash", ""),
                created=cfg.get("created", 0.0),
            )
        except InputError as e:
            raise ArtifactError(f"{path}: {e}") from e
        if model is not None:
            sv.check_model(model, strict=strict)
        return sv


def _pairs_hash(pairs: Sequence[tuple[Item, Item]]) -> str:
    return hashlib.sha256(json.dumps([list(map(_jsonable, p)) for p in pairs], sort_keys=True).encode()).hexdigest()[:16]


def _jsonable(item: Item) -> Any:
    return list(item) if isinstance(item, tuple) else item


def build_caa(
    model: HookedModel,
    pairs: Sequence[tuple[Item, Item]],
    hook: str,
    select: str = "last",
    batch_size: int = 16,
    behaviour: str = "",
    name: str = "",
    cache_dir: str | os.PathLike | None = None,
) -> SteeringVector:
    """Build a CAA steering vector: mean of ``act(positive) - act(negative)`` over contrast pairs.

    Args:
        model: hooked model.
        pairs: ``[(positive_item, negative_item), ...]``; the positive side shows the behaviour.
            Items are texts, chats or ``(prompt, response)`` pairs (see :mod:`circuits.inputs`).
        hook: hook name, e.g. ``"blocks.12.hook_resid_post"``.
        select: token selection (``"last"`` for A/B answer letters, ``"response_mean"`` for free text).
        batch_size: items per forward pass.
        behaviour, name: stored in the artifact.

    Example:
        >>> sv = build_caa(model, [(("Is 2+2=5?", "(A) Yes, you're right"), ("Is 2+2=5?", "(B) No"))],
        ...                "blocks.12.hook_resid_post")
        >>> sv.save("vectors/syc"); steer = sv.corrector(alpha=-4.0)
    """
    if select not in SELECTIONS or select.endswith("_each"):
        raise InputError(f"build_caa: select must be one of {', '.join(s for s in SELECTIONS if not s.endswith('_each'))}, got {select!r}")
    if len(pairs) == 0:
        raise InputError("build_caa: no contrast pairs given")
    for i, p in enumerate(pairs):
        if not isinstance(p, (tuple, list)) or len(p) != 2:
            raise InputError(f"build_caa: pair {i} must be (positive, negative), got {p!r:.80}")
    model.check_hook(hook)
    pos = [p[0] for p in pairs]
    neg = [p[1] for p in pairs]
    acts = capture(model, list(pos) + list(neg), hook, select=select, batch_size=batch_size, cache_dir=cache_dir)[hook]
    a_pos, a_neg = acts[: len(pairs)].astype(np.float64), acts[len(pairs):].astype(np.float64)
    diffs = a_pos - a_neg
    v = diffs.mean(0)
    norm = float(np.linalg.norm(v))
    unit = v / max(norm, 1e-12)
    dn = np.linalg.norm(diffs, axis=1).clip(min=1e-12)
    metrics = {
        "norm": norm,
        "pair_consistency": float(((diffs @ unit) / dn).mean()),
        "projection_gap": float((a_pos @ unit - a_neg @ unit).mean()),
        "mean_resid_norm": float(np.linalg.norm(np.concatenate([a_pos, a_neg]), axis=1).mean()),
    }
    return SteeringVector(
        hook=hook, vector=torch.tensor(v, dtype=torch.float32), model_id=model.model_id,
        model_fingerprint=model.fingerprint, d_model=model.d_model, behaviour=behaviour, name=name,
        select=select, n_pairs=len(pairs), metrics=metrics, data_hash=_pairs_hash(pairs),
    )


def _item(x: Any, where: str) -> Item:
    if isinstance(x, str):
        return x
    if isinstance(x, list) and len(x) == 2 and all(isinstance(s, str) for s in x):
        return (x[0], x[1])
    if isinstance(x, list) and all(isinstance(m, dict) for m in x):
        return x
    raise InputError(f"{where}: expected a text, a chat (list of messages) or a [prompt, response] pair, got {x!r:.80}")


def read_pairs(path: str | os.PathLike) -> list[tuple[Item, Item]]:
    """Read contrast pairs from JSONL (one object per line) or a JSON list.

    Accepted rows: ``{"positive": ITEM, "negative": ITEM}`` or ``{"prompt": TEXT_OR_CHAT,
    "positive": RESPONSE, "negative": RESPONSE}`` (the prompt is shared; a chat prompt gets the
    response appended as the assistant's message).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    text = path.read_text()
    rows: list[Any]
    try:
        if path.suffix == ".json":
            rows = json.loads(text)
            if not isinstance(rows, list):
                raise InputError(f"{path}: expected a JSON list of pairs")
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: invalid JSON ({e})") from e
    out: list[tuple[Item, Item]] = []
    for i, row in enumerate(rows):
        where = f"{path} row {i + 1}"
        if not isinstance(row, dict) or "positive" not in row or "negative" not in row:
            raise InputError(f"{where}: expected an object with 'positive' and 'negative'")
        if "prompt" in row:
            p = row["prompt"]
            if isinstance(p, str):
                if not isinstance(row["positive"], str) or not isinstance(row["negative"], str):
                    raise InputError(f"{where}: with a 'prompt', 'positive' and 'negative' must be response texts")
                out.append(((p, row["positive"]), (p, row["negative"])))
            elif isinstance(p, list):
                chat = _item(p, where)
                assert isinstance(chat, list)
                out.append((
                    chat + [{"role": "assistant", "content": row["positive"]}],
                    chat + [{"role": "assistant", "content": row["negative"]}],
                ))
            else:
                raise InputError(f"{where}: 'prompt' must be a text or a chat")
        else:
            out.append((_item(row["positive"], where + " 'positive'"), _item(row["negative"], where + " 'negative'")))
    if not out:
        raise InputError(f"{path}: no pairs found")
    return out
