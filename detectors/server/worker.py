"""The model-owner worker: one thread per process runs every forward pass, fed by a queue.

The Guard is not re-entrant on one model (its hooks and KV cache belong to one run), so HTTP
handlers never touch the model: they validate, enqueue a :class:`Job` and wait for its events.
The worker takes the first job, then keeps collecting for ``batch_wait_s`` (longer, up to
``batch_wait_max_s`` or 5% of the last batch's duration, at most 1 s, while requests are still being
parsed by the HTTP side or while fewer have arrived than were collected last time: clients answered
together come back together; a lone client never waits more than ``batch_wait_s``) and runs together,
as one ``Guard.generate`` batch, the greedy chat requests that share a policy and ``max_tokens``.
Sampled requests run alone: rows of one batch share a random generator, so a sampled request
batched with others would not give what it gives alone. A streamed request that is alone in its
batch goes through ``Guard.stream`` and its events leave token by token.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from detectors.server.events import Done, Failed, events_from_output


class Cancelled(Exception):
    """The client went away before the end."""


@dataclass
class Job:
    rid: str
    kind: str  # "chat" or "score"
    req: Any
    item: Any
    emit: Callable[[Any], None]  # thread-safe: hands an event to the request's HTTP handler
    guard_key: str = "server"
    guard: Any = None
    record: dict[str, Any] = field(default_factory=dict)  # filled by the worker and the escalator for the audit
    cancelled: bool = False


class Worker:
    def __init__(self, engine: Any, max_batch: int = 8, batch_wait_s: float = 0.005, batch_wait_max_s: float = 0.05,
                 incoming: Callable[[], int] = lambda: 0, on_batch: Callable[[int], None] = lambda n: None) -> None:
        self.engine = engine
        self.max_batch = int(max_batch)
        self.batch_wait_s, self.batch_wait_max_s = float(batch_wait_s), float(batch_wait_max_s)
        self.incoming, self.on_batch = incoming, on_batch
        self.q: "queue.Queue[Job | None]" = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="coalign-model-worker", daemon=True)
        self.batches = 0
        self._expect = 1  # requests collected last time
        self._last_s = 0.0  # how long the last batch took

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self.q.put(None)
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def depth(self) -> int:
        return self.q.qsize()

    def submit(self, job: Job) -> None:
        self.q.put(job)

    # -- the loop -------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            first = self.q.get()
            if first is None:
                return
            jobs, stop = self._collect(first)
            self._serve(jobs)
            if stop:
                return

    def _collect(self, first: Job) -> tuple[list[Job], bool]:
        jobs = [first]
        start = time.monotonic()
        while len(jobs) < self.max_batch:
            waited = time.monotonic() - start
            # wait longer while requests are still being parsed, or while fewer have come than came last
            # time (clients that were answered together tend to come back together)
            limit = self.batch_wait_s
            if self.incoming() > 0 or len(jobs) < self._expect:
                # a straggler left behind waits a whole batch; waiting up to 5% of one costs the others little
                limit = max(self.batch_wait_max_s, min(1.0, 0.05 * self._last_s))
            if waited >= limit:
                try:  # whatever is already queued still joins
                    j = self.q.get_nowait()
                except queue.Empty:
                    break
            else:
                try:
                    j = self.q.get(timeout=min(limit - waited, 0.005))
                except queue.Empty:
                    continue
            if j is None:
                return jobs, True
            jobs.append(j)
        self._expect = len(jobs)
        return jobs, False

    def _serve(self, jobs: list[Job]) -> None:
        t0 = time.monotonic()
        try:
            self._serve_groups(jobs)
        finally:
            self._last_s = time.monotonic() - t0

    def _serve_groups(self, jobs: list[Job]) -> None:
        groups: dict[tuple[Any, ...], list[Job]] = {}
        for j in jobs:
            if j.cancelled:
                j.emit(Failed(Cancelled("the client went away before generation began")))
                continue
            if j.kind == "score" or j.req.do_sample:
                key: tuple[Any, ...] = ("alone", j.rid)
            else:
                key = ("chat", j.guard_key, j.req.max_tokens)
            groups.setdefault(key, []).append(j)
        for key, js in groups.items():
            try:
                if js[0].kind == "score":
                    js[0].emit(Done(self.engine.score(js[0].item)))
                else:
                    self._chat(js)
            except Exception as e:  # the worker survives any request's failure; the request reports it
                for j in js:
                    j.emit(Failed(e))

    def _chat(self, js: list[Job]) -> None:
        esc = getattr(self.engine, "escalator", None)
        if esc is not None:  # the webhook's record goes to the request whose row escalated
            by_item = {id(j.item): j.record for j in js}
            esc.lookup = lambda ctx: by_item.get(id(getattr(ctx, "prompt", None)), js[0].record if len(js) == 1 else None)
        self.batches += 1
        self.on_batch(len(js))
        kw = js[0].req.gen_kwargs()
        for j in js:
            j.record["batch_size"] = len(js)
        if len(js) == 1 and js[0].req.stream:
            j = js[0]
            out = self.engine.stream(j.guard, j.item, kw, j.emit, lambda: j.cancelled)
            j.emit(Done(out) if out is not None else Failed(Cancelled("the client went away mid-stream")))
            return
        outs = self.engine.generate(js[0].guard, [j.item for j in js], kw)
        tok = self.engine.model.tokenizer
        for j, o in zip(js, outs):
            if j.req.stream:
                for ev in events_from_output(o, tok):
                    j.emit(ev)
            j.emit(Done(o, len(js)))
