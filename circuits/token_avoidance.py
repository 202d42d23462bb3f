"""Steering one position away from a token it chose, toward the runner-up (a Guard's ``rewind``).

When a Guard takes back a flagged token, it re-runs the step that chose it. :class:`TokenAvoidance`
adds, at that one position and at a late hook, ``-alpha * unit(g * (W_U[taken] - W_U[runner_up]))``:
the residual-stream direction along which the taken token's logit rises against the runner-up's
(``W_U`` the unembedding, ``g`` the final norm's gain when the model has one), read through the
logit lens. It is activation steering, not a logit mask: at a small dose the model may still say
the same token, and what it says instead is whatever its own logits then prefer (the runner-up,
for every dose we measured; see the README's sycophancy-correction figures).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from circuits.errors import InputError
from circuits.generation_state import GenerationState, Positions
from circuits.hooked_model import HookedModel
from circuits.steering import ActivationAddition


def unembedding(model: HookedModel) -> tuple[Tensor, Tensor | None]:
    """``(W_U [vocab, d_model], gain [d_model] | None)`` of an HF-backed model, as float32 on the CPU."""
    hf = getattr(model, "hf_model", None)
    get = getattr(hf, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if head is None or getattr(head, "weight", None) is None:
        raise InputError(f"{type(model).__name__}: token avoidance needs an HF model with an output embedding")
    norm = getattr(getattr(hf, "model", None), "norm", None)
    gain = getattr(norm, "weight", None)
    g = gain.detach().float().cpu() if isinstance(gain, Tensor) and gain.shape == (model.d_model,) else None
    return head.weight.detach().float().cpu(), g


def last_block_hook(model: HookedModel) -> str:
    return f"blocks.{model.n_layers - 1}.hook_resid_post"


class TokenAvoidance(ActivationAddition):
    """Per-row "say something else here": rows start off, :meth:`avoid` arms one.

    Args:
        model: the HF-backed hooked model (its unembedding and final-norm gain are read once).
        batch: batch rows.
        alpha: dose (residual-stream units at ``hook``).
        hook: default the last block's ``hook_resid_post``.
        positions, state: as for :class:`~circuits.steering.ActivationAddition`.

    Example:
        >>> c = TokenAvoidance(model, batch=2, alpha=8.0)
        >>> c.avoid(0, token=said, instead=runner_up)      # row 0 only
        >>> with c.apply(model):
        ...     logits = model.hf_model(input_ids=ids).logits  # row 0's last position steered
    """

    kind = "avoid_token"

    def __init__(self, model: HookedModel, batch: int, alpha: float = 8.0, hook: str | None = None,
                 positions: Positions = "all", state: GenerationState | None = None) -> None:
        if batch < 1:
            raise InputError(f"TokenAvoidance: batch must be at least 1, got {batch}")
        self._W, self._gain = unembedding(model)
        super().__init__(hook or last_block_hook(model), torch.zeros(model.d_model), alpha, positions, state)
        self.vector = torch.zeros(batch, model.d_model)  # one row each, also for a batch of one
        self.rows_off(batch)
        self.avoided: dict[int, tuple[int, int]] = {}

    def direction(self, token: int, instead: int) -> Tensor:
        """Unit residual direction that raises ``token``'s logit against ``instead``'s."""
        V = self._W.shape[0]
        for name, t in (("token", token), ("instead", instead)):
            if not 0 <= int(t) < V:
                raise InputError(f"TokenAvoidance: {name} id {t} is outside the vocabulary (0..{V - 1})")
        if int(token) == int(instead):
            raise InputError(f"TokenAvoidance: token and instead are the same id {token}")
        v = self._W[int(token)] - self._W[int(instead)]
        if self._gain is not None:
            v = v * self._gain
        return v / v.norm().clamp(min=1e-12)

    def avoid(self, row: int, token: int, instead: int) -> None:
        """Arm ``row``: steer it away from ``token`` toward ``instead`` on the next forward passes."""
        self.vector[row] = -self.direction(token, instead)
        self._delta.clear()
        self.avoided[int(row)] = (int(token), int(instead))
        self.set_row(row, 1.0)

    def release(self, row: int) -> None:
        """Switch ``row`` off again (the re-chosen token is out)."""
        self.set_row(row, 0.0)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "avoided": {str(r): list(v) for r, v in self.avoided.items()}}
