"""Error-preserving SAE clamps: :class:`SAEClamp` for any object with ``encode``/``decode``, and
:class:`FeatureClamp` for a :class:`~circuits.sae.CoalignSAE` (or any SAE Lens SAE).

``x -> x + alpha * (f'_S - f_S) @ W_dec[S]`` with ``f = encode(x)`` and ``S`` the clamped latents:
the decoded *difference* only, so the SAE's reconstruction error and every other latent stay in
the stream (for SAE Lens's affine decoders this equals ``decode(f') - decode(f)`` of
:class:`SAEClamp`, without decoding all ``d_sae`` latents twice per token).
A clamp that changes nothing (``mode="scale"`` with values 1, or ``"set"`` where no clamped latent
is active) adds an exact zero: the activation comes back bit for bit.

``last_active`` counts the positions of the last forward where a clamped latent was active, so a
router can fall back to the policy's next tier when the stored features are silent.

The router (``detectors/router.py``) builds this clamp for the ``sae`` route with a detector's linked
features (``Router.load_link`` / ``Router.link``), and routes elsewhere when none of them is active at
the flagged position.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor

from circuits.errors import InputError
from circuits.generation_state import GenerationState, Positions
from circuits.hooked_model import HookedModel
from circuits.steering import Corrector



@runtime_checkable
class SparseAutoencoder(Protocol):
    """What :class:`SAEClamp` needs from an SAE (a ``sae_lens.SAE`` qualifies)."""

    def encode(self, x: Tensor) -> Tensor: ...

    def decode(self, feature_acts: Tensor) -> Tensor: ...


class SAEClamp(Corrector):
    """Clamp SAE features at ``hook``: ``x + alpha * (decode(f') - decode(f))``, ``f = encode(x)``.

    ``f'`` is ``f`` with ``features`` set to ``values`` (``mode="set"``, e.g. 0 to switch a feature
    off) or multiplied by them (``mode="scale"``). Adding the decoded *difference* keeps the SAE's
    reconstruction error in the stream, so features not clamped leave ``x`` exactly as it was.

    Args:
        hook: hook name the SAE was trained on.
        sae: any object with ``encode(x) -> f`` and ``decode(f) -> x`` (:class:`SparseAutoencoder`).
        features: feature indices to clamp.
        values: one value or one per feature.
        alpha: dose multiplying the edit.
        mode: ``"set"`` or ``"scale"``.
    """

    kind = "sae_clamp"

    def __init__(
        self,
        hook: str,
        sae: SparseAutoencoder,
        features: Sequence[int],
        values: float | Sequence[float] = 0.0,
        alpha: float = 1.0,
        mode: str = "set",
        positions: Positions = "all",
        state: GenerationState | None = None,
    ) -> None:
        super().__init__(hook, alpha, positions, state)
        if not (callable(getattr(sae, "encode", None)) and callable(getattr(sae, "decode", None))):
            raise InputError(f"SAEClamp needs an object with encode() and decode(), got {type(sae).__name__}")
        if mode not in ("set", "scale"):
            raise InputError(f"SAEClamp mode must be 'set' or 'scale', got {mode!r}")
        self.sae = sae
        self.mode = mode
        self.set_features(features, values)

    def set_features(self, features: Sequence[int], values: float | Sequence[float] = 0.0) -> None:
        """Change which features are clamped (and to what); takes effect on the next forward."""
        feats = [int(f) for f in features]
        if not feats:
            raise InputError("SAEClamp needs at least one feature index")
        vals = [float(values)] * len(feats) if isinstance(values, (int, float)) else [float(v) for v in values]
        if len(vals) != len(feats):
            raise InputError(f"SAEClamp: {len(feats)} features but {len(vals)} values")
        self.features = torch.tensor(feats, dtype=torch.long)
        self.values = torch.tensor(vals, dtype=torch.float32)

    def _sae_dtype_device(self, act: Tensor) -> tuple[torch.dtype, torch.device]:
        params = getattr(self.sae, "parameters", None)
        if callable(params):
            p = next(iter(params()), None)
            if p is not None:
                return p.dtype, p.device
        dtype = getattr(self.sae, "dtype", None)
        device = getattr(self.sae, "device", None)
        return (dtype if isinstance(dtype, torch.dtype) else act.dtype), torch.device(device) if device is not None else act.device

    def _edit(self, act: Tensor, scale: Tensor | None) -> Tensor:
        dtype, device = self._sae_dtype_device(act)
        x = act.to(device=device, dtype=dtype)
        f = self.sae.encode(x)
        idx = self.features.to(f.device)
        vals = self.values.to(device=f.device, dtype=f.dtype)
        f2 = f.clone()
        if self.mode == "set":
            f2[..., idx] = vals
        else:
            f2[..., idx] = f[..., idx] * vals
        delta = (self.sae.decode(f2) - self.sae.decode(f)).to(device=act.device, dtype=act.dtype)
        if self._alpha != 1.0:
            delta = delta * self._alpha
        return act + delta if scale is None else act + scale * delta

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "features": self.features.tolist(), "values": self.values.tolist(), "mode": self.mode}


class FeatureClamp(SAEClamp):
    """Clamp latents ``features`` of ``sae`` at ``hook`` (``mode="set"``: to ``values``; ``"scale"``: times ``values``).

    ``only_active`` (default) leaves a latent alone where it is not firing: setting a silent latent
    to 0 is a no-op anyway, and setting it to a positive value would *add* a feature, which is
    steering, not clamping (use ``only_active=False`` for that).
    """

    kind = "sae_feature_clamp"

    def __init__(
        self, hook: str, sae: Any, features: Sequence[int], values: float | Sequence[float] = 0.0, alpha: float = 1.0,
        mode: str = "set", positions: Positions = "all", state: GenerationState | None = None, only_active: bool = True,
    ) -> None:
        if getattr(sae, "W_dec", None) is None:
            raise InputError(f"FeatureClamp needs an SAE with a decoder matrix W_dec, got {type(sae).__name__}")
        super().__init__(hook, sae, features, values, alpha, mode, positions, state)
        d_sae = sae.W_dec.shape[0]
        bad = [int(f) for f in self.features if not 0 <= int(f) < d_sae]
        if bad:
            raise InputError(f"FeatureClamp: latent ids {bad} out of range for an SAE with {d_sae} latents")
        self.only_active = only_active
        self.last_active = 0

    def check(self, model: HookedModel) -> None:
        model.check_hook(self.hook)
        d_in = self.sae.W_dec.shape[1]
        if d_in != model.d_model:
            raise InputError(f"FeatureClamp at {self.hook}: the SAE reads {d_in} dimensions, {model.model_id} has {model.d_model}")

    @torch.no_grad()
    def _edit(self, act: Tensor, scale: Tensor | None) -> Tensor:
        dtype, device = self._sae_dtype_device(act)
        f = self.sae.encode(act.to(device=device, dtype=dtype))
        idx = self.features.to(f.device)
        fS = f[..., idx]
        vals = self.values.to(device=f.device, dtype=f.dtype)
        target = vals.expand_as(fS) if self.mode == "set" else fS * vals
        on = fS > 0
        if self.only_active:
            target = torch.where(on, target, fS)
        self.last_active = int(on.any(-1).sum())
        diff = target - fS
        if not bool(diff.any()):
            return act  # nothing clamped: exactly the identity
        delta = (diff @ self.sae.W_dec[idx].to(diff.dtype)).to(device=act.device, dtype=act.dtype)
        if self._alpha != 1.0:
            delta = delta * self._alpha
        return act + delta if scale is None else act + scale * delta

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "only_active": self.only_active, "last_active": self.last_active,
                "sae_fingerprint": getattr(self.sae, "fingerprint", None)}
