"""Checks on an HF model wrapped by a TransformerLens ``TransformerBridge``: does its KV cache decode
correctly, and what are its weights under the plain HF names (for a fingerprint that matches the unwrapped model)."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def kv_cache_matches_full_forward(hf: nn.Module, device: torch.device) -> bool:
    """Whether decoding one token over a KV cache gives the logits of the uncached forward.

    A wrapper (a TransformerBridge) whose attention does not see the cache that its transformers
    version passes would otherwise decode every token as if the prompt were not there.
    """
    vocab = int(getattr(getattr(hf, "config", None), "vocab_size", 0) or 0)
    ids = torch.arange(1, 5, device=device).remainder(max(vocab, 5)).unsqueeze(0)
    full = hf(input_ids=ids, use_cache=False).logits[0, -1].float()
    head = hf(input_ids=ids[:, :-1], use_cache=True)
    step = hf(input_ids=ids[:, -1:], past_key_values=head.past_key_values, use_cache=True).logits[0, -1].float()
    return bool(torch.allclose(step, full, rtol=1e-2, atol=1e-2 * float(full.abs().max()) + 1e-5))


def hf_state_under_bridge(hf: nn.Module) -> dict[str, torch.Tensor] | None:
    """The HF state dict of a model a ``TransformerBridge`` has wrapped, under its own HF names.

    The bridge nests each original module as ``._original_component`` and adds alias paths, so
    its state dict names differ from the plain model's. The plain names come from an empty
    (meta-device) instance of the same class; None if any is missing (an unknown layout).
    """
    state = {k.replace("._original_component", ""): v for k, v in hf.state_dict().items()}
    try:
        with torch.device("meta"):
            names = list(type(hf)(hf.config).state_dict())
    except Exception:  # a class that cannot be built from its config alone: no HF names to match
        return None
    if not names or any(n not in state for n in names):
        return None
    return {n: state[n] for n in names}
