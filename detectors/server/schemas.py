"""Validating OpenAI chat-completion and score requests into plain dataclasses.

Checked by hand rather than with pydantic models so that every refusal is one line naming the
field (``messages[2].content``, ``max_tokens``) and so that the fields the official client sends by
default pass, while features this server does not implement (``tools``, ``n > 1``, ``stop``,
``logprobs``) are refused instead of being silently ignored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from detectors.server.errors import ApiError

ROLES = ("system", "user", "assistant", "developer")

# Request fields that change what is generated and that this server does not implement: refused when
# set to anything but their OpenAI default, so a client never gets an answer it did not ask for.
_UNSUPPORTED_DEFAULTS: dict[str, Any] = {
    "tools": None, "tool_choice": None, "functions": None, "function_call": None, "logprobs": False,
    "top_logprobs": None, "stop": None, "logit_bias": None, "presence_penalty": 0, "frequency_penalty": 0,
    "audio": None, "modalities": None, "prediction": None,
}


@dataclass(frozen=True)
class Limits:
    """What a request may ask for. ``max_prompt_tokens`` is checked after tokenising."""

    max_body_bytes: int = 1 << 20
    max_messages: int = 256
    max_prompt_tokens: int = 2048
    max_tokens: int = 512
    default_max_tokens: int = 128


@dataclass
class ChatRequest:
    """A validated chat completion request."""

    model: str
    messages: list[dict[str, str]]
    max_tokens: int
    stream: bool = False
    include_usage: bool = False
    buffered: bool = False
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    policy: dict[str, Any] | None = None  # the request's tightening overlay (coalign.policy)
    user: str | None = None
    raw_settings: dict[str, Any] = field(default_factory=dict)

    def gen_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``Guard.generate`` / ``Guard.stream``."""
        kw: dict[str, Any] = {"max_new_tokens": self.max_tokens, "do_sample": self.do_sample}
        if self.do_sample:
            kw.update(temperature=self.temperature, top_p=self.top_p, seed=self.seed)
        return kw


def _num(body: Mapping[str, Any], key: str, lo: float, hi: float, default: float | None) -> float | None:
    v = body.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        raise ApiError(400, f"{key} must be a number, got {v!r:.40}", key)
    if not lo <= float(v) <= hi:
        raise ApiError(400, f"{key} must be between {lo:g} and {hi:g}, got {v!r}", key)
    return float(v)


def _int(body: Mapping[str, Any], key: str, lo: int, hi: int) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise ApiError(400, f"{key} must be an integer, got {v!r:.40}", key)
    if not lo <= v <= hi:
        raise ApiError(400, f"{key} must be between {lo} and {hi}, got {v}", key)
    return v


def parse_messages(body: Mapping[str, Any], limits: Limits) -> list[dict[str, str]]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise ApiError(400, "messages must be a non-empty list of {role, content} objects", "messages")
    if len(msgs) > limits.max_messages:
        raise ApiError(400, f"messages has {len(msgs)} entries; this server accepts at most {limits.max_messages}", "messages")
    out = []
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, Mapping):
            raise ApiError(400, f"{where} must be an object with role and content", where)
        role = m.get("role")
        if role not in ROLES:
            raise ApiError(400, f"{where}.role must be one of {', '.join(ROLES)}, got {role!r:.40}", f"{where}.role")
        content = m.get("content")
        if isinstance(content, list):  # content parts: only text is understood
            texts = []
            for j, part in enumerate(content):
                if not isinstance(part, Mapping) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise ApiError(400, f"{where}.content[{j}] must be a text part {{type: 'text', text: ...}}", f"{where}.content")
                texts.append(part["text"])
            content = "".join(texts)
        if not isinstance(content, str):
            raise ApiError(400, f"{where}.content must be a string, got {type(content).__name__}", f"{where}.content")
        out.append({"role": "system" if role == "developer" else str(role), "content": content})
    return out


def _extension(body: Mapping[str, Any]) -> dict[str, Any]:
    ext = body.get("coalign") or {}
    if not isinstance(ext, Mapping):
        raise ApiError(400, "coalign must be an object {policy?, buffered?}", "coalign")
    unknown = sorted(set(ext) - {"policy", "buffered"})
    if unknown:
        raise ApiError(400, f"coalign has unknown key(s) {', '.join(unknown)} (expected policy, buffered)", "coalign")
    if ext.get("policy") is not None and not isinstance(ext["policy"], Mapping):
        raise ApiError(400, "coalign.policy must be an object (the keys of a policy file)", "coalign.policy")
    return dict(ext)


def check_model(body: Mapping[str, Any], served: str) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "model must be a string naming the served model", "model")
    if model != served:
        raise ApiError(404, f"model {model!r:.80} is not served here (this server serves {served!r})", "model", "not_found_error")
    return model


def parse_chat(body: Any, limits: Limits, served: str) -> ChatRequest:
    """Validate a decoded JSON body; raises :class:`ApiError` (400/404) naming the field."""
    if not isinstance(body, Mapping):
        raise ApiError(400, "the request body must be a JSON object")
    model = check_model(body, served)
    messages = parse_messages(body, limits)
    for key, default in _UNSUPPORTED_DEFAULTS.items():
        v = body.get(key)
        if v is not None and v != default and not (v == [] and default is None):
            raise ApiError(400, f"{key} is not supported by this server", key)
    n = _int(body, "n", 1, 1)
    assert n in (None, 1)
    rf = body.get("response_format")
    if rf is not None and (not isinstance(rf, Mapping) or rf.get("type") != "text"):
        raise ApiError(400, "response_format: only {type: 'text'} is supported", "response_format")
    a = _int(body, "max_tokens", 1, limits.max_tokens)
    b = _int(body, "max_completion_tokens", 1, limits.max_tokens)
    max_tokens = b if b is not None else a if a is not None else limits.default_max_tokens
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise ApiError(400, f"stream must be true or false, got {stream!r:.20}", "stream")
    opts = body.get("stream_options") or {}
    if not isinstance(opts, Mapping):
        raise ApiError(400, "stream_options must be an object", "stream_options")
    if opts and not stream:
        raise ApiError(400, "stream_options is only allowed with stream: true", "stream_options")
    ext = _extension(body)
    buffered = opts.get("buffered", ext.get("buffered", False))
    if not isinstance(buffered, bool):
        raise ApiError(400, "buffered must be true or false", "stream_options.buffered")
    temperature = _num(body, "temperature", 0.0, 2.0, None)
    top_p = _num(body, "top_p", 1e-6, 1.0, 1.0)
    seed = _int(body, "seed", -(2**63), 2**63 - 1)
    # Greedy unless a positive temperature is asked for: a guard's verdicts should be reproducible by default.
    do_sample = temperature is not None and temperature > 0
    user = body.get("user")
    return ChatRequest(
        model=model,
        messages=messages,
        max_tokens=int(max_tokens),
        stream=stream,
        include_usage=bool(opts.get("include_usage", False)),
        buffered=buffered,
        do_sample=do_sample,
        temperature=float(temperature) if do_sample else 1.0,
        top_p=float(top_p or 1.0),
        seed=seed,
        policy=dict(ext["policy"]) if ext.get("policy") is not None else None,
        user=user if isinstance(user, str) else None,
        raw_settings={"max_tokens": int(max_tokens), "temperature": temperature, "top_p": top_p, "seed": seed,
                      "stream": stream, "buffered": buffered},
    )


@dataclass
class ScoreRequest:
    model: str
    messages: list[dict[str, str]]


def parse_score(body: Any, limits: Limits, served: str) -> ScoreRequest:
    """``{model, messages}``: the messages to score; a last assistant message is the judged response."""
    if not isinstance(body, Mapping):
        raise ApiError(400, "the request body must be a JSON object")
    model = check_model(body, served)
    unknown = sorted(set(body) - {"model", "messages", "user"})
    if unknown:
        raise ApiError(400, f"unknown field(s) {', '.join(unknown)} (expected model, messages)", unknown[0])
    return ScoreRequest(model, parse_messages(body, limits))
