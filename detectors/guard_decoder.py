"""The Guard's decoder: a KV-cache loop over one left-padded batch, with step, redo and rewind.
Knows nothing of detectors or policy (internals of :mod:`detectors.guard`).

It feeds ``hf_model(...)`` exactly as ``transformers``' ``generate`` does (left padding, position
ids from the attention mask, the KV cache), so greedy outputs are token-identical to
``hf_model.generate``. ``redo`` re-runs the current step (the cache loses this step's keys and
values first); ``rerun_previous`` + ``replace_previous`` take the last token back and re-choose it
(the cache loses the last two steps). Forward hooks are the caller's business.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from circuits.errors import InputError
from circuits.hooked_model import HookedModel
from circuits.steering import GenerationState
from detectors.guard_types import GenerationSettings

__all__ = ["Decoder", "end_of_turn_ids"]


def end_of_turn_ids(model: HookedModel) -> Tensor:
    """The ids that end a response: the generation config's ``eos_token_id``(s) and the tokenizer's."""
    hf = model.hf_model
    eos = hf.generation_config.eos_token_id if getattr(hf, "generation_config", None) is not None else None
    ids = set([eos] if isinstance(eos, int) else list(eos or []))
    if model.tokenizer.eos_token_id is not None:
        ids.add(int(model.tokenizer.eos_token_id))
    return torch.tensor(sorted(ids), dtype=torch.long, device=model.device)


class Decoder:
    """Decoding state of one batch.

    Args:
        model: the hooked model (its ``hf_model`` is called).
        prompt_ids: each row's prompt token ids.
        settings: max/min new tokens and sampling.
        pad, eos: the pad id and the end-of-turn ids (``[n]`` tensor).
        state: the :class:`~circuits.steering.GenerationState` correctors read positions from.
        active: ``[batch]`` bool, rows still generating (shared with whoever stops rows).
        keep: extra forward keywords (``logits_to_keep=1`` when the model takes it).
        generator: sampling RNG; ``processor``: ``fn(input_ids, scores) -> scores``.
    """

    def __init__(self, model: HookedModel, prompt_ids: list[list[int]], settings: GenerationSettings, pad: int,
                 eos: Tensor, state: GenerationState, active: Tensor, keep: dict[str, Any],
                 generator: torch.Generator | None = None,
                 processor: Callable[[Tensor, Tensor], Tensor] | None = None) -> None:
        self.model, self.settings, self.pad, self.eos, self.state = model, settings, pad, eos, state
        self.active, self.keep, self.generator, self.processor = active, keep, generator, processor
        device = model.device
        B = len(prompt_ids)
        self.B = B
        self.width = width = max(len(p) for p in prompt_ids)
        self.steps = min(settings.max_new_tokens, max(1, model.n_ctx - width))
        ids = torch.full((B, width), pad, dtype=torch.long)
        mask = torch.zeros((B, width), dtype=torch.long)
        for r, p in enumerate(prompt_ids):
            ids[r, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[r, width - len(p):] = 1
        self.prompt_ids, self.mask = ids.to(device), mask.to(device)
        self.pos = (self.mask.cumsum(-1) - 1).clamp(min=0)
        self.attn: Tensor | None = None if bool(self.mask.all()) else self.mask
        self.inp = self.prompt_ids
        self.cache: Any = None
        self.prev: tuple[Tensor, Tensor | None, Tensor, Tensor] | None = None  # last step's inputs and logits
        self.tokens: list[Tensor] = []
        self.n_steps = 0

    # -- forward passes ------------------------------------------------------------------------------
    def begin_step(self, t: int) -> None:
        if t == 0:
            self.state.begin(self.width, attention_mask=self.mask, position_ids=self.pos)
        else:
            self.state.step(self.pos)

    def _forward(self, inp: Tensor, attn: Tensor | None, pos: Tensor) -> Tensor:
        out = self.model.hf_model(input_ids=inp, attention_mask=attn, position_ids=pos, past_key_values=self.cache,
                                  use_cache=True, **self.keep)
        self.cache = out.past_key_values
        return out.logits[:, -1, :].float()

    def forward(self) -> Tensor:
        """This step's forward over its input; returns the last position's logits ``[batch, vocab]``."""
        return self._forward(self.inp, self.attn, self.pos)

    def redo(self, t: int) -> Tensor:
        """Re-run step ``t`` (e.g. with correctors just switched on); the prefill is re-run whole."""
        if t == 0:
            self.cache = None
        else:
            self.cache.crop(-int(self.inp.shape[1]))  # drop this step's keys and values
        return self.forward()

    def rerun_previous(self, t: int) -> Tensor:
        """Drop steps ``t - 1`` and ``t`` from the cache and re-run step ``t - 1``; its logits."""
        assert self.prev is not None
        p_inp, p_attn, p_pos, _ = self.prev
        if t - 1 == 0:
            self.cache = None  # the prefill is re-run whole
            self.state.begin(self.width, attention_mask=self.mask, position_ids=p_pos)
        else:
            self.cache.crop(-(int(self.inp.shape[1]) + int(p_inp.shape[1])))
            self.state.step(p_pos)
        return self._forward(p_inp, p_attn, p_pos)

    def replace_previous(self, t: int, rows: Tensor, chosen: Tensor) -> tuple[Tensor, Tensor]:
        """Token ``t - 1`` of ``rows`` becomes ``chosen``; step ``t`` is set up to be re-run on it.
        Returns ``(taken, new)`` token ids ``[batch]``."""
        taken = self.tokens[t - 1].clone()
        new = torch.where(rows, chosen, taken)
        self.tokens[t - 1] = new
        self.active &= ~(rows & torch.isin(new, self.eos))
        self.inp = new.unsqueeze(-1)
        self.state.step(self.pos)
        return taken, new

    # -- choosing tokens -------------------------------------------------------------------------------
    def processed(self, logits: Tensor, t: int) -> Tensor:
        """Step ``t``'s logits as the token is chosen from them: EOS held back before
        ``min_new_tokens``, then the caller's ``logits_processor``."""
        if t < self.settings.min_new_tokens:
            logits[:, self.eos] = float("-inf")
        if self.processor is not None:
            ids = torch.cat([self.prompt_ids, *(x.unsqueeze(-1) for x in self.tokens[:t])], dim=-1)
            logits = self.processor(ids, logits)
            if not isinstance(logits, Tensor) or logits.shape != (self.B, logits.shape[-1]):
                raise InputError(f"logits_processor must return the scores tensor [batch, vocab], got {type(logits).__name__}")
        return logits

    def select(self, logits: Tensor) -> Tensor:
        g = self.settings
        if not g.do_sample:
            return logits.argmax(-1)
        if g.temperature != 1.0:
            logits = logits / g.temperature
        if g.top_k > 0:
            k = min(g.top_k, logits.shape[-1])
            kth = torch.topk(logits, k).values[..., -1, None]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if g.top_p < 1.0:
            sl, si = torch.sort(logits, descending=False)
            cum = sl.softmax(-1).cumsum(-1)
            remove = cum <= (1 - g.top_p)
            remove[..., -1:] = False
            logits = logits.masked_fill(remove.scatter(1, si, remove), float("-inf"))
        probs = logits.softmax(-1)
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(-1)

    def ending(self, nxt: Tensor) -> Tensor:
        """Rows whose token ``nxt`` ends their response."""
        return torch.isin(nxt, self.eos) & self.active

    def advance(self, t: int, nxt: Tensor, logits: Tensor) -> bool:
        """Emit step ``t``'s tokens (pad for stopped rows); set up step ``t + 1``. True when done."""
        nxt = torch.where(self.active, nxt, torch.full_like(nxt, self.pad))
        self.tokens.append(nxt)
        self.n_steps = t + 1
        self.active &= ~torch.isin(nxt, self.eos)
        done = t + 1 >= self.steps or not bool(self.active.any())
        if not done:
            self.prev = (self.inp, self.attn, self.pos, logits)
            self.inp = nxt.unsqueeze(-1)
            self.pos = self.pos[:, -1:] + 1
            if self.attn is not None:
                self.attn = torch.cat([self.attn, self.attn.new_ones(self.B, 1)], dim=-1)
        return done
