"""Weights and devices of a model that may be split over devices and disk (accelerate device maps).

Accelerate replaces ``forward`` on each dispatched module and keeps offloaded weights on the ``meta``
device between calls, reading them from an offload store when the module runs. The fingerprint reads
them from that store, so a split model hashes like the same model in one piece; input ids go to the
embedding's execution device; everything else follows each activation's own device.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

from circuits.errors import UnsupportedModelError


def weight_fingerprint(module: nn.Module | dict[str, torch.Tensor]) -> str:
    """A short hash of a model's weights (names, shapes and a sample of values from each tensor).

    Cheap enough to compute at load time, and different for any two checkpoints a user would
    confuse (another model, another fine-tune, another quantisation). Takes a module or its
    state dict. Weights that accelerate offloaded (``meta`` between calls) are read from their
    offload store, so a model split over devices and disk hashes like the same model in one piece.
    """
    h = hashlib.sha256()
    state = module if isinstance(module, dict) else materialised_state(module)
    for name, p in sorted(state.items()):
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        flat = p.detach().reshape(-1)
        step = max(1, flat.numel() // 4096)
        h.update(flat[::step][:4096].to(torch.float32).cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _offload_maps(hook: Any) -> list[Any]:
    """The weight stores of accelerate hooks on a module (a SequentialHook nests several)."""
    found = [getattr(hook, "weights_map", None)] if getattr(hook, "offload", False) else []
    for sub in getattr(hook, "hooks", ()) or ():
        found += _offload_maps(sub)
    return [m for m in found if m is not None]


def materialised_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` with each offloaded (``meta``) tensor replaced by its stored value.

    Raises UnsupportedModelError naming the tensor if a ``meta`` tensor has no store (a model
    built on the meta device and never loaded has no weights to fingerprint).
    """
    state = module.state_dict()
    missing = [k for k, v in state.items() if v.device.type == "meta"]
    if not missing:
        return state
    for prefix, sub in module.named_modules():
        maps = _offload_maps(getattr(sub, "_hf_hook", None))
        if not maps:
            continue
        for local, _ in [*sub.named_parameters(recurse=False), *sub.named_buffers(recurse=False)]:
            full = f"{prefix}.{local}" if prefix else local
            if full in state and state[full].device.type == "meta":
                for store in maps:
                    try:
                        state[full] = store[local]
                        break
                    except KeyError:
                        continue
    still = [k for k in missing if state[k].device.type == "meta"]
    if still:
        raise UnsupportedModelError(
            f"cannot fingerprint {type(module).__name__}: tensor {still[0]!r} is on the meta device with no "
            "offload store (load the model's weights, e.g. with circuits.load_model(..., device_map=...))"
        )
    return state


def input_device(hf: nn.Module, embed: nn.Module | None) -> torch.device:
    """The device input ids must be on: the embedding's (accelerate's execution device when its
    weights are offloaded), else the first parameter's."""
    if embed is not None:
        hook = getattr(embed, "_hf_hook", None)
        dev = getattr(hook, "execution_device", None)
        if dev is not None:
            return torch.device(dev if not isinstance(dev, int) else f"cuda:{dev}")
        for p in embed.parameters():
            if p.device.type != "meta":
                return p.device
    for p in hf.parameters():
        if p.device.type != "meta":
            return p.device
    return torch.device("cpu")
