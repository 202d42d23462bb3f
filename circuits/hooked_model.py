"""A hooked model: one interface over an HF decoder and over TransformerLens models.
(Over 400 lines: the one interface and its two adapters, HF and TransformerLens, are read together.)

Everything above ``circuits`` talks to a :class:`HookedModel`. Two backends:

* :class:`HFHookedModel` wraps a ``transformers`` causal LM with TransformerLens hook names
  resolved to plain PyTorch hooks (the default for the embedded models; full HF speed, and
  ``generate`` with the KV cache works unchanged under hooks).
* :class:`TLHookedModel` adapts an already-built ``HookedTransformer`` or ``TransformerBridge``
  that a user passes in, through TransformerLens' own ``hooks()`` context. A bridge wraps the
  Hugging Face model in place, so its ``original_model`` runs the same weights with the bridge's
  hook points firing: that is what lets the Guard and ``complete`` decode on a bridge, and a
  detector trained on the plain HF model load on its bridge (same weight fingerprint). A
  ``HookedTransformer`` decodes through :class:`~circuits.tl_decoder.TLDecoder` instead.

Hooks are attached only inside :meth:`HookedModel.hooks` (try/finally) or through a handle
with ``.remove()``; the wrapped model's weights and module tree are never changed.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from circuits.errors import HookNameError, InputError, UnsupportedModelError
from circuits.hook_points import HookPoint, HookPointMap, attach
from circuits.bridge_checks import hf_state_under_bridge, kv_cache_matches_full_forward
from circuits.placement import input_device, weight_fingerprint

HookFn = Callable[[torch.Tensor, Any], "torch.Tensor | None"]


class StopForward(Exception):
    """Raised from a hook to end a forward pass early once the deepest needed hook has fired."""


class HookHandle:
    """Handle for hooks attached outside a ``with`` block; call :meth:`remove` to detach."""

    def __init__(self, handles: list[Any]) -> None:
        self._handles = handles

    def remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()

    def __enter__(self) -> "HookHandle":
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


class HookedModel:
    """Common interface. Subclasses set the attributes below and implement the hook plumbing.

    Attributes:
        model_id: name used in artifacts (e.g. ``"smollm2-135m-instruct"``).
        tokenizer: a Hugging Face tokenizer (chat template used for chats).
        n_layers, d_model, n_ctx: architecture sizes.
    """

    model_id: str
    tokenizer: Any
    n_layers: int
    d_model: int
    n_ctx: int
    hf_model: nn.Module | None = None
    """The ``transformers`` causal LM (or :class:`~circuits.tl_decoder.TLDecoder`, the same face over
    a ``HookedTransformer``) whose forward and KV cache run this model with its hooks firing: the
    Guard and ``complete`` decode through it. None if the model cannot decode."""
    _base: nn.Module | None = None
    """The module every forward of this model passes through (positions are tracked there)."""
    _fingerprint: str | None = None

    # --- hook names -------------------------------------------------------------------
    @property
    def hook_names(self) -> list[str]:
        raise NotImplementedError

    def check_hook(self, name: str) -> None:
        """Raise HookNameError (naming the valid forms) if ``name`` is not a hook of this model."""
        raise NotImplementedError

    def layer_of(self, name: str) -> int:
        """Index of the block a hook lives in (-1 for the embedding, n_layers for the final norm)."""
        raise NotImplementedError

    def check_decode(self) -> None:
        """Raise :class:`InputError` if the Guard and ``complete`` cannot decode on this model."""
        if self.hf_model is None:
            raise InputError(
                f"decoding needs a model that can generate (circuits.load_model / from_hf, or a TransformerLens "
                f"HookedTransformer / TransformerBridge), got {type(self).__name__}"
            )

    # --- hooks --------------------------------------------------------------------------
    def add_hooks(self, fwd_hooks: Sequence[tuple[str, HookFn]]) -> HookHandle:
        """Attach hooks for long-lived use; the returned handle's ``.remove()`` detaches them."""
        raise NotImplementedError

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: Sequence[tuple[str, HookFn]]) -> Iterator["HookedModel"]:
        """Context manager attaching ``[(hook_name, fn), ...]``; removed on exit, even on error.

        ``fn(activation, hook)`` may return a tensor to replace the activation.

        Example:
            >>> with model.hooks([("blocks.3.hook_resid_post", lambda a, h: a * 0)]):
            ...     model.forward(ids, mask)
        """
        handle = self.add_hooks(fwd_hooks)
        try:
            yield self
        finally:
            handle.remove()

    # --- forward --------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        raise NotImplementedError

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        stop_at_layer: int | None = None,
    ) -> torch.Tensor | None:
        """Run the model; with ``stop_at_layer=L`` stop after block L and return None.

        Without it, return logits ``[batch, pos, vocab]``.
        """
        raise NotImplementedError

    def hidden_forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        """A full pass through every block without the unembedding (activations only)."""
        self.forward(input_ids, attention_mask, stop_at_layer=self.n_layers)

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = weight_fingerprint(self._weights_module())
        return self._fingerprint

    def _weights_module(self) -> nn.Module | dict[str, torch.Tensor]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.model_id!r}, n_layers={self.n_layers}, "
            f"d_model={self.d_model}, n_ctx={self.n_ctx})"
        )


def _attach_all(attachers: Sequence[Callable[[], Any]]) -> HookHandle:
    """Run every attacher; if one fails, remove those already attached (all or nothing)."""
    handles: list[Any] = []
    try:
        for attach_one in attachers:
            handles.append(attach_one())
    except BaseException:
        HookHandle(handles).remove()
        raise
    return HookHandle(handles)


def _stop_hook(layer: int) -> HookFn:
    def fn(act: torch.Tensor, hook: Any) -> None:
        raise StopForward(layer)

    return fn


class HFHookedModel(HookedModel):
    """A ``transformers`` causal LM addressed by TransformerLens hook names.

    Args:
        hf_model: the causal LM (kept in eval mode; never modified).
        tokenizer: its tokenizer.
        model_id: the name stored in artifacts.
    """

    def __init__(self, hf_model: nn.Module, tokenizer: Any, model_id: str) -> None:
        self.hf_model = hf_model.eval()
        self.tokenizer = tokenizer
        self.model_id = model_id
        self._points = HookPointMap(hf_model)
        cfg = hf_model.config
        self.n_layers = self._points.n_layers
        self.d_model = int(getattr(cfg, "hidden_size", None) or cfg.n_embd)
        self.n_ctx = int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 2048))
        self._base = getattr(hf_model, hf_model.base_model_prefix, hf_model)

    @property
    def hook_names(self) -> list[str]:
        return self._points.names

    def check_hook(self, name: str) -> None:
        self._points.resolve(name)

    def layer_of(self, name: str) -> int:
        return self._points.resolve(name).layer

    def hook_point(self, name: str) -> HookPoint:
        return self._points.resolve(name)

    def add_hooks(self, fwd_hooks: Sequence[tuple[str, HookFn]]) -> HookHandle:
        points = [(self._points.resolve(name), fn) for name, fn in fwd_hooks]  # validate all first
        return _attach_all([lambda hp=hp, fn=fn: attach(hp, fn) for hp, fn in points])

    @property
    def device(self) -> torch.device:
        """Where input ids go: the embedding's device (its execution device when accelerate dispatched
        the model over several devices; other blocks' activations live elsewhere, so hooks follow the
        activation's own device and never this one)."""
        return input_device(self.hf_model, self._points.embed)

    def _weights_module(self) -> nn.Module:
        return self.hf_model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        stop_at_layer: int | None = None,
    ) -> torch.Tensor | None:
        position_ids = None
        if attention_mask is not None:
            # explicit positions so left- and right-padded rows see the positions they would alone
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
        if stop_at_layer is None:
            return self.hf_model(**kwargs).logits
        if stop_at_layer >= self.n_layers:
            self._base(**kwargs)  # no unembedding: activations are all that is wanted
            return None
        stop = attach(HookPoint("stop", self._points.layers[stop_at_layer], "post", stop_at_layer), _stop_hook(stop_at_layer))
        try:
            self._base(**kwargs)
        except StopForward:
            pass
        finally:
            stop.remove()
        return None


class TLHookedModel(HookedModel):
    """Adapter for a user's TransformerLens ``HookedTransformer`` or ``TransformerBridge``.

    Args:
        tl_model: the TransformerLens model.
        model_id: name stored in artifacts; defaults to the model's ``cfg.model_name``.
    """

    def __init__(self, tl_model: Any, model_id: str | None = None) -> None:
        self.tl_model = tl_model
        cfg = tl_model.cfg
        self.model_id = model_id or str(getattr(cfg, "model_name", type(tl_model).__name__))
        self.tokenizer = tl_model.tokenizer
        self.n_layers = int(cfg.n_layers)
        self.d_model = int(cfg.d_model)
        self.n_ctx = int(getattr(cfg, "n_ctx", 2048) or 2048)
        self._is_bridge = type(tl_model).__name__ == "TransformerBridge"
        self._bridge_cache_ok: bool | None = None  # checked once, at the first decode
        hf = getattr(tl_model, "original_model", None) if self._is_bridge else None
        if isinstance(hf, nn.Module) and callable(getattr(hf, "forward", None)):
            self.hf_model = hf
            self._base = getattr(hf, getattr(hf, "base_model_prefix", ""), hf)  # every forward passes here
        elif not self._is_bridge:
            from circuits.tl_decoder import TLDecoder

            self.hf_model = TLDecoder(tl_model)  # HF-style decoding over TL's own KV cache
            self._base = tl_model

    def check_decode(self) -> None:
        super().check_decode()
        if self._is_bridge:
            if self._bridge_cache_ok is None:
                self._bridge_cache_ok = kv_cache_matches_full_forward(self.hf_model, self.device)
            if not self._bridge_cache_ok:
                from importlib.metadata import version

                raise UnsupportedModelError(
                    f"this TransformerBridge ignores its KV cache (transformer-lens {version('transformer-lens')} "
                    f"with transformers {version('transformers')}: the bridge's attention reads the cache as "
                    "`past_key_values`, transformers >= 5.24 passes it as `cache`), so every generated token would "
                    "be chosen without the prompt; install transformers<5.24 (see constraints.txt) or decode "
                    "the plain model (circuits.load_model / from_hf), which has the same fingerprint"
                )

    @property
    def hook_names(self) -> list[str]:
        return list(self.tl_model.hook_dict.keys())

    def check_hook(self, name: str) -> None:
        if name not in self.tl_model.hook_dict:
            near = [n for n in self.tl_model.hook_dict if n.split(".")[-1] == name.split(".")[-1]][:3]
            raise HookNameError(
                f"unknown hook name {name!r} for {self.model_id}; e.g. {', '.join(near) or 'blocks.0.hook_resid_post'}"
            )

    def layer_of(self, name: str) -> int:
        self.check_hook(name)
        parts = name.split(".")
        if parts[0] == "blocks":
            return int(parts[1])
        return -1 if parts[0] in ("hook_embed", "hook_pos_embed", "embed") else self.n_layers

    def add_hooks(self, fwd_hooks: Sequence[tuple[str, HookFn]]) -> HookHandle:
        for name, _ in fwd_hooks:
            self.check_hook(name)

        def attach_one(name: str, fn: HookFn) -> _TLHandle:
            hp = self.tl_model.hook_dict[name]
            hp.add_hook(lambda act, hook: fn(act, hook))
            return _TLHandle(hp, hp.fwd_hooks[-1])

        return _attach_all([lambda n=name, f=fn: attach_one(n, f) for name, fn in fwd_hooks])

    @property
    def device(self) -> torch.device:
        return next(self.tl_model.parameters()).device

    def _weights_module(self) -> nn.Module | dict[str, torch.Tensor]:
        if self.hf_model is not None:
            state = hf_state_under_bridge(self.hf_model)
            if state is not None:
                return state
        return self.tl_model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        stop_at_layer: int | None = None,
    ) -> torch.Tensor | None:
        if stop_at_layer is None:
            return self.tl_model(input_ids, attention_mask=attention_mask)
        name = f"blocks.{min(stop_at_layer, self.n_layers - 1)}.hook_resid_post"
        with self.hooks([(name, _stop_hook(stop_at_layer))]):
            try:
                self.tl_model(input_ids, attention_mask=attention_mask)
            except StopForward:
                pass
        return None


class _TLHandle:
    """Removes the hooks coalign added to one TransformerLens HookPoint (and only those)."""

    def __init__(self, hp: Any, lens_handle: Any) -> None:
        self._hp = hp
        self._lens_handle = lens_handle

    def remove(self) -> None:
        self._lens_handle.hook.remove()
        if self._lens_handle in self._hp.fwd_hooks:
            self._hp.fwd_hooks.remove(self._lens_handle)


def as_hooked(model: Any, model_id: str | None = None) -> HookedModel:
    """Wrap whatever the user passed (HookedModel, TL model, or HF model + tokenizer) as a HookedModel."""
    if isinstance(model, HookedModel):
        return model
    if hasattr(model, "hook_dict") and hasattr(model, "cfg"):
        return TLHookedModel(model, model_id)
    raise HookNameError(
        f"cannot hook a {type(model).__name__}: pass a coalign HookedModel (circuits.load_model), "
        "a TransformerLens HookedTransformer/TransformerBridge, or use circuits.from_hf(model, tokenizer)"
    )
