"""Running the model with correctors attached: logits and response log-probabilities (A/B answer
probabilities, perplexity, KL under steering)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from circuits.generation_state import GenerationState
from circuits.hooked_model import HookedModel
from circuits.inputs import Item, batches, encode, pad_id


class Corrector(Protocol):
    """What this module needs of a :class:`circuits.steering.Corrector` (named here, not imported:
    :mod:`circuits.steering` re-exports this module's functions, so importing it back would be a cycle)."""

    def apply(self, model: HookedModel, state: GenerationState | None = None) -> Any: ...


@contextlib.contextmanager
def apply_all(model: HookedModel, correctors: Sequence[Corrector], state: GenerationState | None = None) -> Iterator[None]:
    """Attach several correctors for the duration of the block (all removed on exit, even on error)."""
    with contextlib.ExitStack() as stack:
        for c in correctors:
            stack.enter_context(c.apply(model, state))
        yield


@torch.inference_mode()
def logits_with(
    model: HookedModel,
    items: Sequence[Item],
    correctors: Sequence[Corrector] = (),
    batch_size: int = 8,
) -> list[Tensor]:
    """Logits ``[n_tokens, vocab]`` (float32, CPU) per item with the correctors active.

    One plain forward per batch (no KV cache). For ``(prompt, response)`` pairs and chats ending
    with an assistant message, the response tokens count as *generated* for correctors with
    ``positions="generated"``; for plain text and open chats every token is prompt.

    Example (A/B answer probabilities with and without steering):
        >>> items = [[{"role": "user", "content": "... Answer A or B."}]]
        >>> base = logits_with(model, items)[0][-1].softmax(-1)
        >>> steered = logits_with(model, items, [ActivationAddition(hook, v, alpha=4.0)])[0][-1].softmax(-1)
    """
    enc = encode(model.tokenizer, items, model.n_ctx)
    state = GenerationState()
    out: list[Tensor | None] = [None] * len(enc)
    device = model.device
    with apply_all(model, correctors, state):
        for idx, ids, mask in batches(enc, batch_size, pad_id(model.tokenizer), side="right"):
            ids, mask = ids.to(device), mask.to(device)
            state.begin(ids.shape[1], attention_mask=mask, prompt_lens=[enc[i].prompt_end for i in idx])
            logits = model.forward(ids, mask)
            assert logits is not None
            for r, i in enumerate(idx):
                out[i] = logits[r, : len(enc[i].ids)].float().cpu()
    return out  # type: ignore[return-value]


def response_logprobs(
    model: HookedModel,
    items: Sequence[Item],
    correctors: Sequence[Corrector] = (),
    batch_size: int = 8,
) -> list[np.ndarray]:
    """Log-probability of each response token (``(prompt, response)`` items or chats ending with the
    assistant), with the correctors active. Perplexity of item i: ``exp(-mean(result[i]))``."""
    enc = encode(model.tokenizer, items, model.n_ctx)
    logits = logits_with(model, items, correctors, batch_size)
    out = []
    for e, lg in zip(enc, logits):
        start = e.span_start if e.span_start > 0 else 1
        if start >= len(e.ids):
            out.append(np.zeros(0, dtype=np.float32))
            continue
        lp = torch.log_softmax(lg[start - 1 : len(e.ids) - 1], dim=-1)
        tgt = torch.tensor(e.ids[start:], dtype=torch.long)
        out.append(lp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1).numpy())
    return out
