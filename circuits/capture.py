"""Activation capture at one or more hook names in a single, early-stopped forward pass.

Token selection is explicit (``select``):

=================  ===================================================================
``last``           the final token of each item
``before_last``    the token before the final one (for a one-token answer: the position that
                   chose it; a conditional detector reads its prompt state there)
``prompt_last``    the last prompt token (before the response; for plain text, the last)
``response_mean``  mean over the judged span (the response; all tokens for plain text)
``response_max``   element-wise max over the judged span
``response_each``  every token of the judged span, one row each (see ``Activations.index``)
``all_mean``       mean over every token
``all_each``       every token, one row each
``decode_each``    what a Guard reads while generating the response: from the last prompt
                   token to the last token, one row each (row t predicts response token t;
                   the last row predicts the end of turn)
=================  ===================================================================

Rows are padded on the right so real tokens never see padding (causal attention), and the
forward pass raises out of the deepest block that a requested hook lives in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from jaxtyping import Float, Int

from circuits.activation_cache import ActivationCache
from circuits.errors import InputError
from circuits.hooked_model import HookedModel
from circuits.inputs import Encoded, Item, batches, encode, encoded_hash, pad_id

SELECTIONS = ("last", "before_last", "prompt_last", "response_mean", "response_max", "response_each", "all_mean", "all_each", "decode_each")
POSITION_SELECTIONS = ("last", "before_last", "prompt_last")  # one token per item


@dataclass
class Activations:
    """Captured activations.

    Attributes:
        acts: ``{hook_name: float32 array [rows, d]}``.
        index: item index of each row (``arange(n)`` unless a ``*_each`` selection was used).
        select: the token selection used.
    """

    acts: dict[str, Float[np.ndarray, "rows d"]]
    index: Int[np.ndarray, " rows"]
    select: str

    def __getitem__(self, hook: str) -> np.ndarray:
        return self.acts[hook]


def _span_start(e: Encoded, select: str) -> int:
    if select.startswith("all"):
        return 0
    if select == "decode_each":
        return max(e.prompt_end - 1, 0)
    return e.span_start


def _span_mask(encoded: Sequence[Encoded], idx: list[int], width: int, select: str) -> torch.Tensor:
    mask = torch.zeros(len(idx), width, dtype=torch.bool)
    for r, i in enumerate(idx):
        e = encoded[i]
        mask[r, _span_start(e, select) : len(e.ids)] = True
    return mask


def _positions(encoded: Sequence[Encoded], idx: list[int], select: str) -> torch.Tensor:
    if select == "last":
        return torch.tensor([len(encoded[i].ids) - 1 for i in idx])
    if select == "before_last":
        return torch.tensor([max(len(encoded[i].ids) - 2, 0) for i in idx])
    return torch.tensor([encoded[i].prompt_end - 1 for i in idx])


def select_tokens(act: torch.Tensor, select: str, positions: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
    """Reduce ``act [batch, pos, d]`` to rows by the selection (``*_each`` keeps masked tokens)."""
    if select in POSITION_SELECTIONS:
        return act[torch.arange(act.shape[0]), positions]
    assert mask is not None
    if select.endswith("_mean"):
        m = mask.unsqueeze(-1).to(act.dtype)
        return (act * m).sum(1) / m.sum(1).clamp(min=1)
    if select.endswith("_max"):
        return act.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)
    return act[mask]


def _stop_layer(model: HookedModel, hooks: Sequence[str]) -> int:
    return max(model.layer_of(h) for h in hooks)


@torch.inference_mode()
def capture(
    model: HookedModel,
    items: Sequence[Item],
    hooks: str | Sequence[str],
    select: str = "last",
    batch_size: int = 16,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> Activations:
    """Capture activations of ``items`` at ``hooks`` in one forward pass per batch.

    Args:
        model: a hooked model (:func:`circuits.load_model`).
        items: texts, chats or (prompt, response) pairs (see :mod:`circuits.inputs`).
        hooks: one hook name or several, e.g. ``"blocks.12.hook_resid_post"``.
        select: token selection (see module docstring).
        batch_size: items per forward pass.
        cache_dir: if given, activations are stored there (safetensors) keyed by model
            fingerprint, hook, selection and token ids, and re-used on the next call.
        progress: show a progress bar.

    Returns:
        :class:`Activations` with one float32 array per hook.

    Example:
        >>> acts = capture(model, ["Paris is in France."], "blocks.12.hook_resid_post")
        >>> acts["blocks.12.hook_resid_post"].shape
        (1, 576)
    """
    return capture_selections(model, items, hooks, [select], batch_size, cache_dir, progress)[select]


@torch.inference_mode()
def capture_selections(
    model: HookedModel,
    items: Sequence[Item],
    hooks: str | Sequence[str],
    selects: Sequence[str],
    batch_size: int = 16,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> dict[str, Activations]:
    """Like :func:`capture`, for several token selections from the same forward passes.

    Returns ``{select: Activations}``; e.g. a conditional detector reads ``prompt_last`` and
    ``response_mean`` of the same items without a second pass.
    """
    hooks = [hooks] if isinstance(hooks, str) else list(hooks)
    selects = list(dict.fromkeys(selects))
    if not hooks:
        raise InputError("capture: no hook names given")
    for select in selects:
        if select not in SELECTIONS:
            raise InputError(f"capture: unknown token selection {select!r}; expected one of {', '.join(SELECTIONS)}")
    if len(items) == 0:
        raise InputError("capture: no items given")
    for h in hooks:
        model.check_hook(h)
    encoded = encode(model.tokenizer, items, model.n_ctx)
    cache = ActivationCache(cache_dir) if cache_dir is not None else None
    data_hash = encoded_hash(encoded)
    keys = {(h, s): f"{model.fingerprint}|{h}|{s}|{data_hash}" for h in hooks for s in selects}
    result = {k: cache.get(key) for k, key in keys.items()} if cache else {k: None for k in keys}
    todo = [k for k, v in result.items() if v is None]
    if todo:
        for k, value in _run_capture(model, encoded, todo, batch_size, progress).items():
            result[k] = value
            if cache:
                cache.put(keys[k], *value)
    return {
        s: Activations({h: result[(h, s)][0] for h in hooks}, result[(hooks[0], s)][1], s)  # type: ignore[index]
        for s in selects
    }


def _run_capture(
    model: HookedModel, encoded: list[Encoded], todo: list[tuple[str, str]], batch_size: int, progress: bool
) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
    hooks = list(dict.fromkeys(h for h, _ in todo))
    stop = _stop_layer(model, hooks)
    chunks: dict[tuple[str, str], list[tuple[list[int], torch.Tensor]]] = {k: [] for k in todo}
    state: dict[object, object] = {}

    def make_hook(name: str):
        selects = [s for h, s in todo if h == name]

        def fn(act: torch.Tensor, _hook: object) -> None:
            for s in selects:
                rows = select_tokens(act, s, _on(state, ("positions", s), act.device), _on(state, ("mask", s), act.device))
                chunks[(name, s)].append((state["idx"], rows.detach().float().cpu()))  # type: ignore[arg-type]

        return fn

    it = batches(encoded, batch_size, pad_id(model.tokenizer), side="right")
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, total=(len(encoded) + batch_size - 1) // batch_size, desc="capture", leave=False)
    device = model.device
    all_selects = list(dict.fromkeys(s for _, s in todo))
    with model.hooks([(h, make_hook(h)) for h in hooks]):
        for idx, ids, mask in it:
            state.clear()
            state["idx"] = idx
            for s in all_selects:  # kept on the CPU: each hook copies them to its activation's device once
                if s in POSITION_SELECTIONS:
                    state[("positions", s)] = _positions(encoded, idx, s)
                else:
                    state[("mask", s)] = _span_mask(encoded, idx, ids.shape[1], s)
            model.forward(ids.to(device), mask.to(device), stop_at_layer=stop)
    return {k: _assemble(c, encoded, k[1]) for k, c in chunks.items()}


def _on(state: dict[object, object], key: tuple[str, str], device: torch.device) -> torch.Tensor | None:
    """``state[key]`` on ``device``, copied at most once per batch and device: on a model split over
    devices each hook's activation lives on its own block's device, never necessarily ``model.device``."""
    t = state.get(key)
    if t is None or t.device == device:  # type: ignore[union-attr]
        return t  # type: ignore[return-value]
    moved = state.setdefault((key, device), t.to(device))  # type: ignore[union-attr]
    return moved  # type: ignore[return-value]


def _assemble(chunks: list[tuple[list[int], torch.Tensor]], encoded: list[Encoded], select: str) -> tuple[np.ndarray, np.ndarray]:
    """Put rows back in item order (batches were sorted by length)."""
    if not select.endswith("_each"):
        d = chunks[0][1].shape[-1]
        out = np.empty((len(encoded), d), dtype=np.float32)
        for idx, rows in chunks:
            out[idx] = rows.numpy()
        return out, np.arange(len(encoded))
    by_item: dict[int, np.ndarray] = {}
    for idx, rows in chunks:
        counts = [len(encoded[i].ids) - _span_start(encoded[i], select) for i in idx]
        for i, part in zip(idx, torch.split(rows, counts)):
            by_item[i] = part.numpy()
    order = sorted(by_item)
    acts = np.concatenate([by_item[i] for i in order]).astype(np.float32)
    index = np.concatenate([np.full(len(by_item[i]), i) for i in order])
    return acts, index
