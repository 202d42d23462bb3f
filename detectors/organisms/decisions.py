"""The decision token: encoding scenario prompts, the A/B logits there, and a prompt-prefix KV cache.

An organism's decision is the first assistant token after the chat template's generation prompt; its
two candidate tokens are the letters ``A`` and ``B``. Everything here compares *letters* under the
model's own distribution (log-odds between the two), never raw confidences across models.

:class:`PrefixCache` runs a prompt's prefix once and re-runs only the decision token for each
intervention (noise draw, steering vector): the unmasking strategies then cost one token per prompt
and setting instead of a whole prompt.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from circuits import HookedModel
from circuits.errors import InputError, UnsupportedModelError
from circuits.inputs import Encoded, encode, pad_id


def chat(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def letter_ids(tokenizer: Any) -> tuple[int, int]:
    """Token ids of ``A`` and ``B`` as the first answer token (UnsupportedModelError if not single tokens)."""
    out = []
    for letter in ("A", "B"):
        ids = tokenizer(letter, add_special_tokens=False)["input_ids"]
        if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
            raise UnsupportedModelError(f"the tokenizer does not encode the answer letter {letter!r} as one known token ({ids})")
        out.append(int(ids[0]))
    if out[0] == out[1]:
        raise UnsupportedModelError("the tokenizer maps 'A' and 'B' to the same token")
    return out[0], out[1]


def encode_prompts(model: HookedModel, prompts: Sequence[str]) -> list[Encoded]:
    """Chat-templated prompts ending at the generation prompt (the decision position is the last token)."""
    return encode(model.tokenizer, [chat(p) for p in prompts], model.n_ctx)


def left_padded(encoded: Sequence[Encoded], pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask, position_ids)``, left-padded so every row's last column is its last token."""
    width = max(len(e.ids) for e in encoded)
    ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for r, e in enumerate(encoded):
        ids[r, width - len(e.ids):] = torch.tensor(e.ids)
        mask[r, width - len(e.ids):] = 1
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def last_logits(hf: Any, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Next-token logits at the last position ``[batch, vocab]`` (the 49k-vocabulary head on one token only)."""
    out = hf(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False, logits_to_keep=1)
    return out.logits[:, -1, :].float()


def _chunks(n: int, size: int) -> Iterator[slice]:
    for s in range(0, n, size):
        yield slice(s, min(n, s + size))


@torch.inference_mode()
def next_token_logits(model: HookedModel, encoded: Sequence[Encoded], batch_size: int = 8, hf: Any = None) -> torch.Tensor:
    """``[n, vocab]`` logits at each item's last token, from ``hf`` (a fine-tuned copy of the model) if given."""
    if not encoded:
        raise InputError("no prompts to score")
    model.check_decode()
    pad = pad_id(model.tokenizer)
    hf = model.hf_model if hf is None else hf
    out = [last_logits(hf, *left_padded(encoded[sl], pad)) for sl in _chunks(len(encoded), batch_size)]
    return torch.cat(out)


def letter_logits(model: HookedModel, prompts: Sequence[str], batch_size: int = 8, hf: Any = None) -> np.ndarray:
    """``[n, 2]`` logits of ``A`` and ``B`` at the decision token (of ``hf`` if given, see :func:`next_token_logits`)."""
    a, b = letter_ids(model.tokenizer)
    return next_token_logits(model, encode_prompts(model, prompts), batch_size, hf)[:, [a, b]].numpy().astype(np.float64)


def log_odds(letter_logit: np.ndarray, target: Sequence[str]) -> np.ndarray:
    """log P(target letter) - log P(other letter), per row (the model's own two-way preference)."""
    sign = np.array([1.0 if t == "A" else -1.0 for t in target])
    return sign * (letter_logit[..., 0] - letter_logit[..., 1])


class PrefixCache:
    """The KV cache of one prompt minus its last token; :meth:`logits` re-runs only that token.

    Hooks passed to :meth:`logits` see the decision token alone (``[1, 1, d_model]``), which is where the
    noise and steering strategies intervene.
    """

    def __init__(self, model: HookedModel, encoded: Encoded) -> None:
        model.check_decode()
        if len(encoded.ids) < 2:
            raise InputError("a prompt of one token has no prefix to cache")
        self.model = model
        ids = torch.tensor([encoded.ids], device=model.device)
        self.n = ids.shape[1] - 1
        self.last = ids[:, -1:]
        with torch.inference_mode():
            self.cache = model.hf_model(input_ids=ids[:, :-1], use_cache=True).past_key_values

    @torch.inference_mode()
    def logits(self, fwd_hooks: Sequence[tuple[str, Any]] = ()) -> torch.Tensor:
        extra = self.cache.get_seq_length() - self.n
        if extra > 0:
            self.cache.crop(-extra)  # drop the decision token a previous call appended
        pos = torch.tensor([[self.n]], device=self.last.device)
        with self.model.hooks(list(fwd_hooks)):
            out = self.model.hf_model(input_ids=self.last, past_key_values=self.cache, position_ids=pos, use_cache=True)
        return out.logits[0, -1].float()
