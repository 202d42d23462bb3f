"""The error-preserving SAE feature clamp, for a :class:`~circuits.sae.CoalignSAE` (or any SAE Lens SAE).

``x -> x + alpha * (f'_S - f_S) @ W_dec[S]`` with ``f = encode(x)`` and ``S`` the clamped latents:
the decoded *difference* only, so the SAE's reconstruction error and every other latent stay in
the stream (for SAE Lens's affine decoders this equals ``decode(f') - decode(f)`` of
:class:`~circuits.steering.SAEClamp`, without decoding all ``d_sae`` latents twice per token).
A clamp that changes nothing (``mode="scale"`` with values 1, or ``"set"`` where no clamped latent
is active) adds an exact zero: the activation comes back bit for bit.

``last_active`` counts the positions of the last forward where a clamped latent was active, so a
router can fall back to the policy's next tier when the stored features are silent.

The router (``detectors/router.py``) builds this clamp for the ``sae`` route with a detector's linked
features (``Router.load_link`` / ``Router.link``), and routes elsewhere when none of them is active at
the flagged position.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from circuits.errors import InputError
from circuits.generation_state import GenerationState, Positions
from circuits.hooked_model import HookedModel
from circuits.steering import SAEClamp


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
