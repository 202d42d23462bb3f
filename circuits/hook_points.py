"""TransformerLens hook names resolved onto the modules of a Hugging Face decoder.

Hook names are the addresses used across coalign (and stored in every artifact), so a detector
trained through this backend reads the same activation a TransformerLens user would get at that
name. Resolution is done with plain PyTorch hooks on the HF modules: the model is never wrapped
or rewritten, and there is no per-module Python overhead when no hook is attached (this is what
keeps the Guard's per-token cost invisible).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import nn

from circuits.errors import HookNameError

# (kind of torch hook, module path relative to the decoder layer or the model)
Site = Literal["pre", "post"]

_BLOCK_HOOKS: dict[str, tuple[Site, str]] = {
    "hook_resid_pre": ("pre", ""),
    "hook_resid_post": ("post", ""),
    "hook_attn_out": ("post", "attn"),
    "hook_mlp_out": ("post", "mlp"),
    "hook_resid_mid": ("pre", "ln2"),
    "attn.hook_z": ("pre", "o_proj"),
    "ln1.hook_normalized": ("post", "ln1"),
    "ln2.hook_normalized": ("post", "ln2"),
}
_GLOBAL_HOOKS: dict[str, tuple[Site, str]] = {
    "hook_embed": ("post", "embed"),
    "ln_final.hook_normalized": ("post", "ln_final"),
}
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")

# Attribute spellings of the common HF decoder families (Llama/Mistral/Qwen/Gemma, GPT-2, NeoX).
_LAYER_PATHS = ("model.layers", "model.language_model.layers", "transformer.h", "gpt_neox.layers")
_EMBED_PATHS = ("model.embed_tokens", "model.language_model.embed_tokens", "transformer.wte", "gpt_neox.embed_in")
_NORM_PATHS = ("model.norm", "model.language_model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm")
_SUB_PATHS = {
    "attn": ("self_attn", "attn", "attention"),
    "mlp": ("mlp",),
    "ln1": ("input_layernorm", "ln_1"),
    "ln2": ("post_attention_layernorm", "ln_2"),
    "o_proj": ("self_attn.o_proj", "attn.c_proj", "attention.dense"),
}


def _get(root: nn.Module, path: str) -> nn.Module | None:
    obj: object = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj if isinstance(obj, nn.Module) else None


def _first(root: nn.Module, paths: tuple[str, ...]) -> nn.Module | None:
    for p in paths:
        m = _get(root, p)
        if m is not None:
            return m
    return None


@dataclass(frozen=True)
class HookPoint:
    """Where one hook name lives: the module, whether it is its input or output, its layer."""

    name: str
    module: nn.Module
    site: Site
    layer: int  # -1 for the embedding, n_layers for the final norm


class HookPointMap:
    """Maps TransformerLens hook names to (module, input|output) on an HF decoder.

    Args:
        hf_model: a ``*ForCausalLM`` (or its base model) from ``transformers``.
    """

    def __init__(self, hf_model: nn.Module) -> None:
        layers = _first(hf_model, _LAYER_PATHS)
        if layers is None or not isinstance(layers, nn.ModuleList):
            raise HookNameError(
                f"cannot find the decoder layers of {type(hf_model).__name__}; "
                f"looked for {', '.join(_LAYER_PATHS)}"
            )
        self.layers: nn.ModuleList = layers
        self.n_layers = len(layers)
        self.embed = _first(hf_model, _EMBED_PATHS)
        self._norm = _first(hf_model, _NORM_PATHS)

    @property
    def names(self) -> list[str]:
        """Every hook name this model supports, in forward order."""
        out = [n for n in _GLOBAL_HOOKS if n == "hook_embed" and self.embed is not None]
        for i in range(self.n_layers):
            out += [f"blocks.{i}.{suffix}" for suffix in _BLOCK_HOOKS if self._resolve_block(i, suffix)]
        if self._norm is not None:
            out.append("ln_final.hook_normalized")
        return out

    def _resolve_block(self, i: int, suffix: str) -> HookPoint | None:
        site, sub = _BLOCK_HOOKS[suffix]
        layer = self.layers[i]
        module = layer if sub == "" else _first(layer, _SUB_PATHS[sub])
        if module is None:
            return None
        return HookPoint(f"blocks.{i}.{suffix}", module, site, i)

    def resolve(self, name: str) -> HookPoint:
        """The hook point for ``name``; raises HookNameError naming close alternatives."""
        m = _BLOCK_RE.match(name)
        hp: HookPoint | None = None
        if m:
            i, suffix = int(m.group(1)), m.group(2)
            if suffix in _BLOCK_HOOKS and 0 <= i < self.n_layers:
                hp = self._resolve_block(i, suffix)
        elif name == "hook_embed" and self.embed is not None:
            hp = HookPoint(name, self.embed, "post", -1)
        elif name == "ln_final.hook_normalized" and self._norm is not None:
            hp = HookPoint(name, self._norm, "post", self.n_layers)
        if hp is None:
            raise HookNameError(self._unknown(name))
        return hp

    def _unknown(self, name: str) -> str:
        m = _BLOCK_RE.match(name)
        if m and int(m.group(1)) >= self.n_layers:
            return (
                f"unknown hook name {name!r}: layer {m.group(1)} out of range, "
                f"this model has blocks.0 .. blocks.{self.n_layers - 1}"
            )
        kinds = ", ".join(f"blocks.<i>.{s}" for s in _BLOCK_HOOKS)
        return f"unknown hook name {name!r}; valid names are hook_embed, {kinds}, ln_final.hook_normalized"


HookFn = Callable[[torch.Tensor, HookPoint], torch.Tensor | None]


def _unwrap(out: object) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out  # type: ignore[return-value]


def _rewrap(out: object, new: torch.Tensor) -> object:
    return (new, *out[1:]) if isinstance(out, tuple) else new


def attach(hp: HookPoint, fn: HookFn) -> torch.utils.hooks.RemovableHandle:
    """Attach ``fn(activation, hook_point)`` at ``hp``; a returned tensor replaces the activation.

    The activation is passed as ``[batch, pos, d]`` (``attn.hook_z`` as ``[batch, pos, d_model]``
    before the output projection, i.e. heads concatenated).
    """
    if hp.site == "post":

        def post_hook(_m: nn.Module, _args: tuple, out: object) -> object | None:
            new = fn(_unwrap(out), hp)
            return None if new is None else _rewrap(out, new)

        return hp.module.register_forward_hook(post_hook)

    def pre_hook(_m: nn.Module, args: tuple, kwargs: dict) -> tuple | None:
        if args:
            new = fn(args[0], hp)
            return None if new is None else ((new, *args[1:]), kwargs)
        new = fn(kwargs["hidden_states"], hp)
        return None if new is None else (args, {**kwargs, "hidden_states": new})

    return hp.module.register_forward_pre_hook(pre_hook, with_kwargs=True)
