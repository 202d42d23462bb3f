"""Where the current forward pass sits in each row of a batch (prompt or generated positions,
KV-cache decoding), shared by the Guard and the correctors it switches on."""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch
from torch import Tensor

from circuits.errors import InputError
from circuits.hooked_model import HookedModel, HookHandle

Positions = Union[str, int]


class GenerationState:
    """Where the tokens of the current forward pass sit; shared by correctors and the generation driver.

    Attributes:
        positions: ``[batch or 1, seq]`` row position of each token of the current forward (0 = the
            row's first real token; padding excluded). None before the first forward.
        prompt_lens: ``[batch]`` prompt tokens per row; row positions ``>= prompt_lens`` are generated.
        decoding: True while every token of the current forward is a generated one (KV-cache
            decode steps); position masks are skipped then.

    Drive it with :meth:`begin` (before the prefill of a new sequence) and :meth:`step` (before
    each decode forward), or let :meth:`track` do it from the model's inputs.
    """

    __slots__ = ("positions", "prompt_lens", "decoding")

    def __init__(self) -> None:
        self.positions: Tensor | None = None
        self.prompt_lens: Tensor | None = None
        self.decoding = False

    def begin(
        self,
        input_len: int,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        prompt_lens: Tensor | Sequence[int] | None = None,
        batch: int = 1,
        device: torch.device | str | None = None,
    ) -> None:
        """A new sequence: the next forward processes ``input_len`` prompt columns from position 0.

        ``prompt_lens`` defaults to every real token of the forward (``attention_mask.sum(-1)``);
        pass it explicitly to score a teacher-forced response as "generated".
        """
        if attention_mask is not None and attention_mask.ndim == 2:
            device = attention_mask.device
            batch = attention_mask.shape[0]
        if position_ids is None:
            if attention_mask is not None and attention_mask.ndim == 2:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -input_len:]
            else:
                position_ids = torch.arange(input_len, device=device).unsqueeze(0)
        if prompt_lens is None:
            if attention_mask is not None and attention_mask.ndim == 2:
                prompt_lens = attention_mask[:, -input_len:].long().sum(-1)
            else:
                prompt_lens = torch.full((batch,), input_len, dtype=torch.long, device=device)
        self.positions = position_ids
        self.prompt_lens = torch.as_tensor(prompt_lens, dtype=torch.long, device=position_ids.device)
        self.decoding = False

    def step(self, position_ids: Tensor) -> None:
        """A decode forward: new (generated) tokens at these row positions ``[batch, n_new]``."""
        self.positions = position_ids
        self.decoding = True

    def reset(self) -> None:
        self.positions = self.prompt_lens = None
        self.decoding = False

    def in_scope(self, positions: Positions) -> Tensor | bool:
        """Bool ``[batch, seq]`` mask of tokens in scope, or True (all) / False (none)."""
        if positions == "all":
            return True
        if self.positions is None:
            raise InputError(
                f"a corrector restricted to positions={positions!r} ran before its GenerationState saw a "
                "forward pass; attach it with corrector.attach(model) (which tracks positions) or drive the "
                "state with state.begin()/state.step()"
            )
        if positions in ("generated", "response"):
            if self.decoding:
                return True
            assert self.prompt_lens is not None
            # "response" also takes the last prompt token: its output is the first generated token
            start = self.prompt_lens - 1 if positions == "response" else self.prompt_lens
            mask = self.positions >= start.unsqueeze(-1)
        else:
            mask = self.positions >= int(positions)
        if bool(mask.all()):
            return True
        if not bool(mask.any()):
            return False
        return mask

    # -- automatic tracking from the model's inputs ------------------------------------------
    def track(self, model: HookedModel) -> HookHandle:
        """Attach a pre-forward hook that keeps this state in step with every forward of ``model``.

        A forward with an empty (or no) KV cache starts a new sequence (all its tokens are prompt);
        one with a non-empty cache is a decode step (all its tokens are generated).
        """
        module = model._base  # the HF base model (also under a TransformerBridge), or a HookedTransformer
        if module is None:
            raise InputError(f"cannot track positions on a {type(model).__name__}")

        def pre(_m: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            ids = kwargs.get("input_ids")
            if ids is None:
                ids = kwargs.get("inputs_embeds")
            if ids is None and args:
                ids = args[0]
            if not isinstance(ids, Tensor) or ids.ndim < 2:
                return None
            n = ids.shape[1]
            past = _past_length(kwargs)
            mask = kwargs.get("attention_mask")
            mask = mask if isinstance(mask, Tensor) and mask.ndim == 2 else None
            pos = kwargs.get("position_ids")
            pos = pos if isinstance(pos, Tensor) and pos.ndim == 2 else None
            if past == 0:
                self.begin(n, attention_mask=mask, position_ids=pos, batch=ids.shape[0], device=ids.device)
            else:
                if pos is None:
                    tl_cache = kwargs.get("past_kv_cache")
                    if mask is not None and mask.shape[1] == n and tl_cache is not None:
                        # TransformerLens takes the new tokens' mask; its cache holds the past's
                        mask = torch.cat([tl_cache.previous_attention_mask.to(mask.device, mask.dtype), mask], dim=1)
                    if mask is not None:
                        pos = (mask.long().cumsum(-1) - 1).clamp(min=0)[:, -n:]
                    else:
                        pos = torch.arange(past, past + n, device=ids.device).unsqueeze(0)
                self.step(pos)
            return None

        return HookHandle([module.register_forward_pre_hook(pre, with_kwargs=True)])


def _past_length(kwargs: dict) -> int:
    # transformers >= 5.24 hands the base model its KV cache as ``cache``; earlier ones as ``past_key_values``
    cache = kwargs.get("past_key_values", kwargs.get("cache"))
    if cache is not None:
        if hasattr(cache, "get_seq_length"):
            return int(cache.get_seq_length())
        try:  # legacy tuple-of-tuples cache
            return int(cache[0][0].shape[-2])
        except Exception:
            return 0
    tl_cache = kwargs.get("past_kv_cache")
    if tl_cache is not None:
        try:
            return int(tl_cache.entries[0].past_keys.shape[1])
        except Exception:
            return 0
    cp = kwargs.get("cache_position")
    if isinstance(cp, Tensor) and cp.numel():
        return int(cp.reshape(-1)[0])
    return 0


def check_positions(positions: Positions) -> Positions:
    if positions in ("all", "generated", "response"):
        return positions
    if isinstance(positions, (int, np.integer)) and not isinstance(positions, bool) and positions >= 0:
        return int(positions)
    raise InputError(f"positions must be 'all', 'generated', 'response' or a non-negative int start position, got {positions!r}")


_check_positions = check_positions  # the old private name
