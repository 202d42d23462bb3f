"""A Hugging Face causal-LM face over a TransformerLens ``HookedTransformer``, for decoding loops.

The Guard and :func:`circuits.generation.complete` decode through ``model.hf_model(input_ids=...,
attention_mask=..., past_key_values=..., use_cache=True)`` and crop the cache to take tokens back.
A ``HookedTransformer`` has its own KV cache with other conventions: it is mutated in place, and
its forward takes the attention mask of the *new* tokens only (the cache keeps the rest). This
adapter translates, so everything that decodes an HF model decodes a ``HookedTransformer`` too,
with TransformerLens' own hook points firing (the Guard's scorers and correctors attach there).

Positions come from the attention mask inside TransformerLens (left padding is handled there), so
``position_ids`` is accepted and ignored; it is derived from the same mask.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn


class TLCache:
    """An HF-style handle (``get_seq_length``, ``crop``) on a TransformerLens key-value cache."""

    def __init__(self, cache: Any) -> None:
        self.cache = cache

    def get_seq_length(self) -> int:
        return int(self.cache.entries[0].past_keys.shape[1]) if self.cache.entries else 0

    def crop(self, max_length: int) -> None:
        """Keep the first ``max_length`` positions (negative: drop that many from the end), as HF does."""
        keep = self.get_seq_length() + max_length if max_length < 0 else max_length
        for e in self.cache.entries:
            e.past_keys = e.past_keys[:, :keep]
            e.past_values = e.past_values[:, :keep]
        self.cache.previous_attention_mask = self.cache.previous_attention_mask[:, :keep]


class TLDecoder(nn.Module):
    """``forward(input_ids, attention_mask, past_key_values, use_cache)`` -> ``.logits``, ``.past_key_values``.

    Args:
        tl_model: the ``HookedTransformer`` (held, never modified).
    """

    def __init__(self, tl_model: nn.Module) -> None:
        super().__init__()
        self.tl_model = tl_model  # a child module, so .parameters() is the model's (dtype, device)
        eos = getattr(getattr(tl_model, "tokenizer", None), "eos_token_id", None)
        self.generation_config = SimpleNamespace(eos_token_id=eos)
        # where token avoidance reads the final norm's gain on an HF model (None once folded into W_U)
        gain = getattr(getattr(tl_model, "ln_final", None), "w", None)
        self.model = SimpleNamespace(norm=SimpleNamespace(weight=gain))

    def get_output_embeddings(self) -> SimpleNamespace:
        """The unembedding as HF lays it out: ``weight`` is ``[vocab, d_model]``."""
        return SimpleNamespace(weight=self.tl_model.W_U.T)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        past_key_values: TLCache | None = None,
        use_cache: bool = False,
        **_: Any,
    ) -> SimpleNamespace:
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

        n = input_ids.shape[1]
        cache = past_key_values
        if cache is None and use_cache:
            cache = TLCache(TransformerLensKeyValueCache.init_cache(self.tl_model.cfg, input_ids.device, input_ids.shape[0]))
        if attention_mask is None:
            attention_mask = torch.ones(input_ids.shape[0], n + (cache.get_seq_length() if cache else 0),
                                        dtype=torch.long, device=input_ids.device)
        logits = self.tl_model(
            input_ids, attention_mask=attention_mask[:, -n:],  # the cache holds the mask of the past
            past_kv_cache=cache.cache if cache is not None else None,
        )
        return SimpleNamespace(logits=logits, past_key_values=cache)

    @torch.inference_mode()
    def generate(self, input_ids: Tensor, attention_mask: Tensor | None = None, max_new_tokens: int = 20,
                 do_sample: bool = False, pad_token_id: int | None = None, eos_token_id: int | None = None,
                 **_: Any) -> Tensor:
        """Greedy decoding of a left-padded batch, the rows HF's ``generate`` returns (pad after EOS)."""
        if do_sample:
            raise NotImplementedError("TLDecoder.generate is greedy only; sample with the Guard")
        pad = 0 if pad_token_id is None else int(pad_token_id)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.long()
        out, cache, step = input_ids, None, input_ids
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for _ in range(max_new_tokens):
            res = self.forward(step, attention_mask=mask, past_key_values=cache, use_cache=True)
            cache = res.past_key_values
            nxt = res.logits[:, -1].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            out = torch.cat([out, nxt[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones_like(nxt)[:, None]], dim=1)
            if eos_token_id is not None:
                done |= nxt == int(eos_token_id)
            if bool(done.all()):
                break
            step = nxt[:, None]
        return out
