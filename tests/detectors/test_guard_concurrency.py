"""Hooks only while a step runs, and one model lock (issue 24, defects 4 and 5): an abandoned
stream leaves the model as it was; two threads, or two interleaved streams, give exactly the
sequential results; re-entering the model from inside a step is refused loudly."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import test_guard as tg
import torch

from circuits.errors import InputError
from circuits.generation_lock import model_lock
from detectors.guard import Guard

CORRECT = {"correct_above": -1e9, "patience": 10_000, "dose": 40.0}  # every row corrected from its first flag


def _guard(model, **kw):
    dets = [tg.lin(model, "a", tg.H1), tg.lin(model, "b", tg.H0, seed=1)]
    return Guard(model, dets, policy=tg.policy(a=CORRECT), **kw)


def _plain_logits(model):
    ids = torch.tensor([[2, 5, 6, 7, 8, 9]])
    with torch.inference_mode():
        return model.hf_model(input_ids=ids).logits.clone()


def test_abandoned_stream_leaves_no_hooks_and_no_steering(tiny):
    ref = _plain_logits(tiny)
    n0 = tg.n_hooks(tiny)
    guard = _guard(tiny)
    events = guard.stream("hello world", max_new_tokens=20, correct=True)
    for i, ev in enumerate(events):
        if i == 1:
            break
    assert ev.index == 1 and events is not None  # still referenced, not closed
    assert tg.n_hooks(tiny) == n0
    assert torch.equal(_plain_logits(tiny), ref)
    # the stream can still be resumed, and is still corrected
    rest = list(events)
    assert rest[-1].done and rest[-1].output.correctors
    assert tg.n_hooks(tiny) == n0


def _outputs(outs):
    return [(o.token_ids, {k: v.tolist() for k, v in o.scores.items()}, [a.to_dict() for a in o.actions]) for o in outs]


def test_two_threads_give_the_sequential_results(tiny):
    prompts = {0: ["hello world", "the cat sat on the mat"], 1: ["one two three four five six", "is the sky blue"]}
    guards = {0: _guard(tiny), 1: _guard(tiny)}
    kwargs = dict(max_new_tokens=10, min_new_tokens=10)
    expected = {k: _outputs(guards[k].generate(prompts[k], **kwargs)) for k in (0, 1)}
    expected_stream = {k: _outputs([ev.output for ev in guards[k].stream(prompts[k][0], **kwargs) if ev.done]) for k in (0, 1)}
    got: dict[int, list] = {0: [], 1: []}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def work(k):
        try:
            start.wait()
            for _ in range(6):
                got[k].append(_outputs(guards[k].generate(prompts[k], **kwargs)))
                got[k].append(_outputs([ev.output for ev in guards[k].stream(prompts[k][0], **kwargs) if ev.done]))
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in (0, 1)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert not errors, errors
    for k in (0, 1):
        assert len(got[k]) == 12
        for i, res in enumerate(got[k]):
            assert res == (expected[k] if i % 2 == 0 else expected_stream[k]), f"thread {k} run {i} differs"


def test_interleaved_streams_in_one_thread_give_the_sequential_results(tiny):
    g = _guard(tiny)
    a_ref = [ev.token_id for ev in g.stream("hello world", max_new_tokens=8, min_new_tokens=8)]
    b_ref = [ev.token_id for ev in g.stream("is the sky blue", max_new_tokens=8, min_new_tokens=8)]
    a = g.stream("hello world", max_new_tokens=8, min_new_tokens=8)
    b = g.stream("is the sky blue", max_new_tokens=8, min_new_tokens=8)
    a_got, b_got = [], []
    for ea, eb in zip(a, b):
        a_got.append(ea.token_id)
        b_got.append(eb.token_id)
    assert a_got == a_ref and b_got == b_ref


def test_reentering_the_model_from_a_callback_is_refused(tiny):
    inner = _guard(tiny)

    def human(ctx):
        inner.generate("hello world", max_new_tokens=2)  # same model, inside the outer step
        return "allow"

    pol = tg.policy(a={"escalate_above": -1e9})
    outer = Guard(tiny, [tg.lin(tiny, "a")], policy=pol, on_escalate=human)
    with pytest.raises(InputError, match="already running a hooked step"):
        outer.generate("hello world", max_new_tokens=3)
    assert tg.n_hooks(tiny) == 0 and not model_lock(tiny).held
    # and afterwards the model works as before
    assert inner.generate("hello world", max_new_tokens=2)[0].token_ids


def test_the_lock_is_shared_by_wrappers_of_one_model(tiny):
    from circuits import from_hf

    other = from_hf(tiny.hf_model, tiny.tokenizer, model_id="again")
    assert model_lock(other) is model_lock(tiny)
    assert model_lock(tg.lin) is not model_lock(tiny)
    assert np.isfinite(_plain_logits(other).numpy()).all()
