"""Turning texts and chats into token ids with a known response span, and batching them.

An input item is one of:

* ``str``: plain text (a statement); no chat template. Its judged span is the whole text.
* ``list[dict]``: chat messages. If the last message is the assistant's, it is the judged
  response and everything before it is rendered with the tokenizer's chat template plus the
  generation prompt; otherwise the whole chat is the prompt and the response is empty.
* ``(prompt, response)``: shorthand for a one-turn chat with that assistant response.

The prefix and the response are tokenised separately and concatenated, so the boundary is
exact and the same for every model (no guessing where the response starts after merges).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Iterator, Sequence, Union

import torch

from circuits.errors import InputError

Chat = list[dict[str, str]]
Item = Union[str, Chat, tuple[str, str]]


@dataclass(frozen=True)
class Encoded:
    """Token ids of one item and where its judged span begins.

    Attributes:
        ids: token ids (prefix then response).
        span_start: first token of the judged span (the response; 0 for plain text).
        prompt_end: number of prompt tokens (== span_start for chats, len(ids) for plain text).
    """

    ids: tuple[int, ...]
    span_start: int
    prompt_end: int


def _check_chat(chat: Chat, where: str) -> None:
    for j, m in enumerate(chat):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise InputError(f"{where}: message {j} must be a dict with 'role' and 'content', got {m!r:.80}")


def render(tokenizer: Any, item: Item, where: str = "item") -> tuple[str, str, bool]:
    """Return ``(prefix_text, response_text, is_chat)`` for one item."""
    if isinstance(item, str):
        return item, "", False
    if isinstance(item, tuple) and len(item) == 2 and all(isinstance(x, str) for x in item):
        item = [{"role": "user", "content": item[0]}, {"role": "assistant", "content": item[1]}]
    if isinstance(item, list):
        if not item:
            raise InputError(f"{where}: empty chat")
        _check_chat(item, where)
        if getattr(tokenizer, "chat_template", None) is None:
            raise InputError(f"{where}: the tokenizer has no chat template; pass plain text instead")
        if item[-1]["role"] == "assistant":
            prefix = tokenizer.apply_chat_template(item[:-1], add_generation_prompt=True, tokenize=False)
            return prefix, item[-1]["content"], True
        return tokenizer.apply_chat_template(item, add_generation_prompt=True, tokenize=False), "", True
    raise InputError(f"{where}: expected a string, a list of chat messages or a (prompt, response) pair, got {type(item).__name__}")


def check_chat_mode(chat: Any) -> None:
    if chat not in (True, False, "auto") or isinstance(chat, int) and not isinstance(chat, bool):
        raise InputError(f"chat must be True, False or 'auto', got {chat!r}")


def as_chat(tokenizer: Any, item: Item, chat: bool | str = "auto") -> Item:
    """Wrap a plain-string prompt as a one-message user chat.

    ``chat="auto"`` wraps when the tokenizer has a chat template (an instruct model fed raw text
    tends to end its turn at once); ``True`` always wraps, ``False`` never. Chats and
    ``(prompt, response)`` pairs are returned unchanged.
    """
    check_chat_mode(chat)
    if isinstance(item, str):
        has_template = getattr(tokenizer, "chat_template", None) is not None
        if chat is True or (chat == "auto" and has_template):
            return [{"role": "user", "content": item}]
    return item


def encode(tokenizer: Any, items: Sequence[Item], n_ctx: int) -> list[Encoded]:
    """Tokenise items; raises InputError naming the item if one is longer than the context."""
    out = []
    for i, item in enumerate(items):
        prefix, response, is_chat = render(tokenizer, item, where=f"item {i}")
        p_ids = tokenizer(prefix, add_special_tokens=not is_chat)["input_ids"]
        r_ids = tokenizer(response, add_special_tokens=False)["input_ids"] if response else []
        ids = tuple(p_ids) + tuple(r_ids)
        if not ids:
            raise InputError(f"item {i}: empty text")
        if len(ids) > n_ctx:
            raise InputError(f"item {i}: {len(ids)} tokens is longer than the model context of {n_ctx} tokens")
        span_start = len(p_ids) if (is_chat and r_ids) else 0
        out.append(Encoded(ids, span_start, len(p_ids)))
    return out


def pad_id(tokenizer: Any) -> int:
    pid = tokenizer.pad_token_id
    return int(pid if pid is not None else tokenizer.eos_token_id)


def batches(
    encoded: Sequence[Encoded], batch_size: int, pad: int, side: str = "right", sort: bool = True
) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """Yield ``(item_indices, input_ids, attention_mask)``; items sorted by length to cut padding."""
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].ids)) if sort else list(range(len(encoded)))
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        width = max(len(encoded[i].ids) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):
            seq = torch.tensor(encoded[i].ids, dtype=torch.long)
            if side == "right":
                ids[r, : len(seq)], mask[r, : len(seq)] = seq, 1
            else:
                ids[r, width - len(seq) :], mask[r, width - len(seq) :] = seq, 1
        yield idx, ids, mask


def encoded_hash(encoded: Sequence[Encoded]) -> str:
    h = hashlib.sha256()
    for e in encoded:
        h.update(repr((e.ids, e.span_start, e.prompt_end)).encode())
    return h.hexdigest()[:16]
