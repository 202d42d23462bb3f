"""An nnsight ``LanguageModel`` as a coalign model, and linear read-outs computed inside its trace.

``load_model(lm)`` with an nnsight ``LanguageModel`` hooks the ``transformers`` module nnsight
wraps (``lm._module``) exactly as :class:`~circuits.hooked_model.HFHookedModel` hooks a plain one:
the same weights give the same fingerprint and the same activations, so every detector, the
Guard and the correctors work on it unchanged.

:func:`readout_in_trace` is the nnsight-native path: the read-out ``sum_k select(act_k) @ w_k + b``
is computed inside ``lm.trace(...)``, and only the per-item scores are saved, so for a remote
model (``remote=True``, NDIF) only scores leave the server. The remote path needs a network and an
NDIF account and is not exercised by the tests here; the local trace is.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from circuits.capture import POSITION_SELECTIONS, _positions, _span_mask, select_tokens
from circuits.errors import InputError, UnsupportedModelError
from circuits.hooked_model import HFHookedModel
from circuits.inputs import Item, batches, encode, pad_id

TRACE_SELECTIONS = (*POSITION_SELECTIONS, "response_mean", "response_max", "all_mean")
# A trace's body must read modules in the order the forward runs them.
_IN_BLOCK_ORDER = ("hook_resid_pre", "ln1.hook_normalized", "attn.hook_z", "hook_attn_out", "hook_resid_mid",
                   "ln2.hook_normalized", "hook_mlp_out", "hook_resid_post")


def forward_order(model: HFHookedModel, hook: str) -> tuple[int, int]:
    suffix = hook.split(".", 2)[2] if hook.startswith("blocks.") else ""
    return model.layer_of(hook), _IN_BLOCK_ORDER.index(suffix) if suffix in _IN_BLOCK_ORDER else 0


class NNsightHookedModel(HFHookedModel):
    """The ``transformers`` model inside an nnsight ``LanguageModel``, addressed by hook names.

    Args:
        lm: an ``nnsight.LanguageModel`` (its module is hooked, never modified).
        model_id: name stored in artifacts; defaults to the HF config's ``_name_or_path``.

    Example:
        >>> from nnsight import LanguageModel
        >>> model = load_model(LanguageModel(hf, tokenizer=tok))
    """

    def __init__(self, lm: Any, model_id: str | None = None) -> None:
        hf = getattr(lm, "_module", None)
        if not isinstance(hf, torch.nn.Module) or getattr(lm, "tokenizer", None) is None:
            raise UnsupportedModelError(
                f"cannot use {type(lm).__name__} as an nnsight LanguageModel: it has no loaded module and tokenizer "
                "(build it with dispatch=True or from an already-loaded transformers model)"
            )
        name = model_id or str(getattr(getattr(hf, "config", None), "_name_or_path", "") or "nnsight-model")
        super().__init__(hf, lm.tokenizer, name)
        self.nnsight = lm
        self._paths = {id(m): p for p, m in hf.named_modules()}

    def envoy(self, hook: str) -> tuple[Any, str]:
        """The nnsight Envoy of the module behind ``hook``, and whether the hook reads its input or output."""
        hp = self.hook_point(hook)
        path = self._paths.get(id(hp.module))
        if path is None:
            raise UnsupportedModelError(f"hook {hook!r}: its module is not inside the nnsight model")
        e = self.nnsight
        for part in path.split(".") if path else []:
            e = e[int(part)] if part.isdigit() else getattr(e, part)
        return e, hp.site


def readout_in_trace(
    model: NNsightHookedModel,
    items: Sequence[Item],
    weights: Mapping[str, torch.Tensor],
    bias: float = 0.0,
    select: str = "response_mean",
    batch_size: int = 16,
    **trace_kwargs: Any,
) -> np.ndarray:
    """Per-item linear read-out ``sum_h select(act_h) @ weights[h] + bias`` computed inside an nnsight trace.

    Only the scores are saved out of the trace (float64 arithmetic, like ``Detector.score_arrays``).
    ``trace_kwargs`` go to ``lm.trace`` (e.g. ``remote=True``).

    Example:
        >>> scores = readout_in_trace(model, items, dict(zip(det.hooks, det.weight)), det.bias, det.select)
    """
    if not isinstance(model, NNsightHookedModel):
        raise InputError(f"readout_in_trace needs a model loaded from an nnsight LanguageModel, got {type(model).__name__}")
    if select not in TRACE_SELECTIONS:
        raise InputError(f"readout_in_trace: token selection {select!r} is not one of {', '.join(TRACE_SELECTIONS)}")
    if not items:
        raise InputError("readout_in_trace: no items given")
    sites = {h: model.envoy(h) for h in sorted(weights, key=lambda h: forward_order(model, h))}
    w64 = {h: torch.as_tensor(w).double().reshape(-1) for h, w in weights.items()}
    encoded = encode(model.tokenizer, items, model.n_ctx)
    out = np.empty(len(encoded), dtype=np.float64)
    for idx, ids, mask in batches(encoded, batch_size, pad_id(model.tokenizer), side="right"):
        pos = (mask.cumsum(-1) - 1).clamp(min=0)  # as HFHookedModel.forward: same activations
        where = _positions(encoded, idx, select) if select in POSITION_SELECTIONS else None
        span = None if where is not None else _span_mask(encoded, idx, ids.shape[1], select)
        with torch.no_grad(), model.nnsight.trace({"input_ids": ids, "attention_mask": mask}, position_ids=pos,
                                                   **trace_kwargs):
            total = None
            for h, (env, site) in sites.items():
                act = env.input if site == "pre" else env.output
                act = act[0] if isinstance(act, tuple) else act
                rows = select_tokens(act, select, None if where is None else where.to(act.device),
                                     None if span is None else span.to(act.device))
                part = rows.double() @ w64[h].to(act.device)
                total = part.cpu() if total is None else total + part.cpu()
            scores = total.save()
        out[idx] = scores.numpy() + float(bias)
    return out
