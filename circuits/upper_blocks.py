"""Run only the blocks above a residual stream.

Interventions that leave blocks ``0 .. k-1`` untouched (noise added to block ``k-1``'s output, LoRA on blocks
``k ..``) need those lower blocks once per prompt, not once per noise draw or training step. :func:`upper_logits`
feeds a cached residual to blocks ``k ..`` by lending the decoder a shortened layer list for one call (the
original list is put back on exit, even on error) and passing the residual as ``inputs_embeds``.

That equals the full forward only for decoders that add nothing to ``inputs_embeds`` (Llama, Mistral, Qwen:
rotary positions and no embedding scale; not GPT-2's learned positions or Gemma's ``sqrt(d)`` scale), so
:func:`split_matches` checks it on a real batch and :func:`upper_logits` otherwise runs the whole model with
block ``k-1``'s output replaced: always correct, only slower.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from circuits.hook_points import HookPoint, HookPointMap, _get, attach

_OWNERS = ("model", "model.language_model")  # modules whose forward loops over ``self.layers``


def _decoder(hf: nn.Module) -> nn.Module | None:
    for path in _OWNERS:
        obj = _get(hf, path)
        if obj is not None and isinstance(getattr(obj, "layers", None), nn.ModuleList) and hasattr(obj, "rotary_emb"):
            return obj
    return None


@contextmanager
def blocks_from(hf: nn.Module, start: int) -> Iterator[None]:
    """Within the block, ``hf``'s decoder runs blocks ``start ..`` only (ValueError if it has no rotary decoder)."""
    dec = _decoder(hf)
    if dec is None:
        raise ValueError(f"{type(hf).__name__} has no rotary decoder with a layer list to shorten")
    full = dec.layers
    dec.layers = nn.ModuleList(list(full)[start:])
    try:
        yield
    finally:
        dec.layers = full


def _last(out: Any) -> torch.Tensor:
    return out.logits[:, -1, :].float()


def upper_logits(hf: nn.Module, start: int, resid: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor,
                 pos: torch.Tensor, split: bool, forward: Any = None) -> torch.Tensor:
    """Last-position logits ``[batch, vocab]`` of ``hf`` when block ``start - 1`` (the embedding for 0) outputs ``resid``.

    ``split`` (see :func:`split_matches`) runs blocks ``start ..`` alone; otherwise the whole model runs on
    ``ids`` with that block's output replaced. ``forward`` is the callable to run (a peft wrapper of ``hf``,
    whose modules ``hf`` shares); ``hf`` by default.
    """
    forward = hf if forward is None else forward
    kw = dict(attention_mask=mask, position_ids=pos, use_cache=False, logits_to_keep=1)
    if split:
        with blocks_from(hf, start):
            return _last(forward(inputs_embeds=resid.to(_dtype(hf)), **kw))
    points = HookPointMap(hf)
    point = HookPoint("replace", points.embed if start == 0 else points.layers[start - 1], "post", start - 1)
    handle = attach(point, lambda act, _hp: resid.to(act.dtype))
    try:
        return _last(forward(input_ids=ids, **kw))
    finally:
        handle.remove()


def _dtype(hf: nn.Module) -> torch.dtype:
    return next(hf.parameters()).dtype


@torch.inference_mode()
def split_matches(hf: nn.Module, start: int, resid: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor,
                  pos: torch.Tensor, full: torch.Tensor, atol: float = 1e-3) -> bool:
    """Whether running blocks ``start ..`` on ``resid`` reproduces ``full`` (the whole model's logits on ``ids``)."""
    if _decoder(hf) is None:
        return False
    got = upper_logits(hf, start, resid, ids, mask, pos, split=True)
    return bool(torch.allclose(got, full, rtol=0.0, atol=atol * (1.0 + float(full.abs().max()))))
