"""The router: from a flag (a detector, and once SAEs exist its flagged features) to a corrector and dose.

Corrector specs (the policy's ``corrector`` key):

================  ==================================================================================
``addition``      add ``-dose * detector.direction`` at the detector's first hook (steer away); for a
                  prompt-conditioned detector (``readout``), each row's own bound read-out direction
``ablation``      project ``detector.direction`` out at that hook (``dose`` = fraction removed, so a
                  dose above 1 is clipped to 1)
``vector:PATH``   add ``-dose * v`` of a saved CAA steering vector (``coalign steer``), at its hook
``sae``           clamp the flagged SAE features to 0 with the SAE registered for the detector's hook
``avoid_token``   with ``timing = "rewind"``: at the re-chosen position only, steer the last block's
                  residual stream away from the token taken back, toward the runner-up under that
                  step's logits (:class:`~circuits.token_avoidance.TokenAvoidance`; ``dose`` in
                  residual units): for a detector that judges a token after it is said, e.g. an A/B
                  letter read with its question
any other name    a factory registered with :meth:`Router.register`
================  ==================================================================================

Correctors built by the router edit only the positions whose outputs are generated tokens
(``positions="response"``: the last prompt token and every generated one, so a correction forced
from the start also steers the first new token), or every position with the policy's
``positions = "all"``; they start with every batch row off; the Guard
switches a row on when it is flagged (conditional steering). If the flag does not clear
within ``patience`` tokens of correcting, the Guard moves up a tier (:meth:`Resolved.next_tier`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from torch import Tensor

from circuits.hooked_model import HookedModel
from circuits.steering import (
    ActivationAddition,
    Corrector,
    DirectionalAblation,
    GenerationState,
    SAEClamp,
    SparseAutoencoder,
)
from circuits.steering_vectors import SteeringVector
from circuits.token_avoidance import TokenAvoidance, last_block_hook
from detectors.policy import PolicyError, Resolved

CorrectorFactory = Callable[[Any, float, HookedModel, GenerationState], Corrector]
"""``factory(detector, dose, model, state) -> Corrector`` (positions should be ``"response"``)."""


@dataclass(frozen=True)
class Route:
    """Where a flag goes: the corrector spec, dose and hook, and the SAE features if any."""

    detector: str
    corrector: str
    dose: float
    hook: str
    features: tuple[int, ...] = ()
    positions: str = "response"

    @property
    def key(self) -> tuple:
        return (self.detector, self.corrector, self.hook, self.features, self.positions)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"detector": self.detector, "corrector": self.corrector, "dose": self.dose, "hook": self.hook}
        if self.features:
            d["features"] = list(self.features)
        if self.positions != "response":
            d["positions"] = self.positions
        return d


def _addition(det: Any, dose: float, model: HookedModel, state: GenerationState, positions: str = "response",
              readout: Tensor | None = None) -> Corrector:
    if readout is None:
        return ActivationAddition(det.hooks[0], -det.direction, alpha=dose, positions=positions, state=state)
    # a conditional detector's direction depends on the prompt: steer each row away from its own
    w = readout.detach().float().cpu()
    return ActivationAddition(det.hooks[0], -w / w.norm(dim=-1, keepdim=True).clamp(min=1e-12), alpha=dose,
                              positions=positions, state=state)


def _ablation(det: Any, dose: float, model: HookedModel, state: GenerationState, positions: str = "response") -> Corrector:
    return DirectionalAblation(det.hooks[0], det.direction, alpha=min(float(dose), 1.0), positions=positions, state=state)


class Router:
    """Maps flags to correctors.

    Args:
        factories: extra named corrector factories (``name -> factory(detector, dose, model, state)``).

    Example:
        >>> router = Router()
        >>> router.register("my_vec", lambda det, dose, model, state: sv.corrector(-dose, state=state))
        >>> guard = Guard(model, dets, policy.update("sycophancy", corrector="my_vec"), router=router)
    """

    BUILTIN = ("addition", "ablation", "sae", "avoid_token")

    def __init__(self, factories: dict[str, CorrectorFactory] | None = None) -> None:
        self._factories: dict[str, CorrectorFactory] = {"addition": _addition, "ablation": _ablation}
        for name, f in (factories or {}).items():
            self.register(name, f)
        self._saes: dict[str, SparseAutoencoder] = {}
        self._vectors: dict[str, SteeringVector] = {}

    def register(self, name: str, factory: CorrectorFactory) -> None:
        """Add a named corrector factory usable as ``corrector = "<name>"`` in a policy."""
        if name in ("sae", "avoid_token") or name.startswith("vector:"):
            raise PolicyError(f"corrector name {name!r} is reserved")
        self._factories[name] = factory

    def register_sae(self, hook: str, sae: SparseAutoencoder) -> None:
        """Make ``sae`` (``encode``/``decode``) available for feature routes at ``hook``."""
        self._saes[hook] = sae

    def validate(self, spec: str, detector: Any, where: str = "policy") -> None:
        """Raise PolicyError if ``spec`` cannot be built for ``detector``."""
        if spec in self._factories or spec == "avoid_token":
            return
        if spec == "sae":
            if detector.hooks[0] not in self._saes:
                raise PolicyError(f"{where}: detector {detector.name!r} routes to 'sae' but no SAE is registered for {detector.hooks[0]}")
            return
        if spec.startswith("vector:"):
            path = spec.split(":", 1)[1]
            if not Path(path).is_dir():
                raise PolicyError(f"{where}: detector {detector.name!r}: steering vector directory {path!r} not found")
            return
        raise PolicyError(
            f"{where}: detector {detector.name!r}: unknown corrector {spec!r} (expected addition, ablation, "
            f"vector:PATH, sae, avoid_token or one of the registered: {', '.join(sorted(self._factories)) or 'none'})"
        )

    def route(self, detector: Any, resolved: Resolved, features: Sequence[int] | None = None,
              model: HookedModel | None = None) -> Route:
        """The route for a flag of ``detector``; ``features`` (flagged SAE feature ids) select an SAE
        clamp when an SAE is registered for the detector's hook. ``model`` places ``avoid_token``."""
        hook = detector.hooks[0]
        if features and hook in self._saes:
            return Route(detector.name, "sae", 1.0, hook, tuple(int(f) for f in features), resolved.positions)
        spec = resolved.corrector
        if spec.startswith("vector:"):
            hook = self._vector(spec).hook
        if spec == "avoid_token":
            if model is None:
                raise PolicyError("the 'avoid_token' route needs the model (Router.route(..., model=model))")
            hook = last_block_hook(model)
        return Route(detector.name, spec, resolved.dose, hook, positions=resolved.positions)

    def build(self, route: Route, detector: Any, model: HookedModel, state: GenerationState,
              readout: Tensor | None = None, batch: int | None = None) -> Corrector:
        """Make the corrector for ``route`` (not attached). ``readout``: a prompt-conditioned
        detector's read-out bound to each batch row (``[batch, d_model]``), used by ``addition``;
        ``batch``: the rows of the batch (``avoid_token`` keeps one vector per row)."""
        spec = route.corrector
        if spec == "avoid_token":
            if batch is None:
                raise PolicyError("the 'avoid_token' corrector needs the batch size (Router.build(..., batch=B))")
            return TokenAvoidance(model, batch, alpha=route.dose, hook=route.hook, positions=route.positions, state=state)
        if spec == "sae":
            sae = self._saes.get(route.hook)
            if sae is None:
                raise PolicyError(f"no SAE registered for {route.hook}")
            return SAEClamp(route.hook, sae, route.features or (0,), values=0.0, alpha=route.dose, positions=route.positions, state=state)
        if spec.startswith("vector:"):
            sv = self._vector(spec)
            return ActivationAddition(sv.hook, sv.vector, alpha=-route.dose, positions=route.positions, state=state)
        factory = self._factories.get(spec)
        if factory is None:
            raise PolicyError(f"unknown corrector {spec!r}")
        if factory is _addition:
            return _addition(detector, route.dose, model, state, route.positions, readout)
        if factory is _ablation:
            return _ablation(detector, route.dose, model, state, route.positions)
        return factory(detector, route.dose, model, state)  # a registered factory chooses its own positions

    def _vector(self, spec: str) -> SteeringVector:
        path = spec.split(":", 1)[1]
        if path not in self._vectors:
            self._vectors[path] = SteeringVector.load(path)
        return self._vectors[path]
