"""The Detector: a calibrated linear read-out of a model's activations at one or more hooks.

A detector scores ``sum_k  acts[hook_k] @ weight[k] + bias`` (higher = behaviour present). Every
probe kind (logistic, mass-mean, LAT, TTPD, multi-layer ensembles) is folded into that form at
training time, so scoring a token during generation is one small matmul inside the forward pass.
The threshold is calibrated on a benign control set at a target false-positive rate.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from circuits import HookedModel, ModelMismatchError, capture
from circuits.errors import ArtifactError, InputError
from circuits.inputs import Item, encode
from detectors.artifact import library_version, read_artifact, write_artifact
from detectors.kinds import MEAN_SELECTIONS, detector_kind, register_detector_kind

_REQUIRED = {
    "kind": str,
    "behaviour": str,
    "hooks": list,
    "select": str,
    "threshold": (int, float),
    "fpr": (int, float, type(None)),
    "model_id": str,
    "model_fingerprint": str,
    "d_model": int,
}


@register_detector_kind
@dataclass
class Detector:
    """A calibrated detector for one behaviour.

    Attributes:
        behaviour: e.g. ``"deception"``; also the default ``name``.
        hooks: hook names read (one per row of ``weight``).
        weight: ``[len(hooks), d_model]`` read-out weights.
        bias: scalar offset.
        threshold: scores above it are flagged.
        fpr: the false-positive rate on the benign control set the threshold was set at.
        select: the token selection used in training (``response_mean``, ``last``, ...).
        model_id, model_fingerprint, d_model: the model it was trained on.
        probe_kind: the probe family that produced the weights.
        metrics: evaluation numbers recorded at training time.
        data_hash: hash of the training data.
        stream_threshold: threshold for the *running mean* of per-token scores during generation
            (see :meth:`calibrate_stream`); None if the detector was not stream-calibrated.
        stream_warmup: tokens the running mean must cover before it may trigger an action.
    """

    behaviour: str
    hooks: list[str]
    weight: Float[Tensor, "k d_model"]
    bias: float
    threshold: float
    fpr: float
    select: str
    model_id: str
    model_fingerprint: str
    d_model: int
    probe_kind: str = "logistic"
    metrics: dict[str, Any] = field(default_factory=dict)
    data_hash: str = ""
    name: str = ""
    created: float = field(default_factory=time.time)
    stream_threshold: float | None = None
    stream_warmup: int = 1
    training_config: dict[str, Any] | None = None
    strict: bool = field(default=True, compare=False, repr=False)

    kind = "linear_detector"  # class attribute (not a field): the artifact's ``kind``

    def __post_init__(self) -> None:
        self.weight = torch.as_tensor(self.weight, dtype=torch.float32)
        if self.weight.ndim == 1:
            self.weight = self.weight.unsqueeze(0)
        if self.weight.shape != (len(self.hooks), self.d_model):
            raise InputError(
                f"detector weight has shape {tuple(self.weight.shape)}, expected ({len(self.hooks)}, {self.d_model}) "
                "(one row per hook, d_model columns)"
            )
        self.name = self.name or self.behaviour
        self.bias, self.threshold = float(self.bias), float(self.threshold)
        self.fpr = float("nan") if self.fpr is None else float(self.fpr)
        if self.stream_threshold is not None:
            self.stream_threshold = float(self.stream_threshold)
        self.stream_warmup = int(self.stream_warmup)
        if self.stream_warmup < 1:
            raise InputError(f"stream_warmup must be >= 1, got {self.stream_warmup}")
        self._cast: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    # --- identity -----------------------------------------------------------------------
    @property
    def id(self) -> str:
        """Content hash of the weights, bias and threshold (changes whenever the detector does)."""
        h = hashlib.sha256()
        for k, t in sorted(self.tensors().items()):
            h.update(k.encode() + t.detach().cpu().numpy().tobytes())
        h.update(repr((self.hooks, self.bias, self.threshold, self.model_fingerprint)).encode())
        return h.hexdigest()[:12]

    @property
    def direction(self) -> Float[Tensor, " d_model"]:
        """Unit direction in activation space at ``hooks[0]`` (what a steering corrector pushes against)."""
        w = self.weight[0]
        return w / w.norm().clamp(min=1e-12)

    # --- scoring ------------------------------------------------------------------------
    def weight_for(self, hook: str, like: Tensor) -> Tensor:
        """Row of ``weight`` for ``hook``, cast once to ``like``'s device and dtype and cached."""
        key = (like.device, like.dtype)
        if key not in self._cast:
            self._cast[key] = self.weight.to(device=like.device, dtype=like.dtype)
        return self._cast[key][self.hooks.index(hook)]

    def score_tensor(self, acts: dict[str, Tensor]) -> Tensor:
        """Score activations ``{hook: [..., d_model]}`` -> ``[...]`` (per token or per item)."""
        total: Tensor | float = self.bias
        for hook in self.hooks:
            a = acts[hook]
            total = total + a @ self.weight_for(hook, a)
        return total  # type: ignore[return-value]

    def score_arrays(self, acts: dict[str, np.ndarray]) -> np.ndarray:
        w = self.weight.numpy().astype(np.float64)
        return sum(acts[h].astype(np.float64) @ w[k] for k, h in enumerate(self.hooks)) + self.bias

    def check_model(self, model: HookedModel, strict: bool | None = None) -> None:
        """Raise ModelMismatchError unless ``model`` is the one this detector was trained on (its weights too,
        unless ``strict`` is False; by default the ``strict`` it was loaded with)."""
        strict = self.strict if strict is None else strict
        if model.d_model != self.d_model:
            raise ModelMismatchError(
                f"detector {self.name!r} reads d_model={self.d_model} activations but {model.model_id} has "
                f"d_model={model.d_model}; it was trained on {self.model_id}"
            )
        for h in self.hooks:
            model.check_hook(h)
        if strict and model.fingerprint != self.model_fingerprint:
            raise ModelMismatchError(
                f"detector {self.name!r} was trained on {self.model_id} (weights {self.model_fingerprint}) but the "
                f"model given is {model.model_id} (weights {model.fingerprint}); pass strict=False to override"
            )

    def score(self, model: HookedModel, items: Sequence[Item], batch_size: int = 16, cache_dir: str | None = None) -> np.ndarray:
        """One score per item (higher = behaviour present), using the training token selection.

        Example:
            >>> det.score(model, [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]])
            array([-3.1])
        """
        self.check_model(model)
        acts = capture(model, items, self.hooks, select=self.select, batch_size=batch_size, cache_dir=cache_dir)
        scores = self.score_arrays(acts.acts)
        self.warn_on_drift(scores)
        return scores

    def warn_on_drift(self, scores: np.ndarray) -> None:
        """RuntimeWarning when a batch of scores sits far from the calibration set (see :mod:`detectors.calibration`)."""
        from detectors.calibration import drift_warning

        message = drift_warning(self, scores)
        if message:
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    def flag(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) > self.threshold

    @property
    def streams_mean(self) -> bool:
        """Whether a Guard should act on the running mean of token scores (the statistic this
        detector was calibrated on) rather than on each token's own score."""
        return self.stream_threshold is not None and self.select in MEAN_SELECTIONS

    def token_scores(self, model: HookedModel, items: Sequence[Item], batch_size: int = 16,
                     cache_dir: str | None = None) -> list[np.ndarray]:
        """Per-token scores of each item's response exactly as a Guard computes them while generating
        it: step ``t`` reads the position before response token ``t``, and the last step (the one
        that would emit the end of turn) reads the last response token."""
        self.check_model(model)
        acts = capture(model, items, self.hooks, select="decode_each", batch_size=batch_size, cache_dir=cache_dir)
        s = self.score_arrays(acts.acts)
        return [s[acts.index == i] for i in range(len(items))]

    def explain(self, model: HookedModel, items: Sequence[Item], batch_size: int = 16) -> list[list[tuple[str, float]]]:
        """What fired: each item's score split over the tokens it averages, ``[(token text, score), ...]``
        in order (the response's tokens for chats, every token for plain text).

        The read-out is linear and the item score is the mean over those tokens, so the token scores
        average to exactly :meth:`score`; the highest ones are what pushed the item over the threshold.

        Example:
            >>> [(t, s)] = det.explain(model, [chat])[0][:1]   # sorted(..., key=lambda ts: -ts[1])[:5]: the top five
        """
        plain = all(getattr(type(self), f) is getattr(Detector, f) for f in ("score", "score_arrays"))
        if self.select not in MEAN_SELECTIONS or not plain:  # a prompt-conditioned read-out is not one mean
            raise InputError(
                f"explain splits a mean read-out over tokens; detector {self.name!r} ({type(self).__name__}, "
                f"select={self.select!r}) is not one (use token_scores for what a Guard reads)"
            )
        self.check_model(model)
        each = "response_each" if self.select == "response_mean" else "all_each"
        acts = capture(model, items, self.hooks, select=each, batch_size=batch_size)
        scores = self.score_arrays(acts.acts)
        out = []
        for i, enc in enumerate(encode(model.tokenizer, items, model.n_ctx)):  # the encoding capture used
            s = scores[acts.index == i]
            ids = enc.ids[enc.span_start if each == "response_each" else 0:]
            if len(ids) != len(s):
                raise InputError(f"item {i}: {len(s)} token rows but {len(ids)} tokens in the judged span")
            out.append([(model.tokenizer.decode([t]), float(x)) for t, x in zip(ids, s)])
        return out

    def calibrate_stream(self, model: HookedModel, control: Sequence[Item], warmup: int = 4,
                         batch_size: int = 16, cache_dir: str | None = None, confidence: float | None = 0.95) -> float:
        """Set ``stream_threshold`` so that at most ``fpr`` of the ``control`` responses (benign
        chats with the model's own answers) would ever trigger while being generated.

        The item threshold is calibrated on the mean over a whole response; while generating, the
        Guard only has the mean so far, which swings more over the first tokens. The statistic
        calibrated here is the peak of that running mean over the response tokens, from token
        ``warmup`` on.
        """
        from probe.metrics import running_mean_peak, threshold_at_fpr

        if self.select not in MEAN_SELECTIONS:
            raise InputError(f"stream calibration applies to mean selections {MEAN_SELECTIONS}, not {self.select!r}")
        per_item = self.token_scores(model, control, batch_size=batch_size, cache_dir=cache_dir)
        # row 0 is the last prompt token; the Guard's mean covers the response tokens (rows 1:)
        # a response shorter than the warm-up is judged once, on its whole mean (as the Guard does)
        peaks = np.array([running_mean_peak(s[1:], warmup) for s in per_item if len(s) > 1])
        if len(peaks) == 0:
            raise InputError("stream calibration needs control items with a non-empty response")
        self.stream_threshold = float(threshold_at_fpr(peaks, self.fpr, confidence))
        self.stream_warmup = int(warmup)
        self.metrics["stream_control_fpr"] = float(np.mean(peaks > self.stream_threshold))
        return self.stream_threshold

    # --- persistence ----------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "behaviour": self.behaviour,
            "name": self.name,
            "hooks": list(self.hooks),
            "select": self.select,
            "bias": self.bias,
            "threshold": self.threshold,
            "fpr": self.fpr if math.isfinite(self.fpr) else None,  # NaN: not calibrated (hand-made read-outs)
            "model_id": self.model_id,
            "model_fingerprint": self.model_fingerprint,
            "d_model": self.d_model,
            "probe_kind": self.probe_kind,
            "metrics": self.metrics,
            "data_hash": self.data_hash,
            "created": self.created,
            "stream_threshold": self.stream_threshold,
            "stream_warmup": self.stream_warmup,
            "library_version": library_version(),
            "training_config": self.training_config,
            "detector_id": self.id,
        }

    def tensors(self) -> dict[str, Tensor]:
        return {"weight": self.weight}

    def save(self, path: str | os.PathLike) -> None:
        """Write ``path/weights.safetensors`` and ``path/config.json`` (atomically; see
        :func:`circuits.artifact_io.write_artifact` for what may be replaced)."""
        config = self.config()
        _check_fields(config, f"detector {self.name!r}")  # never write what load would refuse
        write_artifact(path, self.tensors(), config)

    @classmethod
    def _from_artifact(cls, tensors: dict[str, Tensor], cfg: dict[str, Any], **kw: Any) -> "Detector":
        return cls(**kw)

    @classmethod
    def load(cls, path: str | os.PathLike, model: HookedModel | None = None, strict: bool = True) -> "Detector":
        """Load a detector (class chosen by the ``kind`` field through :mod:`detectors.kinds`); with ``model``,
        check it matches. Every number is checked (finite, in range) and the stored ``detector_id`` is
        recomputed, so a corrupted file fails here, naming the field, instead of scoring wrongly later.
        ``strict=False`` accepts a model with other weights, for this load and every later ``score``."""
        tensors, cfg = read_artifact(path, _REQUIRED)
        where = f"{path}/config.json"
        kind_cls = detector_kind(cfg["kind"], where)
        if "weight" not in tensors:
            raise ArtifactError(f"{path}/weights.safetensors: missing tensor 'weight'")
        _check_fields(cfg, where)
        try:
            det = kind_cls._from_artifact(
                tensors, cfg,
                behaviour=cfg["behaviour"], hooks=list(cfg["hooks"]), weight=tensors["weight"], bias=cfg["bias"],
                threshold=cfg["threshold"], fpr=cfg["fpr"], select=cfg["select"], model_id=cfg["model_id"],
                model_fingerprint=cfg["model_fingerprint"], d_model=cfg["d_model"],
                probe_kind=cfg.get("probe_kind", "unknown"), metrics=cfg.get("metrics", {}),
                data_hash=cfg.get("data_hash", ""), name=cfg.get("name", ""), created=cfg.get("created", 0.0),
                stream_threshold=cfg.get("stream_threshold"), stream_warmup=cfg.get("stream_warmup", 1),
                training_config=cfg.get("training_config"),
            )
        except (InputError, ArtifactError) as e:
            raise ArtifactError(f"{path}: {e}") from e
        stored = cfg.get("detector_id")
        if stored is not None and stored != det.id:
            raise ArtifactError(f"{where}: detector_id {stored!r} does not match the weights and settings on disk "
                                f"(recomputed {det.id!r}); the artifact was modified or corrupted")
        det.strict = strict
        if model is not None:
            det.check_model(model, strict=strict)
        return det

    @classmethod
    def from_linear(
        cls,
        behaviour: str,
        model: HookedModel,
        hooks: str | list[str],
        weight: Tensor | np.ndarray,
        bias: float = 0.0,
        threshold: float = 0.0,
        fpr: float = float("nan"),
        select: str = "response_mean",
        **kw: Any,
    ) -> "Detector":
        """Build a detector from a known read-out (tests, hand-made detectors, external probes)."""
        hooks = [hooks] if isinstance(hooks, str) else list(hooks)
        for h in hooks:
            model.check_hook(h)
        return cls(
            behaviour=behaviour, hooks=hooks, weight=torch.as_tensor(np.asarray(weight), dtype=torch.float32),
            bias=bias, threshold=threshold, fpr=fpr, select=select, model_id=model.model_id,
            model_fingerprint=model.fingerprint, d_model=model.d_model, **kw,
        )

    @classmethod
    def train(cls, behaviour: str, model: HookedModel, **kwargs: Any) -> "Detector":
        """Train a calibrated detector with a built-in recipe or your data (see :func:`detectors.training.train_detector`)."""
        from detectors.training import train_detector

        return train_detector(behaviour, model, **kwargs)

    @classmethod
    def combine(cls, detectors: Sequence["Detector"], model: HookedModel, weights: Sequence[float] | None = None,
                **kwargs: Any) -> "Detector":
        """One detector from several: weighted sum of control-standardised scores, recalibrated
        (see :func:`detectors.ensemble.combine_detectors`)."""
        from detectors.ensemble import combine_detectors

        return combine_detectors(detectors, model, weights=weights, **kwargs)


def _check_fields(cfg: dict[str, Any], where: str) -> None:
    """Every number finite and in range, every hook a string: a NaN threshold would never flag, a NaN bias
    would make every score NaN, and a red line on such a detector would never block."""
    def bad(field: str, expected: str) -> ArtifactError:
        return ArtifactError(f"{where}: field {field!r} is {cfg.get(field)!r}; expected {expected}")

    if not cfg["hooks"] or not all(isinstance(h, str) for h in cfg["hooks"]):
        raise bad("hooks", "a non-empty list of hook names (strings)")
    for f in ("threshold", "bias"):
        v = cfg.get(f)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise bad(f, "a finite number")
    fpr = cfg.get("fpr")
    if fpr is not None and (isinstance(fpr, bool) or not isinstance(fpr, (int, float)) or not 0 < fpr < 1):
        raise bad("fpr", "a number in (0, 1) or null")
    st = cfg.get("stream_threshold")
    if st is not None and (isinstance(st, bool) or not isinstance(st, (int, float)) or not math.isfinite(st)):
        raise bad("stream_threshold", "a finite number or null")
    sw = cfg.get("stream_warmup", 1)
    if isinstance(sw, bool) or not isinstance(sw, int) or sw < 1:
        raise bad("stream_warmup", "an integer >= 1")
    if cfg.get("d_model", 1) < 1:
        raise bad("d_model", "a positive integer")
    tc = cfg.get("training_config")
    if tc is not None and not isinstance(tc, dict):
        raise bad("training_config", "an object or null")
