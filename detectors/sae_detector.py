"""A detector on SAE features: :class:`~probe.sae_probe.SAEFeatureProbe` (k latents chosen on the training split,
an L1 logistic head) calibrated into a Detector artifact like every other kind.

A token scores ``f(x)[S] . coef + intercept`` with ``f`` the SAE's encoder at ``hooks[0]``; an item scores
the mean over its response tokens (exactly the probe's score on the item's pooled codes, since the head is
linear in the codes). The artifact stores the latent ids, the head and the SAE it reads (directory, name
and weights fingerprint); loading finds that SAE again (by directory, else by shipped name) and refuses
other weights. ``weight`` holds ``W_enc[:, S] @ coef`` normalised: the input direction the score rises
along, for correctors that steer against a detector's direction.

Example:
    >>> det = train_sae_detector(model, find_sae("smollm2-135m-instruct/blocks.16.hook_resid_post"), "deception", k=16)
    >>> det.save("dec-sae"); Detector.load("dec-sae", model).score(model, chats)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from circuits import HookedModel, capture
from circuits.errors import ArtifactError, InputError
from circuits.inputs import Item
from detectors.detector import Detector
from detectors.kinds import register_detector_kind

EACH = {"response_mean": "response_each", "all_mean": "all_each"}


def _find(ref: dict[str, Any], model: HookedModel | None) -> Any:
    from circuits.sae import find_recorded_sae

    sae = find_recorded_sae(ref.get("path"), ref.get("name"), model)
    if ref.get("fingerprint") and sae.fingerprint != ref["fingerprint"]:
        raise ArtifactError(f"SAE detector: it was trained on SAE weights {ref['fingerprint']}, {sae.path} holds {sae.fingerprint}")
    return sae


@register_detector_kind
class SAEProbeDetector(Detector):
    """Detector whose score is a sparse linear head on SAE latents (see module docstring).

    Attributes:
        features: latent ids ``[k]``; coef: the head's weights on those latents ``[k]`` (``bias`` is its intercept).
        sae_ref: ``{"path", "name", "fingerprint", "hook"}`` of the SAE.
    """

    kind = "sae_probe_detector"

    def __init__(self, *args: Any, features: Any, coef: Any, sae_ref: dict[str, Any], sae: Any = None, **kw: Any):
        super().__init__(*args, **kw)
        self.features = torch.as_tensor(features, dtype=torch.int64).reshape(-1)
        self.coef = torch.as_tensor(coef, dtype=torch.float32).reshape(-1)
        if self.features.numel() == 0 or self.features.shape != self.coef.shape:
            raise ArtifactError(f"SAE detector: {self.features.numel()} latent ids but {self.coef.numel()} coefficients")
        if not isinstance(sae_ref, dict) or sae_ref.get("hook") != self.hooks[0]:
            raise ArtifactError(f"SAE detector: field 'sae' must name the SAE at {self.hooks[0]}, got {sae_ref!r}")
        self.sae_ref = dict(sae_ref)
        self._sae = sae

    def sae(self, model: HookedModel | None = None) -> Any:
        """The SAE this detector reads (loaded and checked on first use)."""
        if self._sae is None:
            self._sae = _find(self.sae_ref, model)
        return self._sae

    def check_model(self, model: HookedModel, strict: bool | None = None) -> None:
        super().check_model(model, strict)
        self.sae(model).check_model(model)

    def score_tensor(self, acts: dict[str, Tensor]) -> Tensor:
        a = acts[self.hooks[0]]
        f = self.sae().encode(a.float()).float()
        return f[..., self.features.to(f.device)] @ self.coef.to(f.device) + self.bias

    def score_arrays(self, acts: dict[str, np.ndarray]) -> np.ndarray:
        return self.score_tensor({h: torch.from_numpy(np.asarray(a)) for h, a in acts.items()}).double().numpy()

    def _each(self, model: HookedModel, items: Sequence[Item], select: str, batch_size: int, cache_dir: str | None) -> list[np.ndarray]:
        self.check_model(model)
        acts = capture(model, items, self.hooks, select=select, batch_size=batch_size, cache_dir=cache_dir)
        s = self.score_arrays(acts.acts)
        return [s[acts.index == i] for i in range(len(items))]

    def score(self, model: HookedModel, items: Sequence[Item], batch_size: int = 16, cache_dir: str | None = None) -> np.ndarray:
        if self.select not in EACH:
            raise InputError(f"SAE detector: select {self.select!r} is not a mean over tokens ({', '.join(EACH)})")
        per = self._each(model, items, EACH[self.select], batch_size, cache_dir)
        scores = np.array([float(p.mean()) if len(p) else float("nan") for p in per])
        self.warn_on_drift(scores)
        return scores

    def token_scores(self, model: HookedModel, items: Sequence[Item], batch_size: int = 16,
                     cache_dir: str | None = None) -> list[np.ndarray]:
        return self._each(model, items, "decode_each", batch_size, cache_dir)

    def config(self) -> dict[str, Any]:
        return super().config() | {"kind": self.kind, "sae": self.sae_ref}

    def tensors(self) -> dict[str, Tensor]:
        return super().tensors() | {"features": self.features, "coef": self.coef}

    @classmethod
    def _from_artifact(cls, tensors: dict[str, Tensor], cfg: dict[str, Any], **kw: Any) -> "SAEProbeDetector":
        for name in ("features", "coef"):
            if name not in tensors:
                raise ArtifactError(f"weights.safetensors: missing tensor {name!r}")
        return cls(features=tensors["features"], coef=tensors["coef"], sae_ref=cfg.get("sae"), **kw)


def train_sae_detector(model: HookedModel, sae: Any, behaviour: str, data: Sequence[str | os.PathLike] | None = None,
                       k: int = 16, fpr: float = 0.01, control: Any = None, n_control: int = 200, seed: int = 0,
                       test_fraction: float = 0.2, cache_dir: str | os.PathLike | None = None, name: str = "") -> SAEProbeDetector:
    """Fit an SAE-feature probe on ``behaviour``'s recipe (or ``data``) at ``sae.hook`` and calibrate its
    threshold on the benign control at ``fpr`` (as :func:`~detectors.training.train_from_config` does for
    dense probes: the same data, split and control)."""
    from detectors.calibration import control_summary
    from detectors.control import control_dataset, default_cache_dir
    from detectors.training import training_data
    from probe.activation_set import group_codes
    from probe.metrics import calibration_report
    from probe.sae_probe import SAEFeatureProbe, pooled_codes
    from probe.trainer import calibrate_threshold, split_indices

    sae.check_model(model)
    if not isinstance(k, int) or k < 1 or k > sae.d_sae:
        raise InputError(f"k must be an integer between 1 and the SAE's {sae.d_sae} latents, got {k!r}")
    dataset = training_data(behaviour, data, seed)
    codes = pooled_codes(model, sae, dataset.items, select="response_each")
    y = np.asarray(dataset.labels)
    tr, va = split_indices(y, group_codes(dataset), test_fraction, seed)
    probe = SAEFeatureProbe(k=k).fit(codes[tr], y[tr])
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    ctrl = control_dataset(model, control, n_control, cache)
    ctrl_scores = probe.decision_function(pooled_codes(model, sae, ctrl.items, select="response_each"))
    threshold = calibrate_threshold(ctrl_scores, fpr)
    report = calibration_report(y[va], probe.decision_function(codes[va]), threshold)
    w_enc = sae.sae.W_enc.detach().float()[:, torch.as_tensor(probe.features_)]
    direction = w_enc @ torch.as_tensor(probe.coef_, dtype=torch.float32)
    metrics = {"val_" + key: v for key, v in report.items()} | {
        "control_fpr": float(np.mean(ctrl_scores > threshold)), "n_control": len(ctrl_scores),
        "control_summary": control_summary(ctrl_scores), "n_train": int(len(tr)), "k": k,
    }
    return SAEProbeDetector(
        behaviour=behaviour, hooks=[sae.hook], weight=direction / direction.norm().clamp(min=1e-12), bias=probe.intercept_,
        threshold=threshold, fpr=fpr, select="response_mean", model_id=model.model_id, model_fingerprint=model.fingerprint,
        d_model=model.d_model, probe_kind=f"sae_l1_logistic_k{k}", metrics=metrics, name=name or behaviour,
        features=probe.features_, coef=probe.coef_,
        sae_ref={"path": str(sae.path) if sae.path else None, "name": sae.name, "fingerprint": sae.fingerprint, "hook": sae.hook},
        sae=sae,
    )
