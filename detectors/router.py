"""The router: from a flag (a detector, and once SAEs exist its flagged features) to a corrector and dose.

Corrector specs (the policy's ``corrector`` key), all registered with :func:`register_corrector`:

================  ==================================================================================
``addition``      add ``-dose * detector.direction`` at the detector's first hook (steer away); for a
                  prompt-conditioned detector (``readout``), each row's own bound read-out direction
``ablation``      project ``detector.direction`` out at that hook (``dose`` = fraction removed, so a
                  dose above 1 is clipped to 1)
``vector:PATH``   add ``-dose * v`` of a saved CAA steering vector (``coalign steer``), at its hook
``sae``           clamp the detector's linked SAE features (``coalign sae link``; :meth:`Router.load_link`)
                  to 0 where they are active, error-preserving (:class:`~circuits.sae_clamp.FeatureClamp`)
``avoid_token``   with ``timing = "rewind"``: at the re-chosen position only, steer the last block's
                  residual stream away from the token taken back, toward the runner-up under that
                  step's logits (:class:`~circuits.token_avoidance.TokenAvoidance`; ``dose`` in
                  residual units): for a detector that judges a token after it is said, e.g. an A/B
                  letter read with its question
any other name    a factory registered with :func:`register_corrector` (every Router) or
                  :meth:`Router.register_corrector` (one Router)
================  ==================================================================================

Correctors built by the router edit only the positions whose outputs are generated tokens
(``positions="response"``: the last prompt token and every generated one, so a correction forced
from the start also steers the first new token), or every position with the policy's
``positions = "all"``; they start with every batch row off; the Guard
switches a row on when it is flagged (conditional steering). If the flag does not clear
within ``patience`` tokens of correcting, the Guard moves up a tier (``Resolved.next_tier``).

**Linked SAE features.** A detector linked to SAE features (``router.load_link(det, det_dir, model)`` reads
the ``sae_link.json`` that ``coalign sae link`` stores, or ``router.link(name, features, sae)``) is routed to
the ``sae`` clamp whenever one of its stored features is active at the flagged position; when none is, the
clamp could not change anything, so the flag goes to the policy's own corrector instead, or, if that is
``sae`` too, to the policy's next tier (``Router.route`` returns None and the Guard moves up).

**How to add a corrector.** Write ``factory(ctx: CorrectorContext) -> Corrector`` (a
:class:`~circuits.steering.Corrector`, not attached: the Guard attaches it for each step and
switches rows on and off) and register it once::

    from detectors.router import CorrectorContext, register_corrector

    def half_ablation(ctx: CorrectorContext):
        return DirectionalAblation(ctx.hook, ctx.detector.direction, alpha=0.5 * min(ctx.dose, 1.0),
                                   positions=ctx.positions, state=ctx.state)

    register_corrector("half_ablation", half_ablation)     # then: corrector = "half_ablation"

Optional: ``hook=fn(detector, model, arg, router) -> hook name`` if it edits elsewhere than the detector's
first hook, ``check=fn(detector, arg, router)`` raising :class:`PolicyError` when it cannot be built
(run when a policy is applied, before any generation), ``takes_arg=True`` for specs written
``name:ARG`` (as ``vector:PATH``). The built-ins below are registered exactly this way.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from circuits.hooked_model import HookedModel
from circuits.steering import (
    ActivationAddition,
    Corrector,
    DirectionalAblation,
    GenerationState,
)
from circuits.sae_clamp import FeatureClamp, SAEClamp, SparseAutoencoder
from circuits.steering_vectors import SteeringVector
from circuits.token_avoidance import TokenAvoidance, last_block_hook
from detectors.policy import PolicyError, Resolved

__all__ = ["CorrectorContext", "CorrectorFactory", "CorrectorKind", "Route", "Router", "register_corrector"]


@dataclass(frozen=True)
class CorrectorContext:
    """What a corrector factory is given.

    Attributes:
        detector: the flagged detector (``hooks``, ``direction``, ``name``, ...).
        dose: the policy's dose.
        model: the hooked model.
        hook: where the route says the corrector edits.
        positions: the policy's ``positions`` (``"response"`` or ``"all"``).
        state: the Guard's :class:`~circuits.steering.GenerationState` (pass it to the corrector).
        arg: the part after ``name:`` for a ``takes_arg`` corrector (e.g. the PATH of ``vector:PATH``).
        features: flagged SAE feature ids (the ``sae`` route).
        readout: a prompt-conditioned detector's read-out bound to each row, ``[batch, d_model]``.
        batch: rows in the batch.
        router: the :class:`Router` building it (its SAEs and steering vectors).
    """

    detector: Any
    dose: float
    model: HookedModel
    hook: str
    positions: str
    state: GenerationState
    arg: str | None = None
    features: tuple[int, ...] = ()
    readout: Tensor | None = None
    batch: int | None = None
    router: Router | None = None


CorrectorFactory = Callable[[CorrectorContext], Corrector]
"""``factory(ctx) -> Corrector`` (not attached)."""


@dataclass(frozen=True)
class CorrectorKind:
    """A registered corrector: its factory, and optionally where it edits and how it is checked."""

    name: str
    factory: CorrectorFactory
    hook: Callable[[Any, HookedModel | None, str | None, Router], str] | None = None
    check: Callable[[Any, str | None, Router], None] | None = None
    takes_arg: bool = False


_REGISTRY: dict[str, CorrectorKind] = {}


def register_corrector(name: str, factory: CorrectorFactory, *, hook: Any = None, check: Any = None,
                       takes_arg: bool = False, registry: dict[str, CorrectorKind] | None = None) -> CorrectorKind:
    """Register a corrector kind usable as ``corrector = "<name>"`` (``"<name>:ARG"`` with
    ``takes_arg``) in every policy. Registering a name twice replaces the first one."""
    if not isinstance(name, str) or not name or ":" in name or name != name.strip():
        raise PolicyError(f"corrector name {name!r} must be a non-empty string without ':' or spaces")
    if not callable(factory):
        raise PolicyError(f"corrector {name!r}: factory must be callable (ctx) -> Corrector")
    kind = CorrectorKind(name, factory, hook, check, takes_arg)
    (_REGISTRY if registry is None else registry)[name] = kind
    return kind


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


# --------------------------------------------------------------------------------------------
# the built-ins, registered like any other
# --------------------------------------------------------------------------------------------
def _addition(ctx: CorrectorContext) -> Corrector:
    if ctx.readout is None:
        return ActivationAddition(ctx.hook, -ctx.detector.direction, alpha=ctx.dose, positions=ctx.positions, state=ctx.state)
    # a conditional detector's direction depends on the prompt: steer each row away from its own
    w = ctx.readout.detach().float().cpu()
    return ActivationAddition(ctx.hook, -w / w.norm(dim=-1, keepdim=True).clamp(min=1e-12), alpha=ctx.dose,
                              positions=ctx.positions, state=ctx.state)


def _ablation(ctx: CorrectorContext) -> Corrector:
    return DirectionalAblation(ctx.hook, ctx.detector.direction, alpha=min(float(ctx.dose), 1.0), positions=ctx.positions, state=ctx.state)


def _avoid_token(ctx: CorrectorContext) -> Corrector:
    if ctx.batch is None:
        raise PolicyError("the 'avoid_token' corrector needs the batch size (Router.build(..., batch=B))")
    return TokenAvoidance(ctx.model, ctx.batch, alpha=ctx.dose, hook=ctx.hook, positions=ctx.positions, state=ctx.state)


def _avoid_token_hook(detector: Any, model: HookedModel | None, arg: str | None, router: Router) -> str:
    if model is None:
        raise PolicyError("the 'avoid_token' route needs the model (Router.route(..., model=model))")
    return last_block_hook(model)


def _sae(ctx: CorrectorContext) -> Corrector:
    assert ctx.router is not None
    sae = ctx.router.sae_for(ctx.hook)
    if sae is None:
        raise PolicyError(f"no SAE registered for {ctx.hook}")
    if not ctx.features:
        raise PolicyError(f"detector {ctx.detector.name!r}: the 'sae' corrector needs feature ids (link them with `coalign sae link`)")
    if getattr(sae, "W_dec", None) is None:  # a bare encode/decode SAE: the plain decode-difference clamp
        return SAEClamp(ctx.hook, sae, ctx.features, values=0.0, alpha=ctx.dose, positions=ctx.positions, state=ctx.state)
    return FeatureClamp(ctx.hook, sae, ctx.features, values=0.0, alpha=ctx.dose, positions=ctx.positions, state=ctx.state)


def _sae_check(detector: Any, arg: str | None, router: Router) -> None:
    if router.sae_for(detector.hooks[0]) is None:
        raise PolicyError(f"detector {detector.name!r} routes to 'sae' but no SAE is registered for {detector.hooks[0]}")
    if not router.linked(detector.name):
        raise PolicyError(f"detector {detector.name!r} routes to 'sae' but has no linked features "
                          "(run `coalign sae link DET SAE --out DIR` and load that directory, or Router.link)")


def _vector(ctx: CorrectorContext) -> Corrector:
    assert ctx.router is not None and ctx.arg is not None
    sv = ctx.router.vector(ctx.arg)
    return ActivationAddition(sv.hook, sv.vector, alpha=-ctx.dose, positions=ctx.positions, state=ctx.state)


def _vector_check(detector: Any, arg: str | None, router: Router) -> None:
    if not arg or not Path(arg).is_dir():
        raise PolicyError(f"detector {detector.name!r}: steering vector directory {arg!r} not found")


register_corrector("addition", _addition)
register_corrector("ablation", _ablation)
register_corrector("avoid_token", _avoid_token, hook=_avoid_token_hook)
register_corrector("sae", _sae, check=_sae_check)
register_corrector("vector", _vector, check=_vector_check, takes_arg=True,
                   hook=lambda det, model, arg, router: router.vector(arg).hook)


# --------------------------------------------------------------------------------------------
# the router
# --------------------------------------------------------------------------------------------
class Router:
    """Maps flags to correctors.

    Args:
        factories: extra correctors for this router only, ``name -> factory(ctx)``.

    Example:
        >>> router = Router()
        >>> router.register_corrector("my_vec", lambda ctx: sv.corrector(-ctx.dose, state=ctx.state))
        >>> guard = Guard(model, dets, policy.update("sycophancy", corrector="my_vec"), router=router)
    """

    BUILTIN = ("addition", "ablation", "sae", "avoid_token", "vector")

    def __init__(self, factories: Mapping[str, CorrectorFactory] | None = None) -> None:
        self._kinds: dict[str, CorrectorKind] = {}
        for name, f in (factories or {}).items():
            self.register_corrector(name, f)
        self._saes: dict[str, SparseAutoencoder] = {}
        self._links: dict[str, tuple[int, ...]] = {}
        self._vectors: dict[str, SteeringVector] = {}

    # -- registration ------------------------------------------------------------------------------
    def register_corrector(self, name: str, factory: CorrectorFactory, **options: Any) -> CorrectorKind:
        """:func:`register_corrector` for this router only (options as there)."""
        return register_corrector(name, factory, registry=self._kinds, **options)

    def register(self, name: str, factory: Callable[[Any, float, HookedModel, GenerationState], Corrector]) -> None:
        """Deprecated: a factory of the old signature ``factory(detector, dose, model, state)``
        (it chooses its own positions). Use :meth:`register_corrector` with ``factory(ctx)``."""
        if name in self.BUILTIN:
            raise PolicyError(f"corrector name {name!r} is reserved")
        warnings.warn("Router.register(name, factory(detector, dose, model, state)) is deprecated; use "
                      "register_corrector(name, factory(ctx))", DeprecationWarning, stacklevel=2)
        self.register_corrector(name, lambda ctx: factory(ctx.detector, ctx.dose, ctx.model, ctx.state))

    def register_sae(self, hook: str, sae: SparseAutoencoder) -> None:
        """Make ``sae`` (``encode``/``decode``) available for feature routes at ``hook``."""
        self._saes[hook] = sae

    def sae_for(self, hook: str) -> SparseAutoencoder | None:
        return self._saes.get(hook)

    def link(self, detector: str, features: Sequence[int], sae: Any = None) -> None:
        """Route flags of the detector named ``detector`` to clamping ``features`` (of ``sae``, registered
        at its hook, or of the SAE already registered at the detector's hook)."""
        feats = tuple(int(f) for f in features)
        if not feats:
            raise PolicyError(f"detector {detector!r}: a link needs at least one feature id")
        if sae is not None:
            d_sae = getattr(sae, "d_sae", None)
            bad = [f for f in feats if f < 0 or (d_sae is not None and f >= d_sae)]
            if bad:
                raise PolicyError(f"detector {detector!r}: feature ids {bad} out of range for an SAE with {d_sae} latents")
            self.register_sae(sae.hook, sae)
        self._links[detector] = feats

    def linked(self, detector: str) -> tuple[int, ...]:
        """The feature ids linked to the detector named ``detector`` (empty if none)."""
        return self._links.get(detector, ())

    def load_link(self, detector: Any, det_dir: str | Path, model: HookedModel | None = None) -> tuple[int, ...]:
        """Read the ``sae_link.json`` of ``det_dir`` (``coalign sae link``), load its SAE (refused if its weights
        are not the ones the features were chosen on) and link the features to ``detector``. Returns the
        feature ids (empty if the directory has no link)."""
        from circuits.sae import find_recorded_sae
        from detectors.sae_link import read_link

        link = read_link(det_dir)
        if link is None:
            return ()
        sae = find_recorded_sae(link["sae"], link.get("sae_name"), model)
        if link.get("sae_fingerprint") and sae.fingerprint != link["sae_fingerprint"]:
            raise PolicyError(f"{det_dir}: the link was chosen on SAE weights {link['sae_fingerprint']}, but {link['sae']} "
                              f"holds {sae.fingerprint}; re-run `coalign sae link`")
        if sae.hook not in detector.hooks:
            raise PolicyError(f"{det_dir}: the linked SAE reads {sae.hook}, detector {detector.name!r} reads {detector.hooks}")
        self.link(detector.name, link["features"], sae)
        return self.linked(detector.name)

    def features_active(self, hook: str, features: Sequence[int], act: Tensor) -> bool:
        """Whether any of ``features`` of the SAE at ``hook`` is active on the activation ``act`` (``[d_model]``)."""
        sae = self._saes[hook]
        f = sae.encode(act.reshape(1, -1).float())
        return bool((f[0, list(features)] > 0).any())

    def vector(self, path: str) -> SteeringVector:
        """The steering vector saved at ``path`` (loaded once per router)."""
        if path not in self._vectors:
            self._vectors[path] = SteeringVector.load(path)
        return self._vectors[path]

    # -- lookup ------------------------------------------------------------------------------------
    def kind(self, spec: str) -> tuple[CorrectorKind | None, str | None]:
        """The registered kind for ``spec`` and its argument (``vector:PATH`` -> ``vector``, PATH)."""
        name, sep, arg = spec.partition(":")
        k = self._kinds.get(name) or _REGISTRY.get(name)
        if k is None or bool(sep) != k.takes_arg:
            return None, None
        return k, (arg if sep else None)

    def names(self) -> list[str]:
        return sorted({*_REGISTRY, *self._kinds})

    def validate(self, spec: str, detector: Any, where: str = "policy") -> None:
        """Raise PolicyError if ``spec`` cannot be built for ``detector``."""
        k, arg = self.kind(spec)
        if k is None:
            shown = [f"{n}:ARG" if (self._kinds.get(n) or _REGISTRY[n]).takes_arg else n for n in self.names()]
            raise PolicyError(f"{where}: detector {detector.name!r}: unknown corrector {spec!r} (registered: {', '.join(shown)})")
        if k.check is not None:
            try:
                k.check(detector, arg, self)
            except PolicyError as e:
                raise PolicyError(f"{where}: {e}") from None

    def route(self, detector: Any, resolved: Resolved, features: Sequence[int] | None = None,
              model: HookedModel | None = None, act: Tensor | None = None) -> Route | None:
        """The route for a flag of ``detector``. ``features`` (or, by default, the detector's linked ones)
        select an SAE clamp when an SAE is registered for the detector's hook and, given the flagged
        position's activation ``act`` (``[d_model]``), one of them is active there. Otherwise the policy's
        corrector; None when that is ``sae`` itself and its features are silent (the caller moves up a
        tier). ``model`` places ``avoid_token``."""
        hook = detector.hooks[0]
        feats = tuple(int(f) for f in features) if features else self.linked(detector.name)
        if feats and hook in self._saes:
            if act is None or self.features_active(hook, feats, act):
                dose = resolved.dose if resolved.corrector == "sae" else 1.0
                return Route(detector.name, "sae", dose, hook, feats, resolved.positions)
            if resolved.corrector == "sae":
                return None
        spec = resolved.corrector
        k, arg = self.kind(spec)
        if k is not None and k.hook is not None:
            hook = k.hook(detector, model, arg, self)
        return Route(detector.name, spec, resolved.dose, hook, positions=resolved.positions)

    def build(self, route: Route, detector: Any, model: HookedModel, state: GenerationState,
              readout: Tensor | None = None, batch: int | None = None) -> Corrector:
        """Make the corrector for ``route`` (not attached). ``readout``: a prompt-conditioned
        detector's read-out bound to each batch row (``[batch, d_model]``); ``batch``: the rows."""
        k, arg = self.kind(route.corrector)
        if k is None:
            raise PolicyError(f"unknown corrector {route.corrector!r}")
        ctx = CorrectorContext(detector=detector, dose=route.dose, model=model, hook=route.hook, positions=route.positions,
                               state=state, arg=arg, features=route.features, readout=readout, batch=batch, router=self)
        return k.factory(ctx)
