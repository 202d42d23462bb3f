"""The Guard: generation with every detector scoring every new token, and a policy acting on it.

::

    from circuits import load_model
    from detectors import Detector, Guard, Policy

    model = load_model("smollm2-135m-instruct")
    guard = Guard(model, [Detector.load("dec/", model), Detector.load("syc/", model)],
                  policy=Policy.load("policy.toml"), on_escalate=ask_a_person, audit="audit.jsonl")
    out = guard.generate(["prompt or chat", ...], max_new_tokens=64)
    out[0].text, out[0].scores["deception"], out[0].actions

**How scoring works.** One plain PyTorch forward hook per distinct hook name read by the
detectors (not one per detector) computes ``acts[:, -1, :] @ W`` for every detector reading that
hook at once (weights stacked once, at construction) and adds it into a preallocated
``[step, batch, detector]`` buffer. Nothing else runs inside the forward and there is no second
pass: the scores of step ``t`` are ready when the logits of step ``t`` are. Detectors that are
not linear read-outs are handled in the same pass: a prompt-conditioned detector
(:class:`~detectors.conditional.ConditionalDetector`, anything with ``readout(prompt_acts)``) has
its per-row read-out bound once from the last prompt token at prefill and is then a dot product
per token; any other detector (a :class:`~detectors.detector.Detector` subclass overriding
``score_tensor``, or any object with ``name``, ``hooks``, ``threshold`` and ``score_tensor``) gets
the last-token activations of its hooks from the same forward and is scored right after it.

Detectors read the activation *before* any Guard corrector at the same hook edits it (the scoring
hooks are attached first), so re-scoring after a correction measures its effect on later tokens,
not the trivial shift of the edited activation itself.

**What a token's score is.** ``out.scores[name][t]`` is read from the forward pass that produced
generated token ``t``: the residual stream at the position before it (``t = 0`` is the last
prompt token, i.e. the prefill is scored too). The policy therefore acts *before* token ``t`` is
emitted: a blocked row never shows the token that tripped the block. When a correction started
at step ``t`` takes effect is the policy's ``timing`` (``next``: from token ``t + 1``;
``immediate``: from token ``t``; ``rewind``: from token ``t - 1``, taken back and re-chosen;
``regenerate``: the response again from its first token), described once in
:data:`detectors.policy_knobs.TIMINGS`. Under ``rewind`` the action records ``taken_back`` and
``replaced_by``, ``out.scores[t]`` is the re-chosen token's and ``out.policy_scores[t]`` what the
policy acted on, and a stream's next event has ``retract`` set. A blocked
row's scores have one entry more than its tokens (the step that blocked it).

**What the policy acts on.** A detector calibrated on the mean over a response
(``select="response_mean"``, the default for chats) and stream-calibrated at training
(``Detector.stream_threshold``) is judged by the **running mean** of its scores over the response
tokens so far (from step 1: step 0 reads the last prompt token), restarted when a correction for
it starts, once it covers ``stream_warmup`` tokens (NaN in ``policy_scores`` before; a response
that ends sooner is judged on its whole mean before its end-of-turn token is emitted), against
``stream_threshold``: the threshold at which at most ``fpr`` of benign control responses would ever
trigger while being generated. Single token scores swing far more than a response mean, so
comparing them with the item-level threshold would flag most benign generations. Other detectors
(last-token or max selections, hand-made ones, ``Guard(scoring="token")``) are judged token by
token against ``threshold``. ``out.scores`` always holds the raw token scores and
``out.policy_scores`` the statistic the policy saw.

**Decoding.** A small greedy/sampling loop over ``hf_model(...)`` with the KV cache, left padding
and position ids from the attention mask, exactly as ``transformers``' ``generate`` feeds the
model (greedy outputs are token-identical to ``hf_model.generate``; see the tests). A check of
the step's scores against the lowest action threshold costs one small comparison per step; the
Python policy logic runs only on steps where some row is above it.

**Cleanup.** Hooks (scoring and correctors) are attached at the start of each decode step and
removed at its end, in ``finally`` on every path (detector, corrector or callback exceptions,
``KeyboardInterrupt``): between steps, e.g. while a :meth:`Guard.stream` consumer holds a paused or
abandoned iterator, the model carries no hook of the Guard's and runs exactly as the user's model.
The audit record of every row is written when its run ends (finished, failed, or the stream closed
or garbage-collected).

**Threads.** One Guard, or several Guards on one model, may be used from several threads, and
several streams may be interleaved in one thread: each step runs under the model's lock
(:func:`circuits.generation_lock.model_lock`), so steps of different runs are serialised and no run
scores or steers another's forward passes. The results are exactly the sequential ones; the
throughput is not higher than one thread's. An ``on_escalate`` callback runs inside the step (with
the lock held, so other runs on the model wait for the person); generating with the same model from
inside it raises :class:`~circuits.errors.InputError`. Code outside coalign that runs the same
model concurrently should hold ``model_lock(model)`` too.

The policy's actions (correct, escalate, block, detector failures) are in
:mod:`detectors.guard_actions`, the outputs and audit records in :mod:`detectors.guard_results`,
the per-batch state and the scoring hooks in :mod:`detectors.guard_run`.
"""

from __future__ import annotations

import contextlib
import math
import sys
import warnings
import weakref
from dataclasses import replace
from inspect import signature
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor

from circuits.errors import InputError
from circuits.generation_lock import model_lock
from circuits.hooked_model import HookedModel
from circuits.inputs import Item, as_chat, check_chat_mode, encode, pad_id, render
from detectors.audit import AuditLog
from detectors.guard_actions import PolicyActions
from detectors.guard_results import GuardResults
from detectors.guard_run import BatchRun, Scorer, as_items
from detectors.guard_types import (
    Action,
    DetectorFailure,
    EscalationContext,
    GenerationSettings,
    GuardOutput,
    HumanDecision,
    Prompt,
    TokenEvent,
)
from detectors.policy import (
    TIERS,
    Policy,
    PolicyError,
    Resolved,
    check_not_relaxed,
)
from detectors.regenerate import end_policy, merge
from detectors.router import Router

__all__ = ["Action", "DetectorFailure", "EscalationContext", "GenerationSettings", "Guard", "GuardOutput", "HumanDecision",
           "TokenEvent"]


def _check_processor(fn: Any) -> Any:
    if fn is not None and not callable(fn):
        raise InputError(f"logits_processor must be callable (input_ids, scores) -> scores, got {type(fn).__name__}")
    return fn


def _settings(settings: GenerationSettings | None, *args: Any) -> GenerationSettings:
    """The one settings object of a call: ``settings=`` or the keywords, not both."""
    made = GenerationSettings.make(*args)
    if settings is None:
        return made
    if not isinstance(settings, GenerationSettings):
        raise InputError(f"settings must be a GenerationSettings, got {type(settings).__name__}")
    if made != GenerationSettings():
        raise InputError("give settings= or the decoding keyword arguments, not both")
    return settings


def _runner_up(logits: Tensor, taken: int) -> int | None:
    """The best token other than ``taken`` under these (processed) logits; None if none is allowed."""
    top = torch.topk(logits, 2)
    for v, i in zip(top.values.tolist(), top.indices.tolist()):
        if i != taken and v > float("-inf"):
            return int(i)
    return None


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


# --------------------------------------------------------------------------------------------
# the Guard
# --------------------------------------------------------------------------------------------
class Guard(PolicyActions, GuardResults):
    """Generation guarded by detectors under a policy.

    Args:
        model: an HF-backed hooked model (:func:`circuits.load_model`).
        detectors: detectors to run on every token (names must be unique).
        policy: a :class:`Policy`, a policy file path, or None for the packaged default (monitor).
        on_escalate: ``fn(EscalationContext) -> Decision | "allow" | "correct" | "block"``; called
            synchronously (generation waits). Without it an escalation resolves to ``block``.
        router: maps flags to correctors (default :class:`Router`).
        audit: an :class:`AuditLog`, a path for one, or None.
        strict: check that each detector was trained on exactly this model's weights.
        chat: ``"auto"`` wraps plain-string prompts as a user message when the tokenizer has a chat
            template; ``True`` always, ``False`` never (strings are raw text).
        batch_size: default prompts per batch in :meth:`generate`.
        scoring: ``"calibrated"`` (default): stream-calibrated mean detectors are judged by the
            running mean of their token scores, the others token by token (see the module
            docstring); ``"token"``: every detector token by token against its item threshold.

    Usable as a wrapper (``guard.generate(...)``, ``guard(...)``) or a context manager
    (``with Guard(...) as guard:``; on exit any stream still open is closed, which writes its
    audit records). Thread-safe by serialising steps per model (see "Threads" in the module docstring).
    """

    def __init__(
        self,
        model: HookedModel,
        detectors: Sequence[Any],
        policy: Policy | str | Path | None = None,
        on_escalate: Callable[[EscalationContext], Any] | None = None,
        router: Router | None = None,
        audit: AuditLog | str | Path | None = None,
        strict: bool = True,
        chat: bool | str = "auto",
        batch_size: int = 8,
        scoring: str = "calibrated",
    ) -> None:
        if not callable(getattr(model, "check_decode", None)):
            raise InputError(f"Guard needs a coalign model (circuits.load_model / from_hf), got {type(model).__name__}")
        model.check_decode()
        self.model = model
        self.detectors = list(detectors)
        if not self.detectors:
            raise InputError("Guard needs at least one detector")
        names = [getattr(d, "name", None) for d in self.detectors]
        for d, name in zip(self.detectors, names):
            for attr in ("hooks", "threshold", "score_tensor"):
                if not hasattr(d, attr):
                    raise InputError(f"detector {name!r} has no {attr!r}; pass Detector objects")
            if hasattr(d, "check_model"):
                d.check_model(model, strict=strict)
            else:
                for h in d.hooks:
                    model.check_hook(h)
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise InputError(f"detector names must be unique in a Guard; repeated: {', '.join(map(str, dup))} (set .name)")
        self.names: list[str] = [str(n) for n in names]
        self.on_escalate = on_escalate
        self.router = router or Router()
        self.audit = AuditLog(audit) if isinstance(audit, (str, Path)) else audit
        check_chat_mode(chat)
        self.chat = chat
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.batch_size = int(batch_size)
        self._scorer = Scorer(self.detectors, model.d_model)
        hf = model.hf_model
        self._dtype = next(hf.parameters()).dtype
        self._keep = {"logits_to_keep": 1} if "logits_to_keep" in signature(hf.forward).parameters else {}
        eos = hf.generation_config.eos_token_id if getattr(hf, "generation_config", None) is not None else None
        eos_ids = set([eos] if isinstance(eos, int) else list(eos or []))
        if model.tokenizer.eos_token_id is not None:
            eos_ids.add(int(model.tokenizer.eos_token_id))
        self._eos = torch.tensor(sorted(eos_ids), dtype=torch.long, device=model.device)
        self._pad = pad_id(model.tokenizer)
        if scoring not in ("calibrated", "token"):
            raise InputError(f"scoring must be 'calibrated' or 'token', got {scoring!r}")
        self.scoring = scoring
        mean = [scoring == "calibrated" and bool(getattr(d, "streams_mean", False)) for d in self.detectors]
        self._mean = torch.tensor(mean, dtype=torch.bool, device=model.device)
        self._mean_any = any(mean)
        self._warmup = torch.tensor([float(d.stream_warmup) if m else 1.0 for d, m in zip(self.detectors, mean)],
                                    device=model.device)
        # the number "threshold" means in the policy: the calibration of the statistic acted on
        self._thresholds = {n: float(d.stream_threshold if m else d.threshold) for n, d, m in zip(self.names, self.detectors, mean)}
        self._streams: "weakref.WeakSet[Any]" = weakref.WeakSet()
        if policy is None:
            policy = Policy.default()
        elif isinstance(policy, (str, Path)):
            policy = Policy.load(policy)
        self._policy: Policy = policy
        self._locked: dict[str, float] = {}
        self._apply_policy(policy)
        self._locked = {r.name: r.block for r in self._res if r.red_line}
        self._meta_model = {"id": model.model_id, "fingerprint": model.fingerprint}
        self._meta_dets = [
            {
                "name": n,
                "behaviour": getattr(d, "behaviour", n),
                "id": getattr(d, "id", None),
                "threshold": float(d.threshold),
                "policy_threshold": self._thresholds[n],
                "policy_statistic": "running_mean" if bool(self._mean[j]) else "token",
                "hooks": list(d.hooks),
                "probe_kind": getattr(d, "probe_kind", type(d).__name__),
                "created": getattr(d, "created", None),
                "model_id": getattr(d, "model_id", None),
            }
            for j, (n, d) in enumerate(zip(self.names, self.detectors))
        ]

    # -- policy ---------------------------------------------------------------------------------
    @property
    def policy(self) -> Policy:
        return self._policy

    @policy.setter
    def policy(self, new: Policy) -> None:
        """Replace the policy; raises PolicyError if a red line would be relaxed."""
        check_not_relaxed(self._policy, new, self._thresholds)
        self._apply_policy(new)

    def load_policy(self, path: str | Path) -> Policy:
        """Merge a later policy file on top of the current one (red lines cannot be relaxed)."""
        self.policy = self._policy.merge(Policy.load(path))
        return self._policy

    def _lock_red_line(self, r: Resolved, policy: Policy) -> Resolved:
        """Belt and braces: a red line's block threshold is finite and never rises above where it
        started, whatever the policy says (comparisons written so that NaN cannot pass)."""
        lock = self._locked.get(r.name)
        if not math.isfinite(r.block):
            raise PolicyError(f"{policy.source}: red line {r.name!r}: block threshold resolves to {r.block} "
                              f"(detector threshold {self._thresholds[r.name]}); a red line needs a finite one")
        if lock is not None and not (r.block <= lock):
            r = replace(r, block=lock)
        return replace(r, red_line=True)

    def _apply_policy(self, policy: Policy) -> None:
        missing = sorted(set(policy.red_lines) - set(self.names))
        if missing:
            raise PolicyError(f"red line(s) {', '.join(map(repr, missing))} have no detector in this Guard (detectors: {', '.join(self.names)})")
        res = []
        for name, det in zip(self.names, self.detectors):
            r = policy.resolve(name, self._thresholds[name])
            if name in self._locked or r.red_line:
                r = self._lock_red_line(r, policy)
            if math.isfinite(r.correct) or math.isfinite(r.escalate):
                self.router.validate(r.corrector, det, where=policy.source)
            res.append(r)
        self._res_end = end_policy(policy, self.names, self.detectors, res)
        self._policy = policy
        self._res = res
        device = self.model.device
        self._thr_act = torch.tensor([r.action_threshold for r in res], dtype=torch.float32, device=device)
        self._policy_meta = {
            "hash": policy.hash,
            "source": policy.source,
            "red_lines": sorted(policy.red_lines),
            "on_detector_error": policy.error_mode,
            "tiers": {r.name: {t: (getattr(r, t) if math.isfinite(getattr(r, t)) else None) for t in TIERS} for r in res},
        }

    # -- public generation API ------------------------------------------------------------------
    def generate(
        self,
        items: Item | Sequence[Item],
        max_new_tokens: int = 64,
        *,
        min_new_tokens: int = 0,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        batch_size: int | None = None,
        correct: bool | None = None,
        logits_processor: Callable[[Tensor, Tensor], Tensor] | None = None,
        settings: GenerationSettings | None = None,
    ) -> list[GuardOutput]:
        """Generate for each prompt with the detectors and the policy on.

        Args:
            items: prompts (text, chat, or (prompt, partial response)); a single one is accepted.
            max_new_tokens: tokens per prompt at most.
            min_new_tokens: EOS is suppressed before this many tokens (as in ``transformers``).
            do_sample, temperature, top_k, top_p, seed: sampling (greedy by default).
            batch_size: prompts per batch (left padded; sorted by length to cut padding).
            correct: None = as the policy says; True = every detector's corrector on from the
                first generated token for every row (unconditional steering, for A/B studies);
                False = never correct (the correct tier is only recorded).
            logits_processor: ``fn(input_ids [batch, seq], scores [batch, vocab]) -> scores``, applied
                to each step's logits before the token is chosen (a ``transformers``
                ``LogitsProcessorList`` works), e.g. to allow only the answer letters of a
                multiple-choice question. ``input_ids`` are the left-padded prompts and the
                tokens chosen so far.
            settings: a :class:`GenerationSettings` instead of the decoding keywords above (the
                same object works for :meth:`stream`).

        Returns:
            One :class:`GuardOutput` per prompt, in order.
        """
        gen = _settings(settings, max_new_tokens, min_new_tokens, do_sample, temperature, top_k, top_p, seed, correct)
        _check_processor(logits_processor)
        bs = self.batch_size if batch_size is None else batch_size
        if isinstance(bs, bool) or not isinstance(bs, int) or bs < 1:
            raise InputError(f"batch_size must be an integer >= 1, got {bs!r}")
        prompts = self._prepare(as_items(items), gen)
        generator = self._generator(gen)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i].enc.ids))
        outs: list[GuardOutput | None] = [None] * len(prompts)
        regen: dict[int, list[int]] = {}  # prompt index -> detectors whose finished response was flagged
        for s in range(0, len(order), bs):
            chunk = order[s : s + bs]
            run = self._new_run([prompts[i] for i in chunk], gen, generator)
            run.processor = logits_processor
            for _ in self._steps(run):
                pass
            for i, o in zip(chunk, run.outputs):
                outs[i] = o
            for b, j in run.regen:
                regen.setdefault(chunk[b], []).append(j)
        if regen:
            self._regenerate(outs, prompts, regen, gen, logits_processor, bs, generator)
        return outs  # type: ignore[return-value]

    def _regenerate(self, outs: list[GuardOutput | None], prompts: list[Prompt], regen: dict[int, list[int]], gen: GenerationSettings,
                    processor: Any, bs: int, generator: torch.Generator | None) -> None:
        """Generate the rows ``timing = "regenerate"`` flagged again, each with its detectors'
        correctors on from the first token (see :mod:`detectors.regenerate`)."""
        order = sorted(regen, key=lambda i: len(prompts[i].enc.ids))
        for s in range(0, len(order), bs):
            chunk = order[s : s + bs]
            run = self._new_run([prompts[i] for i in chunk], gen, generator)
            run.processor = processor
            run.attempt = 2
            run.force = {b: regen[i] for b, i in enumerate(chunk)}
            for _ in self._steps(run):
                pass
            for i, o in zip(chunk, run.outputs):
                outs[i] = merge(outs[i], o)  # type: ignore[arg-type]

    __call__ = generate

    def stream(
        self,
        item: Item,
        max_new_tokens: int = 64,
        *,
        min_new_tokens: int = 0,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        correct: bool | None = None,
        logits_processor: Callable[[Tensor, Tensor], Tensor] | None = None,
        settings: GenerationSettings | None = None,
    ) -> Iterator[TokenEvent]:
        """Generate for one prompt, yielding a :class:`TokenEvent` per token with its scores and
        actions, then a final event with ``done=True`` and the :class:`GuardOutput`.

        Closing the iterator early (``break``) removes the hooks and writes the audit record.
        Arguments as for :meth:`generate`.
        """
        items = as_items(item)
        if len(items) != 1:
            raise InputError("Guard.stream takes one prompt")
        gen = _settings(settings, max_new_tokens, min_new_tokens, do_sample, temperature, top_k, top_p, seed, correct)
        prompts = self._prepare(items, gen)
        run = self._new_run(prompts, gen, self._generator(gen))
        run.processor = _check_processor(logits_processor)
        return self._stream(run)

    def _stream(self, run: BatchRun) -> Iterator[TokenEvent]:
        shown = yield from self._stream_run(run, 0)
        out = run.outputs[0]
        if run.regen:  # ``timing = "regenerate"``: the next event retracts what the first attempt showed
            again = self._new_run(run.prompts, run.gen, run.generator)
            again.processor, again.attempt = run.processor, 2
            again.force = {0: [j for _, j in run.regen]}
            yield from self._stream_run(again, len(shown))
            out = merge(out, again.outputs[0])
        yield TokenEvent(len(out.token_ids), None, "", {}, [a for a in out.actions if a.kind == "monitor"], done=True, output=out)

    def _stream_run(self, run: BatchRun, shown: int) -> Iterator[TokenEvent]:
        """One attempt's events; ``shown``: characters of an earlier attempt still on screen, which
        the first event retracts. Returns the text this attempt showed."""
        steps = self._steps(run)
        self._streams.add(steps)
        tok = self.model.tokenizer
        text = ""
        n_actions = 0
        try:
            for t in steps:
                acts = run.actions[0][n_actions:]
                n_actions = len(run.actions[0])
                scores = dict(zip(self.names, run.buf[t, 0].tolist()))
                pol = dict(zip(self.names, run.stat[t, 0].tolist()))
                if run.blocked_at[0] == t or run.stopped_at[0] == t:
                    yield TokenEvent(t, None, "", scores, acts, policy_scores=pol, retract=shown)
                    shown = 0
                    continue
                tid = int(run.tokens[t][0])
                ids = [int(x[0]) for x in run.tokens[: t + 1]]
                new = tok.decode(ids, skip_special_tokens=True)
                keep = 0 if new.startswith(text) else _common_prefix(text, new)
                retract = 0 if new.startswith(text) else len(text) - keep
                piece, text = new[len(text) - retract:], new
                yield TokenEvent(t, tid, piece, scores, acts, policy_scores=pol, retract=retract + shown)
                shown = 0
        finally:
            steps.close()
        return text

    # -- context manager ------------------------------------------------------------------------
    def close(self) -> None:
        """Close any stream still open (removing its hooks, writing its audit records)."""
        for g in list(self._streams):
            g.close()

    def __enter__(self) -> "Guard":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- preparation ----------------------------------------------------------------------------
    def _prepare(self, items: list[Item], gen: GenerationSettings | None = None) -> list[Prompt]:
        wrapped = [as_chat(self.model.tokenizer, it, self.chat) for it in items]
        try:
            enc = encode(self.model.tokenizer, wrapped, self.model.n_ctx)
        except InputError as e:  # e.g. one prompt longer than the context: the whole call is refused, on the record
            if self.audit is not None:
                self._write_rejection(wrapped, gen, e)
            raise
        out = []
        for i, (it, w, e) in enumerate(zip(items, wrapped, enc)):
            prefix, response, _ = render(self.model.tokenizer, w, where=f"item {i}")
            out.append(Prompt(it, e, prefix + response))
        return out

    def _new_run(self, prompts: list[Prompt], gen: GenerationSettings, generator: torch.Generator | None) -> BatchRun:
        return BatchRun(prompts, gen, generator, res=self._res, thr_act=self._thr_act, policy_meta=self._policy_meta,
                        error_mode=self._policy.error_mode, score_bias=self._scorer.bias, device=self.model.device)

    def _generator(self, gen: GenerationSettings) -> torch.Generator | None:
        if not gen.do_sample or gen.seed is None:
            return None
        g = torch.Generator(device=self.model.device)
        g.manual_seed(int(gen.seed))
        return g

    # -- the decode loop ------------------------------------------------------------------------
    def _steps(self, run: BatchRun) -> Iterator[int]:
        """Run one batch; yields the step index after each step; fills ``run.outputs``."""
        model = self.model
        device = model.device
        width = max(len(p.enc.ids) for p in run.prompts)
        steps = min(run.steps, max(1, model.n_ctx - width))
        ids = torch.full((run.B, width), self._pad, dtype=torch.long)
        mask = torch.zeros((run.B, width), dtype=torch.long)
        for r, p in enumerate(run.prompts):
            n = len(p.enc.ids)
            ids[r, width - n:] = torch.tensor(p.enc.ids, dtype=torch.long)
            mask[r, width - n:] = 1
        ids, mask = ids.to(device), mask.to(device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        attn: Tensor | None = None if bool(mask.all()) else mask
        lock = model_lock(model)
        score_fns = self._scorer.hook_fns(model, run, self._dtype)
        try:
            cache = None
            inp = ids
            run.prompt_ids = ids
            prev: tuple[Tensor, Tensor | None, Tensor, Tensor] | None = None  # the last step's inputs and logits (rewind)
            t = 0
            while True:
                # hooks exist only inside a step, under the model's lock: between steps (a stream
                # paused or abandoned by its consumer) the model is exactly the user's model, and
                # another thread's run on it cannot score or steer through this run's hooks
                with lock, self._hooked(run, score_fns), torch.inference_mode():
                    if t == 0:
                        if run.gen.correct == "always":
                            self._correct_all(run)
                        elif run.force:
                            self._force(run)
                    run.t = t
                    if t == 0:
                        run.state.begin(width, attention_mask=mask, position_ids=pos)
                    else:
                        run.state.step(pos)
                    logits, cache = self._forward(run, inp, attn, pos, cache, scored=True)
                    self._decide(run, t)
                    if run.rewinds and prev is not None:
                        logits, cache, inp = self._rewind(run, t, prev, inp, attn, pos, cache, width, mask)
                    elif run.redo:
                        logits, cache = self._redo_step(run, t, inp, attn, pos, cache)
                    run.rewinds.clear()
                    logits = self._processed(logits, run, t)
                    nxt = self._select(logits, run)
                    if self._mean_any and t > 0:
                        self._judge_short(run, t, nxt)
                    nxt = torch.where(run.active, nxt, torch.full_like(nxt, self._pad))
                    run.tokens.append(nxt)
                    run.n_steps = t + 1
                    run.active &= ~torch.isin(nxt, self._eos)
                    done = t + 1 >= steps or not bool(run.active.any())
                    if not done:
                        prev = (inp, attn, pos, logits)
                        inp = nxt.unsqueeze(-1)
                        pos = pos[:, -1:] + 1
                        if attn is not None:
                            attn = torch.cat([attn, attn.new_ones(run.B, 1)], dim=-1)
                yield t
                if done:
                    break
                t += 1
        except BaseException as e:
            run.error = e
            raise
        finally:
            run.last.clear()
            run.bound.clear()
            try:
                self._finish(run)
            except Exception as e:
                if run.error is None:
                    raise
                warnings.warn(f"could not assemble the guard outputs after an error: {e}", RuntimeWarning, stacklevel=2)

    @contextlib.contextmanager
    def _hooked(self, run: BatchRun, score_fns: list[tuple[str, Any]]) -> Iterator[None]:
        """The run's scoring hooks, then its correctors (in the order they were made: detectors read
        an activation before a corrector at the same hook edits it), attached for one step.
        Correctors made during the step attach themselves; everything is removed on exit."""
        run.hooks = [self.model.add_hooks(score_fns)]
        try:
            for key, (c, h, route) in list(run.correctors.items()):
                if not h.active:
                    run.correctors[key] = (c, c.attach(self.model, state=run.state), route)
            yield
        finally:
            errs: list[BaseException] = []
            for _, h, _ in run.correctors.values():
                try:
                    h.remove()
                except BaseException as e:  # pragma: no cover - removal does not fail in practice
                    errs.append(e)
            for h in reversed(run.hooks):
                try:
                    h.remove()
                except BaseException as e:  # pragma: no cover
                    errs.append(e)
            run.hooks = []
            if errs and sys.exc_info()[1] is None:
                raise errs[0]

    def _redo_step(self, run: BatchRun, t: int, inp: Tensor, attn: Tensor | None, pos: Tensor, cache: Any) -> tuple[Tensor, Any]:
        """Re-run step ``t`` with the corrections that just started (``timing = "immediate"``), so the
        token it chooses is chosen under correction. Rows without a new correction compute what
        they computed the first time. The scores of step ``t`` stay the ones the policy acted on."""
        run.redo = False
        if t == 0:
            cache = None  # the prefill is re-run whole
        else:
            cache.crop(-int(inp.shape[1]))  # drop this step's keys and values
        with torch.inference_mode():
            logits, cache = self._forward(run, inp, attn, pos, cache, scored=False)
        run.redos += 1
        return logits, cache

    def _forward(self, run: BatchRun, inp: Tensor, attn: Tensor | None, pos: Tensor, cache: Any, scored: bool) -> tuple[Tensor, Any]:
        """One forward over ``inp`` with the KV cache; the scoring hooks write this step's scores
        only when ``scored`` (re-runs of a step keep the scores the policy acted on)."""
        run.in_fwd = scored
        try:
            out = self.model.hf_model(input_ids=inp, attention_mask=attn, position_ids=pos, past_key_values=cache, use_cache=True, **self._keep)
        finally:
            run.in_fwd = False
        return out.logits[:, -1, :].float(), out.past_key_values

    def _rewind(self, run: BatchRun, t: int, prev: tuple[Tensor, Tensor | None, Tensor, Tensor], inp: Tensor,
                attn: Tensor | None, pos: Tensor, cache: Any, width: int, mask: Tensor) -> tuple[Tensor, Any, Tensor]:
        """Take back token ``t - 1`` of the rows whose correction (``timing = "rewind"``) started at step
        ``t``: re-run step ``t - 1`` with the correctors on, re-choose that token for those rows (the
        others keep theirs), then re-run step ``t`` on the re-chosen tokens, scored. Returns step
        ``t``'s logits, the cache and step ``t``'s input."""
        started, run.rewinds = list(run.rewinds), []
        run.redo = False
        p_inp, p_attn, p_pos, p_logits = prev
        taken = run.tokens[t - 1].clone()
        rows = sorted({b for b, _, _ in started})
        avoiders: dict[int, list[Any]] = {}
        for b, key, action in started:
            c = run.correctors[key][0]
            if callable(getattr(c, "avoid", None)):
                instead = _runner_up(p_logits[b], int(taken[b]))
                if instead is None:
                    action.detail["avoid"] = "no other token is allowed"
                    continue
                c.avoid(b, int(taken[b]), instead)
                action.detail["instead_of"] = instead
                avoiders.setdefault(b, []).append(c)
        with torch.inference_mode():
            if t - 1 == 0:
                cache = None  # the prefill is re-run whole
                run.state.begin(width, attention_mask=mask, position_ids=p_pos)
            else:
                cache.crop(-(int(inp.shape[1]) + int(p_inp.shape[1])))  # drop tokens t - 2 and t - 1
                run.state.step(p_pos)
            p_logits, cache = self._forward(run, p_inp, p_attn, p_pos, cache, scored=False)
            chosen = self._select(self._processed(p_logits, run, t - 1), run)
            sel = torch.zeros(run.B, dtype=torch.bool, device=taken.device)
            sel[rows] = True
            new = torch.where(sel, chosen, taken)
            run.tokens[t - 1] = new
            for b, cs in avoiders.items():
                for c in cs:
                    c.release(b)  # avoidance is for the re-chosen position only
            run.active &= ~(sel & torch.isin(new, self._eos))
            inp = new.unsqueeze(-1)
            run.state.step(pos)
            old = run.buf[t].clone()
            run.buf[t] = self._scorer.bias.to(old.device)
            logits, cache = self._forward(run, inp, attn, pos, cache, scored=True)
            if self._scorer.custom:
                self._score_custom(run, t, run.buf[t])
            if run.pending:
                self._handle_errors(run, t)
            # the running means counted the taken-back token's score; count the re-chosen one's
            run.cum.add_(torch.where(run.cnt > 0, (run.buf[t] - old).nan_to_num(), 0.0))
        for b, _, action in started:
            action.detail["taken_back"] = int(taken[b])
            action.detail["replaced_by"] = int(new[b])
        run.rewound += len(rows)
        return logits, cache, inp

    def _processed(self, logits: Tensor, run: BatchRun, t: int) -> Tensor:
        """Step ``t``'s logits as the token is chosen from them: EOS held back before
        ``min_new_tokens``, then the caller's ``logits_processor``."""
        if t < run.gen.min_new_tokens:
            logits[:, self._eos] = float("-inf")
        if run.processor is not None:
            ids = torch.cat([run.prompt_ids, *(x.unsqueeze(-1) for x in run.tokens[:t])], dim=-1)
            logits = run.processor(ids, logits)
            if not isinstance(logits, Tensor) or logits.shape != (run.B, logits.shape[-1]):
                raise InputError(f"logits_processor must return the scores tensor [batch, vocab], got {type(logits).__name__}")
        return logits

    def _select(self, logits: Tensor, run: BatchRun) -> Tensor:
        g = run.gen
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
        return torch.multinomial(probs, 1, generator=run.generator).squeeze(-1)

    # -- the policy, per step -------------------------------------------------------------------
    def _decide(self, run: BatchRun, t: int) -> None:
        raw = run.buf[t]
        if self._scorer.custom:
            self._score_custom(run, t, raw)
        if run.pending:
            self._handle_errors(run, t)
        if t > 0:  # step 0 reads the last prompt token; the mean covers response tokens only
            run.cum.add_(raw)
            run.cnt.add_(1.0)
        ready = ~self._mean | (run.cnt >= self._warmup)
        s = run.stat[t]
        torch.where(self._mean, run.cum / run.cnt.clamp(min=1.0), raw, out=s)
        s.masked_fill_(~ready, float("nan"))  # no statistic yet (warm-up)
        hit = ~(s <= run.thr_act) & ready & run.active.unsqueeze(-1) & run.det_live
        if not bool(hit.any()):
            return
        rows, dets = hit.nonzero(as_tuple=True)
        vals = s[rows, dets].tolist()
        for b, j, x in zip(rows.tolist(), dets.tolist(), vals):
            if not run.active_py[b]:
                continue
            if not bool(run.det_live[j]):
                continue
            if x != x:
                run.pending.append(([j], f"non-finite score {x}"))
                self._handle_errors(run, t)
                continue
            self._act(run, b, j, x, t)

    def _judge_short(self, run: BatchRun, t: int, nxt: Tensor) -> None:
        """A response ending inside the warm-up is judged once, on its whole mean, before its
        end-of-turn token is emitted (stream calibration counts such responses the same way)."""
        ending = torch.isin(nxt, self._eos) & run.active
        cand = ending.unsqueeze(-1) & self._mean & (run.cnt > 0) & (run.cnt < self._warmup) & run.det_live
        if not bool(cand.any()):
            return
        s = run.stat[t]
        s[cand] = (run.cum / run.cnt.clamp(min=1.0))[cand]
        hit = cand & ~(s <= run.thr_act)
        for b, j in zip(*(x.tolist() for x in hit.nonzero(as_tuple=True))):
            if run.active_py[b]:
                self._act(run, b, j, float(s[b, j]), t)

    def _score_custom(self, run: BatchRun, t: int, s: Tensor) -> None:
        for j in self._scorer.custom:
            if not bool(run.det_live[j]):
                continue
            det = self.detectors[j]
            try:
                v = det.score_tensor({h: run.last[h] for h in det.hooks})
                s[:, j] = torch.as_tensor(v).reshape(-1).to(device=s.device, dtype=s.dtype)
            except Exception as e:
                s[:, j] = float("nan")
                run.pending.append(([j], e))

