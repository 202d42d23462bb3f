"""Correctors: interventions on the activations at one hook name, attached only for as long as asked.

Edits of the activation ``x`` at a TransformerLens hook name:

* :class:`ActivationAddition`: ``x + alpha * v`` (a CAA steering vector, or ``-direction`` of a detector);
* :class:`DirectionalAblation`: ``x - alpha * (x . d) d`` with ``d`` a unit vector (``alpha=1`` removes the
  component along ``d`` entirely);
* the SAE clamps of :mod:`circuits.sae_clamp`: ``x + alpha * (decode(f') - decode(f))`` with ``f = encode(x)``
  and ``f'`` the same features with some clamped (the SAE's reconstruction error is kept).

Every corrector is used either as a context manager or through a handle::

    with ActivationAddition("blocks.12.hook_resid_post", v, alpha=4.0).apply(model):
        logits = model.forward(ids, mask)

    handle = DirectionalAblation("blocks.12.hook_resid_post", d).attach(model)
    ...
    handle.remove()                      # always; also on error (``with handle:`` works too)

The model is never modified: the edit happens in a forward hook that is removed on exit.

**Positions.** ``positions="all"`` edits every token; ``"generated"`` only tokens at row positions
``>= prompt length`` (during KV-cache decoding that is every decode step, and no prompt token);
``"response"`` those and the last prompt token, i.e. every position whose output is a generated
token (with ``"generated"`` the first generated token is still chosen unsteered); an ``int`` ``k``
edits row positions ``>= k``. Row positions count the row's own tokens (left
padding excluded). Where the current forward sits is held in a :class:`GenerationState`: the
Guard updates one it shares with its correctors; a corrector used on its own keeps a private one
that a pre-forward hook fills in from the model's inputs (``input_ids``, ``attention_mask``,
``position_ids``, the KV-cache length), so ``with corrector.apply(model): hf_model.generate(...)``
works unchanged.

**Dose and rows at run time.** ``corrector.set_dose(alpha)``, ``corrector.enabled = False`` and
``corrector.set_rows(...)`` (a per-batch-row multiplier, 0 = off) take effect on the next forward
without re-attaching: this is what conditional steering uses (switch a row on when it is
flagged). With ``set_rows(None)`` (the default) every row gets the full dose.

Exact arithmetic: with rows and positions in scope the addition computes ``x + (alpha * v)``
exactly as written (a multiplier of 1.0 is exact), out-of-scope tokens are returned unchanged.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from circuits.errors import InputError
from circuits.generation_state import GenerationState, Positions, check_positions
from circuits.hooked_model import HookedModel, HookHandle

__all__ = [
    "ActivationAddition",
    "Corrector",
    "CorrectorHandle",
    "DirectionalAblation",
    "GenerationState",
    "Positions",
    "apply_all",
    "logits_with",
    "response_logprobs",
]



# --------------------------------------------------------------------------------------------
# correctors
# --------------------------------------------------------------------------------------------
def _check_alpha(alpha: float, hook: str) -> float:
    """A non-finite dose turns every edited activation into NaN (and every later token into id 0)."""
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise InputError(f"corrector at {hook}: dose must be a number, got {alpha!r}") from None
    if not np.isfinite(a):
        raise InputError(f"corrector at {hook}: dose must be finite, got {alpha!r}")
    return a


class CorrectorHandle:
    """Detaches a corrector (its hook and, if it made one, its position tracker). Idempotent."""

    def __init__(self, corrector: "Corrector", handles: list[HookHandle]) -> None:
        self._corrector = corrector
        self._handles = handles

    def remove(self) -> None:
        try:
            while self._handles:
                self._handles.pop().remove()
        finally:
            self._corrector._attached = False
            self._corrector._live_state = None

    @property
    def active(self) -> bool:
        return bool(self._handles)

    def __enter__(self) -> "CorrectorHandle":
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


class Corrector(ABC):
    """Base class: an edit of the activation at ``hook``, scaled by a dose ``alpha``.

    Args:
        hook: TransformerLens hook name, e.g. ``"blocks.12.hook_resid_post"``.
        alpha: the dose.
        positions: ``"all"``, ``"generated"``, ``"response"`` or an int start position (see module docstring).
        state: a shared :class:`GenerationState`; without one a private, self-tracking state is
            made when needed.
    """

    kind: str = "corrector"

    def __init__(self, hook: str, alpha: float = 1.0, positions: Positions = "all", state: GenerationState | None = None) -> None:
        self.hook = hook
        self.positions = check_positions(positions)
        self.state = state
        self._alpha = _check_alpha(alpha, hook)
        self._enabled = True
        self._rows: Tensor | None = None
        self._rows_cast: dict[tuple[torch.device, torch.dtype], Tensor] = {}
        self._live = self._alpha != 0.0
        self._attached = False
        self._live_state: GenerationState | None = None

    # -- run-time controls ---------------------------------------------------------------------
    @property
    def alpha(self) -> float:
        return self._alpha

    def set_dose(self, alpha: float) -> None:
        """Change the dose; takes effect on the next forward."""
        self._alpha = _check_alpha(alpha, self.hook)
        self._refresh()

    @property
    def enabled(self) -> bool:
        return self._enabled

    @enabled.setter
    def enabled(self, on: bool) -> None:
        self._enabled = bool(on)
        self._refresh()

    @property
    def rows(self) -> Tensor | None:
        """Per-row multipliers ``[batch]`` (None = every row at full dose)."""
        return self._rows

    def set_rows(self, rows: Tensor | Sequence[float] | Sequence[bool] | None) -> None:
        """Per-batch-row multiplier of the dose (bool mask or floats; 0 = off); None = all rows on."""
        if rows is None:
            self._rows = None
        else:
            r = torch.as_tensor(rows).detach().to("cpu", torch.float32).reshape(-1).clone()
            self._rows = r
        self._rows_cast.clear()
        self._refresh()

    def rows_off(self, batch: int) -> None:
        """Every row off (conditional steering: rows are switched on with :meth:`set_row`)."""
        self.set_rows(torch.zeros(batch))

    def set_row(self, row: int, scale: float = 1.0) -> None:
        """Set one row's multiplier (call :meth:`set_rows` or :meth:`rows_off` first)."""
        if self._rows is None:
            raise InputError("set_row needs per-row multipliers; call rows_off(batch) or set_rows(...) first")
        self._rows[row] = float(scale)
        self._rows_cast.clear()
        self._refresh()

    def _refresh(self) -> None:
        self._live = self._enabled and self._alpha != 0.0 and (self._rows is None or bool(self._rows.any()))

    # -- attaching -----------------------------------------------------------------------------
    def check(self, model: HookedModel) -> None:
        """Raise if this corrector cannot run on ``model`` (hook name, width)."""
        model.check_hook(self.hook)

    def attach(self, model: HookedModel, state: GenerationState | None = None) -> CorrectorHandle:
        """Attach to ``model``; the returned handle's ``.remove()`` detaches everything.

        ``state`` overrides the corrector's own state for this attachment (the caller then keeps
        it up to date). Without any state, a position-restricted corrector tracks positions itself.
        """
        if self._attached:
            raise InputError(f"this {type(self).__name__} is already attached; remove its handle first")
        self.check(model)
        st = state if state is not None else self.state
        handles: list[HookHandle] = []
        try:
            if st is None and self.positions != "all":
                st = GenerationState()
                handles.append(st.track(model))
            handles.append(model.add_hooks([(self.hook, self._hook)]))
        except BaseException:
            for h in reversed(handles):
                h.remove()
            raise
        self._live_state = st
        self._attached = True
        return CorrectorHandle(self, handles)

    @contextlib.contextmanager
    def apply(self, model: HookedModel, state: GenerationState | None = None) -> Iterator["Corrector"]:
        """Context manager: attached inside the block, removed on exit (also on error)."""
        handle = self.attach(model, state)
        try:
            yield self
        finally:
            handle.remove()

    # -- the hook --------------------------------------------------------------------------------
    def _hook(self, act: Tensor, _hp: Any) -> Tensor | None:
        if not self._live:
            return None
        scale = self._scale(act)
        if scale is False:
            return None
        return self._edit(act, scale)  # type: ignore[arg-type]

    def _scale(self, act: Tensor) -> Tensor | None | bool:
        """None (everything in scope at multiplier 1), False (nothing), or a ``[batch, seq|1, 1]`` multiplier."""
        m: Tensor | None = None
        if self._rows is not None:
            key = (act.device, act.dtype)
            rows = self._rows_cast.get(key)
            if rows is None:
                rows = self._rows_cast[key] = self._rows.to(device=act.device, dtype=act.dtype)
            if rows.shape[0] != act.shape[0]:
                raise InputError(
                    f"{type(self).__name__} at {self.hook}: per-row multipliers are set for {rows.shape[0]} rows "
                    f"but the batch has {act.shape[0]}"
                )
            m = rows.view(-1, 1, 1)
        if self.positions != "all":
            st = self._live_state if self._live_state is not None else self.state
            if st is None:
                raise InputError(f"{type(self).__name__} with positions={self.positions!r} has no GenerationState")
            scope = st.in_scope(self.positions)
            if scope is False:
                return False
            if scope is not True:
                if scope.shape[-1] != act.shape[1]:
                    raise InputError(
                        f"{type(self).__name__} at {self.hook}: the GenerationState describes {scope.shape[-1]} "
                        f"tokens but the activation has {act.shape[1]}; is the state driven for this model?"
                    )
                pm = scope.unsqueeze(-1).to(act.dtype)
                m = pm if m is None else m * pm
        return m

    @abstractmethod
    def _edit(self, act: Tensor, scale: Tensor | None) -> Tensor:
        """Return the edited activation; ``scale`` multiplies the edit per row/token (None = 1)."""

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary for audit logs."""
        return {"kind": self.kind, "hook": self.hook, "alpha": self._alpha, "positions": self.positions}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.hook!r}, alpha={self._alpha}, positions={self.positions!r})"


def _vector(v: Tensor | np.ndarray | Sequence[float], what: str, rows: bool = False) -> Tensor:
    t = torch.as_tensor(np.asarray(v) if not isinstance(v, Tensor) else v).detach().to("cpu", torch.float32)
    if t.ndim == 2 and t.shape[0] == 1:
        t = t[0]
    if t.numel() == 0 or not (t.ndim == 1 or (rows and t.ndim == 2)):
        shape = "[d_model] or [batch, d_model]" if rows else "a 1-D vector [d_model]"
        raise InputError(f"{what} must be {shape}, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise InputError(f"{what} contains NaN or inf")
    return t


def _check_width(model: HookedModel, hook: str, d: int, what: str) -> None:
    model.check_hook(hook)  # every coalign hook name carries d_model-wide activations
    if d != model.d_model:
        raise InputError(f"{what} has {d} dimensions but {model.model_id} has d_model={model.d_model} at {hook}")


class ActivationAddition(Corrector):
    """Add ``alpha * vector`` to the activation at ``hook`` (activation addition / CAA steering).

    Args:
        hook: hook name.
        vector: ``[d_model]`` steering vector (e.g. a CAA mean difference, or ``-detector.direction``),
            or ``[batch, d_model]``: one vector per batch row (a prompt-conditioned direction, e.g. a
            conditional detector's read-out bound to each prompt).
        alpha: dose (multiplies the vector as given; no normalisation).
        positions: ``"all"``, ``"generated"``, ``"response"`` or an int start position.
        state: optional shared :class:`GenerationState`.

    Example:
        >>> steer = ActivationAddition("blocks.12.hook_resid_post", -det.direction, alpha=8.0, positions="generated")
        >>> with steer.apply(model):
        ...     model.hf_model.generate(**inputs, max_new_tokens=32)
    """

    kind = "addition"

    def __init__(self, hook: str, vector: Tensor | np.ndarray, alpha: float = 1.0, positions: Positions = "all", state: GenerationState | None = None) -> None:
        super().__init__(hook, alpha, positions, state)
        self.vector = _vector(vector, "steering vector", rows=True)
        self._delta: dict[tuple[torch.device, torch.dtype, float], Tensor] = {}

    def check(self, model: HookedModel) -> None:
        _check_width(model, self.hook, self.vector.shape[-1], "steering vector")

    def _delta_for(self, act: Tensor) -> Tensor:
        key = (act.device, act.dtype, self._alpha)
        d = self._delta.get(key)
        if d is None:
            if len(self._delta) > 8:
                self._delta.clear()
            d = self._delta[key] = (self._alpha * self.vector).to(device=act.device, dtype=act.dtype)
            if d.ndim == 2:
                d = self._delta[key] = d.unsqueeze(1)  # [batch, 1, d]: the same row vector at every position
        if d.ndim == 3 and d.shape[0] != act.shape[0]:
            raise InputError(
                f"ActivationAddition at {self.hook}: {d.shape[0]} per-row steering vectors but the batch has {act.shape[0]} rows"
            )
        return d

    def _edit(self, act: Tensor, scale: Tensor | None) -> Tensor:
        delta = self._delta_for(act)
        return act + delta if scale is None else act + scale * delta

    def describe(self) -> dict[str, Any]:
        norms = self.vector.norm(dim=-1)
        return {**super().describe(), "vector_norm": float(norms.mean())} | ({"per_row": int(norms.numel())} if self.vector.ndim == 2 else {})


class DirectionalAblation(Corrector):
    """Project a direction out of the activation: ``x - alpha * (x . d) d`` with ``d`` unit-normalised.

    ``alpha=1`` (the default) leaves a zero component along ``d``; ``0 < alpha < 1`` removes part.
    """

    kind = "ablation"

    def __init__(self, hook: str, direction: Tensor | np.ndarray, alpha: float = 1.0, positions: Positions = "all", state: GenerationState | None = None) -> None:
        super().__init__(hook, alpha, positions, state)
        d = _vector(direction, "ablation direction")
        n = d.norm()
        if float(n) < 1e-12:
            raise InputError("ablation direction has zero norm")
        self.direction = d / n
        self._dcast: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    def check(self, model: HookedModel) -> None:
        _check_width(model, self.hook, self.direction.numel(), "ablation direction")

    def _edit(self, act: Tensor, scale: Tensor | None) -> Tensor:
        key = (act.device, act.dtype)
        d = self._dcast.get(key)
        if d is None:
            d = self._dcast[key] = self.direction.to(device=act.device, dtype=act.dtype)
        proj = (act @ d).unsqueeze(-1)
        if self._alpha != 1.0:
            proj = proj * self._alpha
        if scale is not None:
            proj = proj * scale
        return act - proj * d


# re-exported: they lived here before the split (steered_forward does not import this module)
from circuits.steered_forward import apply_all, logits_with, response_logprobs  # noqa: E402
