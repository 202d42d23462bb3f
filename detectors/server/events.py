"""What the worker hands the HTTP layer (token events, a finished output, a failure) and how the
HTTP layer turns them into OpenAI ``chat.completion`` / ``chat.completion.chunk`` objects.

A streamed request run alone goes through :meth:`Guard.stream`, whose events arrive token by token
(and can carry ``retract`` after a rewind or a regenerate). Requests micro-batched together go
through one :meth:`Guard.generate` call, and their token events are rebuilt from each row's
:class:`~detectors.guard.GuardOutput` (:func:`events_from_output`) with the same fields, so a client
sees the same scores either way; such events never retract (the output is already final).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable

FINISH = {"eos": "stop", "length": "length", "blocked": "content_filter", "error": "error", "regenerate": "stop"}


def finite(x: Any) -> Any:
    """JSON-safe: NaN/inf -> None, recursively."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite(v) for v in x]
    if hasattr(x, "item") and callable(x.item):  # numpy scalars
        return finite(x.item())
    return x


@dataclass
class Tok:
    """One step: the token (None for a step that blocked), its text piece, scores and actions."""

    index: int
    token_id: int | None
    text: str
    retract: int
    scores: dict[str, float]
    policy_scores: dict[str, float]
    actions: list[dict[str, Any]]


@dataclass
class Done:
    """The request's finished output (a GuardOutput, or a :class:`BareOutput` without detectors)."""

    output: Any
    batch_size: int = 1
    escalations: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Failed:
    error: BaseException


@dataclass
class BareOutput:
    """The no-detector server's output, with the GuardOutput fields the server reads."""

    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    generated_text: str = ""
    scores: dict[str, Any] = field(default_factory=dict)
    policy_scores: dict[str, Any] = field(default_factory=dict)
    actions: list[Any] = field(default_factory=list)
    decisions: list[Any] = field(default_factory=list)
    blocked: bool = False
    blocked_by: str | None = None
    correctors: list[Any] = field(default_factory=list)
    errors: list[Any] = field(default_factory=list)


def piece(tokenizer: Any, ids: list[int], shown: str) -> tuple[str, str, int]:
    """``(new full text, new piece, characters to retract)`` after the tokens ``ids`` (decoded whole,
    as :meth:`Guard.stream` does, so multi-token characters come out right)."""
    new = tokenizer.decode(ids, skip_special_tokens=True)
    if new.startswith(shown):
        return new, new[len(shown):], 0
    keep = 0
    for a, b in zip(shown, new):
        if a != b:
            break
        keep += 1
    return new, new[keep:], len(shown) - keep


def from_token_event(ev: Any) -> Tok:
    return Tok(ev.index, ev.token_id, ev.text, int(ev.retract), dict(ev.scores), dict(ev.policy_scores),
               [a.to_dict() for a in ev.actions])


def events_from_output(out: Any, tokenizer: Any) -> list[Tok]:
    """A finished output as the token events a stream of it would have shown (no retractions)."""
    ids = list(out.token_ids)
    n = max([len(ids)] + [len(v) for v in out.scores.values()])
    acts: dict[int, list[dict[str, Any]]] = {}
    for a in out.actions:
        if a.kind != "monitor" and a.token < n:
            acts.setdefault(int(a.token), []).append(a.to_dict())
    events, text = [], ""
    for t in range(n):
        scores = {k: float(v[t]) for k, v in out.scores.items() if t < len(v)}
        pol = {k: float(v[t]) for k, v in out.policy_scores.items() if t < len(v)}
        if t < len(ids):
            text, p, r = piece(tokenizer, ids[: t + 1], text)
            events.append(Tok(t, int(ids[t]), p, r, scores, pol, acts.get(t, [])))
        else:  # the step that blocked: scored, no token
            events.append(Tok(t, None, "", 0, scores, pol, acts.get(t, [])))
    return events


def late_actions(out: Any, n_events: int) -> list[dict[str, Any]]:
    """Actions not carried by a token event: monitor flags and end-of-response judgements."""
    return [a.to_dict() for a in out.actions if a.kind == "monitor" or a.token >= n_events]


class ChunkWriter:
    """Turns one request's events into ``chat.completion.chunk`` dicts.

    ``hold``: with the ``buffered`` option, how many token events are held back so that a
    retraction is applied here instead of reaching the client (2 under a rewind policy, every event
    under a regenerate policy, 0 otherwise). Without it, ``coalign.retract`` tells the client how
    many characters to delete. A block ends the stream with the refusal text; unbuffered, that chunk
    also retracts everything shown (the non-streamed answer is the refusal alone); buffered, the
    refusal follows what was shown (text the policy had passed).
    """

    def __init__(self, rid: str, model: str, created: int, hold: float = 0, buffered: bool = False) -> None:
        self.rid, self.model, self.created = rid, model, created
        self.hold, self.buffered = hold, buffered
        self.pending: list[dict[str, Any]] = []
        self.shown = 0  # characters the client holds
        self.n_events = 0

    def chunk(self, delta: dict[str, Any], finish: str | None = None, coalign: dict[str, Any] | None = None) -> dict[str, Any]:
        c: dict[str, Any] = {"id": self.rid, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                             "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if coalign is not None:
            c["coalign"] = finite(coalign)
        return c

    def first(self) -> dict[str, Any]:
        return self.chunk({"role": "assistant", "content": ""}, coalign={"request_id": self.rid})

    def token(self, ev: Tok) -> list[dict[str, Any]]:
        self.n_events += 1
        co = {"token_index": ev.index, "token_id": ev.token_id, "scores": ev.scores, "policy_scores": ev.policy_scores,
              "actions": ev.actions, "retract": ev.retract}
        c = self.chunk({"content": ev.text}, coalign=co)
        if not self.buffered:
            self.shown += len(ev.text) - ev.retract
            return [c]
        r = ev.retract
        for p in reversed(self.pending):  # apply the retraction to text not yet sent
            if r <= 0:
                break
            s = p["choices"][0]["delta"]["content"]
            cut = min(r, len(s))
            p["choices"][0]["delta"]["content"] = s[: len(s) - cut]
            r -= cut
        c["coalign"]["retract"] = r  # 0 unless it reached further back than the hold (documented: it cannot)
        self.pending.append(c)
        return self._release(self.hold)

    def _release(self, keep: float) -> list[dict[str, Any]]:
        out = []
        while self.pending and len(self.pending) > keep:
            c = self.pending.pop(0)
            self.shown += len(c["choices"][0]["delta"]["content"]) - c["coalign"]["retract"]
            out.append(c)
        return out

    def done(self, out: Any, extra: dict[str, Any]) -> list[dict[str, Any]]:
        chunks = self._release(0)
        finish = FINISH.get(out.finish_reason, "stop")
        co = {**extra, "finish_reason": out.finish_reason, "blocked": out.blocked, "blocked_by": out.blocked_by}
        if out.blocked:
            co["retract"] = 0 if self.buffered else self.shown
            chunks.append(self.chunk({"content": out.text}, finish, co))
        else:
            chunks.append(self.chunk({}, finish, co))
        return chunks


def usage(out: Any) -> dict[str, int]:
    n = len(out.token_ids)
    return {"prompt_tokens": int(out.prompt_tokens), "completion_tokens": n, "total_tokens": int(out.prompt_tokens) + n}


def sse(obj: Any) -> str:
    return "data: " + json.dumps(obj, ensure_ascii=False, allow_nan=False) + "\n\n"


def sse_all(objs: Iterable[Any]) -> str:
    return "".join(sse(o) for o in objs)
