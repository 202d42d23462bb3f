"""The Guard: generation with every detector scoring every new token, and a policy acting on it.

::

    from circuits import load_model
    from detectors import Detector, Guard, Policy

    model = load_model("smollm2-135m-instruct")
    guard = Guard(model, [Detector.load("dec/", model), Detector.load("syc/", model)],
                  policy=Policy.load("policy.toml"), on_escalate=ask_a_person, audit="audit.jsonl")
    out = guard.generate(["prompt or chat", ...], max_new_tokens=64)
    out[0].text, out[0].scores["deception"], out[0].actions

**Composition.** :class:`Guard` orchestrates parts that each know one thing: the decoder
(:mod:`detectors.guard_decoder`: the KV-cache loop with step, redo and rewind), scoring
(:mod:`detectors.guard_scoring`: the read-outs as hooks and the per-token buffers, with how scoring
works), the pure policy engine (:mod:`detectors.policy_engine`: statistic in, commands out), the
commands carried out (:mod:`detectors.guard_commands`: correctors, escalations), the loop joining
them (:mod:`detectors.guard_loop`), and outputs and audit records (:mod:`detectors.guard_output`).
Detectors read an activation *before* any Guard corrector at the same hook edits it, so re-scoring
after a correction measures its effect on later tokens, not the shift of the edited activation.

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

**Decoding** feeds the model as ``transformers``' ``generate`` does (greedy outputs are
token-identical to ``hf_model.generate``); the policy's Python logic runs only on steps where some
statistic is above its lowest action threshold.

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
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from inspect import signature
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from circuits.errors import InputError
from circuits.hooked_model import HookedModel
from circuits.inputs import Item, as_chat, check_chat_mode, encode, pad_id, render
from detectors.audit import AuditLog
from detectors.guard_commands import CommandRunner
from detectors.guard_decoder import end_of_turn_ids
from detectors.guard_loop import BatchLoop
from detectors.guard_output import OutputAssembler, detector_records
from detectors.guard_run import BatchRun, as_items
from detectors.guard_scoring import ScoreBuffers, Scorer
from detectors.guard_stream import stream_events
from detectors.guard_types import (
    Action,
    DetectorFailure,
    EscalationContext,
    GenerationSettings,
    GuardOutput,
    HumanDecision,
    Prompt,
    TokenEvent,
    check_count,
    check_processor,
)
from detectors.policy import TIERS, Policy, PolicyError, Resolved, check_not_relaxed
from detectors.policy_engine import PolicyEngine
from detectors.regenerate import end_policy, judge_end, regenerate_rows
from detectors.router import Router

__all__ = ["Action", "DetectorFailure", "EscalationContext", "GenerationSettings", "Guard", "GuardOutput", "HumanDecision",
           "TokenEvent"]


# --------------------------------------------------------------------------------------------
# the Guard
# --------------------------------------------------------------------------------------------
class Guard:
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
        features: top SAE latents reported per flagged token in ``detail["sae_features"]`` (exact
            attributions) where ``router`` has an SAE at the detector's hook; 0: none.

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
        features: int = 0,
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
        self.features = check_count(features, "features (top SAE latents reported per flagged token)", 0)
        self.audit = AuditLog(audit) if isinstance(audit, (str, Path)) else audit
        check_chat_mode(chat)
        self.chat = chat
        self.batch_size = check_count(batch_size, "batch_size", 1)
        self._scorer = Scorer(self.detectors, model.d_model)
        hf = model.hf_model
        self._dtype = next(hf.parameters()).dtype
        self._keep = {"logits_to_keep": 1} if "logits_to_keep" in signature(hf.forward).parameters else {}
        self._eos = end_of_turn_ids(model)
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
        self._streams: weakref.WeakSet[Any] = weakref.WeakSet()
        if policy is None:
            policy = Policy.default()
        elif isinstance(policy, (str, Path)):
            policy = Policy.load(policy)
        self._policy: Policy = policy
        self._locked: dict[str, float] = {}
        self._apply_policy(policy)
        self._locked = {r.name: r.block for r in self._res if r.red_line}
        self._meta_model = {"id": model.model_id, "fingerprint": model.fingerprint}
        self._meta_dets = detector_records(self.names, self.detectors, self._thresholds, mean)
        # the parts a batch is run with (composition: each is its own module)
        eos_set = set(self._eos.tolist())
        self._outputs = OutputAssembler(self.names, model.tokenizer, eos_set, self.audit, self._meta_model, self._meta_dets, self.detectors)
        self._loop = BatchLoop(self, self._scorer, CommandRunner(self, eos_set), self._outputs, self._judge,
                               self._dtype, self._pad, self._eos, self._keep)

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
        gen = GenerationSettings.resolve(settings, max_new_tokens, min_new_tokens, do_sample, temperature, top_k, top_p, seed, correct)
        check_processor(logits_processor)
        bs = check_count(self.batch_size if batch_size is None else batch_size, "batch_size", 1)
        prompts = self._prepare(as_items(items), gen)
        generator = gen.rng(self.model.device)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i].enc.ids))
        outs: list[GuardOutput | None] = [None] * len(prompts)
        regen: dict[int, list[int]] = {}  # prompt index -> detectors whose finished response was flagged
        for s in range(0, len(order), bs):
            chunk = order[s : s + bs]
            run = self._new_run([prompts[i] for i in chunk], gen, generator)
            run.processor = logits_processor
            for _ in self._loop.steps(run):
                pass
            for i, o in zip(chunk, run.outputs):
                outs[i] = o
            for b, j in run.regen:
                regen.setdefault(chunk[b], []).append(j)
        if regen:
            regenerate_rows(self, outs, prompts, regen, gen, logits_processor, bs, generator)
        return outs  # type: ignore[return-value]

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
        gen = GenerationSettings.resolve(settings, max_new_tokens, min_new_tokens, do_sample, temperature, top_k, top_p, seed, correct)
        prompts = self._prepare(items, gen)
        run = self._new_run(prompts, gen, gen.rng(self.model.device))
        run.processor = check_processor(logits_processor)
        return stream_events(self, run)

    # -- context manager ------------------------------------------------------------------------
    def close(self) -> None:
        """Close any stream still open (removing its hooks, writing its audit records)."""
        for g in list(self._streams):
            g.close()

    def __enter__(self) -> Guard:
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
                self._outputs.write_rejection(wrapped, gen, e, self._policy_meta)
            raise
        out = []
        for i, (it, w, e) in enumerate(zip(items, wrapped, enc)):
            prefix, response, _ = render(self.model.tokenizer, w, where=f"item {i}")
            out.append(Prompt(it, e, prefix + response))
        return out

    def _new_run(self, prompts: list[Prompt], gen: GenerationSettings, generator: torch.Generator | None,
                 attempt: int = 1) -> BatchRun:
        """A batch under the policy in force now (a later change applies to the next batch)."""
        engine = PolicyEngine(self._res, self.names, self._mean, self._warmup, len(prompts), gen.max_new_tokens,
                              correct=gen.correct, attempt=attempt, error_mode=self._policy.error_mode, device=self.model.device)
        scores = ScoreBuffers(self._scorer.bias, gen.max_new_tokens, len(prompts), self.model.device)
        return BatchRun(prompts, gen, generator, engine=engine, scores=scores, policy_meta=self._policy_meta, attempt=attempt)

    def _judge(self, run: BatchRun, b: int, out: GuardOutput) -> GuardOutput:
        return judge_end(self, run, b, out) if self._res_end else out
