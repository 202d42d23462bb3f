"""A detector whose read-out of the response depends on the prompt (see probe.probes.conditional).

It reads one hook twice: the last prompt token (the context the model built from the user's
turn) and the response tokens. For a fixed prompt it is an ordinary linear read-out, so the Guard
binds it once per prompt at prefill (:meth:`ConditionalDetector.readout`) and then scores each
generated token with a dot product.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from circuits import HookedModel, capture_selections
from circuits.errors import ArtifactError
from circuits.inputs import Item
from detectors.detector import Detector
from detectors.kinds import register_detector_kind

TENSORS = ("pca_p", "mean_p", "scale_p", "W", "u", "pca_r", "mean_r", "scale_r")


@register_detector_kind
class ConditionalDetector(Detector):
    """Detector with a prompt-conditioned read-out; ``weight``/``bias`` hold the average read-out.

    Attributes:
        parts: the probe's tensors (PCA bases, means, scales, interaction ``W``, linear ``u``).
        c: the probe's constant term.
        context_select: how the prompt state is read (``prompt_last``).
    """

    kind = "conditional_detector"

    def __init__(self, *args: Any, parts: dict[str, Tensor], c: float, context_select: str = "prompt_last", **kw: Any):
        super().__init__(*args, **kw)
        missing = [k for k in TENSORS if k not in parts]
        if missing:
            raise ArtifactError(f"conditional detector is missing tensors {missing}")
        self.parts = {k: torch.as_tensor(parts[k], dtype=torch.float64) for k in TENSORS}
        self.c = float(c)
        self.context_select = context_select

    @classmethod
    def from_probe(cls, probe: Any, prompt_acts: np.ndarray, **kw: Any) -> "ConditionalDetector":
        parts = {
            "pca_p": probe.pca_p_.components_, "mean_p": probe.pca_p_.mean_, "scale_p": probe.scale_p_,
            "W": probe.W_, "u": probe.u_, "pca_r": probe.pca_r_.components_, "mean_r": probe.pca_r_.mean_,
            "scale_r": probe.scale_r_,
        }
        w, b = probe.readout(prompt_acts)
        return cls(weight=w.mean(0).astype(np.float32), bias=float(b.mean()), parts=parts, c=probe.c_, **kw)

    def readout(self, prompt_acts: Tensor) -> tuple[Tensor, Tensor]:
        """``(w [n, d], b [n])`` such that a response activation ``r`` of row i scores ``r @ w[i] + b[i]``."""
        p = self.parts
        a = ((prompt_acts.double() - p["mean_p"]) @ p["pca_p"].T) / p["scale_p"]
        g = (a @ p["W"] + p["u"]) / p["scale_r"]
        w = g @ p["pca_r"]
        return w.to(prompt_acts.dtype), (self.c - w @ p["mean_r"]).to(prompt_acts.dtype)

    def score_pairs(self, prompt_acts: np.ndarray, response_acts: np.ndarray) -> np.ndarray:
        w, b = self.readout(torch.from_numpy(np.asarray(prompt_acts, dtype=np.float64)))
        return ((torch.from_numpy(np.asarray(response_acts, dtype=np.float64)) * w).sum(-1) + b).numpy()

    def score(self, model: HookedModel, items: Sequence[Item], batch_size: int = 16, cache_dir: str | None = None) -> np.ndarray:
        self.check_model(model)
        hook = self.hooks[0]
        acts = capture_selections(model, items, hook, [self.context_select, self.select], batch_size, cache_dir)
        return self.score_pairs(acts[self.context_select][hook], acts[self.select][hook])

    def token_scores(self, model: HookedModel, items: Sequence[Item], batch_size: int = 16,
                     cache_dir: str | None = None) -> list[np.ndarray]:
        self.check_model(model)
        hook = self.hooks[0]
        acts = capture_selections(model, items, hook, [self.context_select, "decode_each"], batch_size, cache_dir)
        ctx, each = acts[self.context_select], acts["decode_each"]
        s = self.score_pairs(ctx[hook][each.index], each[hook])
        return [s[each.index == i] for i in range(len(items))]

    def config(self) -> dict[str, Any]:
        return super().config() | {"kind": self.kind, "c": self.c, "context_select": self.context_select}

    def tensors(self) -> dict[str, Tensor]:
        return super().tensors() | self.parts

    @classmethod
    def _from_artifact(cls, tensors: dict[str, Tensor], cfg: dict[str, Any], **kw: Any) -> "ConditionalDetector":
        if not isinstance(cfg.get("c"), (int, float)):
            raise ArtifactError("config.json: missing or non-numeric field 'c'")
        return cls(parts={k: tensors[k] for k in TENSORS if k in tensors}, c=cfg["c"],
                   context_select=cfg.get("context_select", "prompt_last"), **kw)
