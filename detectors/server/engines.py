"""What the model worker runs: the Guard (:class:`GuardEngine`), or plain generation with no
detectors (:class:`BareEngine`, the baseline the serving benchmark compares against).

Only the Guard's public API is used: ``Guard(...)``, ``.generate``, ``.stream``, ``.policy``,
``.names``, ``.detectors``. A request's tightened policy gets its own Guard over the same model and
detectors (cached by policy hash); requests are only batched with requests under the same policy.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from typing import Any, Callable, Sequence

import torch

from circuits.errors import CoalignError
from circuits.inputs import as_chat, encode, pad_id
from detectors.guard import Guard
from detectors.policy import Policy
from detectors.server.errors import ApiError
from detectors.server.events import BareOutput, Tok, from_token_event, piece
from detectors.server.tighten import policy_thresholds, tighten

Emit = Callable[[Any], None]


def _eos_ids(model: Any) -> list[int]:
    hf = model.hf_model
    eos = hf.generation_config.eos_token_id if getattr(hf, "generation_config", None) is not None else None
    ids = set([eos] if isinstance(eos, int) else list(eos or []))
    if model.tokenizer.eos_token_id is not None:
        ids.add(int(model.tokenizer.eos_token_id))
    return sorted(ids)


class GuardEngine:
    """The Guard over the served model; one Guard per distinct (tightened) policy."""

    def __init__(self, model: Any, detectors: Sequence[Any], policy: Policy | None = None, on_escalate: Any = None,
                 scoring: str = "calibrated", strict: bool = True, cache_size: int = 16) -> None:
        self.model = model
        self._kw = {"on_escalate": on_escalate, "scoring": scoring, "strict": strict}
        self.escalator = on_escalate if hasattr(on_escalate, "lookup") else None  # the worker routes its records
        self.guard = Guard(model, list(detectors), policy=policy, **self._kw)
        self.names: list[str] = list(self.guard.names)
        self.thresholds = policy_thresholds(self.guard.detectors, scoring)
        self._cache: "OrderedDict[str, Guard]" = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def guard_for(self, overlay: dict[str, Any] | None) -> tuple[str, Guard]:
        """The Guard a request runs under: the server's, or one with the request's tightening."""
        if not overlay:
            return "server", self.guard
        merged = tighten(self.guard.policy, overlay, self.thresholds)
        key = merged.hash
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return key, self._cache[key]
        try:
            g = Guard(self.model, self.guard.detectors, policy=merged, **self._kw)
        except CoalignError as e:
            raise ApiError(400, f"coalign.policy: {e}", "coalign.policy") from e
        with self._lock:
            self._cache[key] = g
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return key, g

    def hold(self, guard: Guard) -> float:
        """Token events a ``buffered`` stream holds back under this Guard's policy (see ChunkWriter)."""
        res = [guard.policy.resolve(n, self.thresholds[n]) for n in self.names]
        if any(r.regenerate for r in res):
            return math.inf
        return 2 if any(r.rewind for r in res) else 0

    def stream(self, guard: Guard, item: Any, kw: dict[str, Any], emit: Emit, cancelled: Callable[[], bool]) -> Any:
        events = guard.stream(item, **kw)
        try:
            for ev in events:
                if ev.done:
                    return ev.output
                emit(from_token_event(ev))
                if cancelled():
                    break
        finally:
            events.close()  # an abandoned stream removes its hooks and ends its run now
        return None

    def generate(self, guard: Guard, items: list[Any], kw: dict[str, Any]) -> list[Any]:
        return guard.generate(items, batch_size=len(items), **kw)

    def score(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        out = {}
        for d in self.guard.detectors:
            s = d.score(self.model, [messages])
            entry: dict[str, Any] = {"score": float(s[0]), "threshold": float(d.threshold), "flagged": bool(d.flag(s)[0])}
            if messages[-1]["role"] == "assistant" and hasattr(d, "token_scores"):
                entry["token_scores"] = [float(x) for x in d.token_scores(self.model, [messages])[0]]
            out[str(d.name)] = entry
        return out

    def describe(self) -> list[dict[str, Any]]:
        return [{"name": n, "id": getattr(d, "id", None), "behaviour": getattr(d, "behaviour", n), "hooks": list(d.hooks),
                 "threshold": float(d.threshold), "policy_threshold": self.thresholds[n]}
                for n, d in zip(self.names, self.guard.detectors)]

    def policy_info(self, guard: Guard | None = None) -> dict[str, Any]:
        p = (guard or self.guard).policy
        return {"hash": p.hash, "source": p.source, "red_lines": sorted(p.red_lines), "on_detector_error": p.error_mode}


class BareEngine:
    """Generation with no detectors, through ``transformers``' ``generate`` (the baseline)."""

    names: list[str] = []
    guard = None

    def __init__(self, model: Any) -> None:
        model.check_decode()
        self.model = model
        self._eos = _eos_ids(model)
        self._pad = pad_id(model.tokenizer)

    def guard_for(self, overlay: dict[str, Any] | None) -> tuple[str, None]:
        if overlay:
            raise ApiError(400, "coalign.policy: this server runs no detectors, so there is no policy to tighten", "coalign.policy")
        return "bare", None

    def hold(self, guard: Any) -> float:
        return 0

    def _ids(self, items: list[Any]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        tok = self.model.tokenizer
        enc = encode(tok, [as_chat(tok, it, "auto") for it in items], self.model.n_ctx)
        width = max(len(e.ids) for e in enc)
        ids = torch.full((len(enc), width), self._pad, dtype=torch.long)
        mask = torch.zeros((len(enc), width), dtype=torch.long)
        for r, e in enumerate(enc):
            ids[r, width - len(e.ids):] = torch.tensor(e.ids)
            mask[r, width - len(e.ids):] = 1
        return ids.to(self.model.device), mask.to(self.model.device), [len(e.ids) for e in enc]

    def _hf(self, ids: torch.Tensor, mask: torch.Tensor, kw: dict[str, Any], streamer: Any = None) -> torch.Tensor:
        steps = max(1, min(int(kw["max_new_tokens"]), self.model.n_ctx - ids.shape[1]))
        extra = {"temperature": kw["temperature"], "top_p": kw["top_p"]} if kw.get("do_sample") else {}
        if kw.get("do_sample") and kw.get("seed") is not None:
            torch.manual_seed(int(kw["seed"]))
        with torch.inference_mode():
            return self.model.hf_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=steps, do_sample=bool(kw.get("do_sample")),
                                                pad_token_id=self._pad, eos_token_id=self._eos, streamer=streamer, **extra)

    def _output(self, toks: list[int], n_prompt: int) -> BareOutput:
        e = next((i for i, x in enumerate(toks) if x in self._eos), None)
        ids = toks if e is None else toks[: e + 1]
        text = self.model.tokenizer.decode(ids, skip_special_tokens=True)
        return BareOutput(text=text, generated_text=text, token_ids=ids, finish_reason="length" if e is None else "eos", prompt_tokens=n_prompt)

    def stream(self, guard: Any, item: Any, kw: dict[str, Any], emit: Emit, cancelled: Callable[[], bool]) -> BareOutput:
        ids, mask, n = self._ids([item])
        state = {"prompt": True, "toks": [], "text": ""}
        tok, eos = self.model.tokenizer, set(self._eos)

        class _Streamer:  # transformers calls put() with the prompt, then with each new token
            def put(self, value: torch.Tensor) -> None:
                if state["prompt"]:
                    state["prompt"] = False
                    return
                t = int(value.reshape(-1)[0])
                if state["toks"] and state["toks"][-1] in eos:
                    return
                state["toks"].append(t)
                state["text"], p, r = piece(tok, state["toks"], state["text"])
                emit(Tok(len(state["toks"]) - 1, t, p, r, {}, {}, []))

            def end(self) -> None:
                pass

        self._hf(ids, mask, kw, _Streamer())
        return self._output(state["toks"], n[0])

    def generate(self, guard: Any, items: list[Any], kw: dict[str, Any]) -> list[BareOutput]:
        ids, mask, n = self._ids(items)
        out = self._hf(ids, mask, kw)
        return [self._output(out[r, ids.shape[1]:].tolist(), n[r]) for r in range(len(items))]

    def score(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        raise ApiError(400, "this server runs no detectors; there is nothing to score with")

    def describe(self) -> list[dict[str, Any]]:
        return []

    def policy_info(self, guard: Any = None) -> dict[str, Any]:
        return {"hash": None, "source": None, "red_lines": [], "on_detector_error": None}

