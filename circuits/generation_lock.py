"""One lock per model: hooks live on the model's shared modules, so two runs that hook the same
model at the same time would score (and steer) each other's forward passes.

Code that attaches hooks to a model for the length of a forward pass (the Guard, one decode step
at a time) holds :func:`model_lock` while they are attached; other threads driving the same model
wait. The lock is per underlying weights module (two :class:`~circuits.hooked_model.HookedModel`
wrappers of one ``hf_model`` share it) and is not re-entrant: a thread that asks for it while it
already holds it (e.g. a Guard's ``on_escalate`` callback starting another guarded generation on the
same model) gets an :class:`~circuits.errors.InputError` instead of a deadlock or a silent mix of
hooks.

Example:
    >>> with model_lock(model):
    ...     with corrector.apply(model):
    ...         logits = model.forward(ids)
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from circuits.errors import InputError

__all__ = ["ModelLock", "model_lock"]


class ModelLock:
    """A mutex that knows its owner thread (to refuse re-entry loudly)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner: int | None = None

    def __enter__(self) -> ModelLock:
        me = threading.get_ident()
        if self._owner == me:
            raise InputError(
                "this model is already running a hooked step in this thread (e.g. an on_escalate callback "
                "generating with the same model); use another model instance or answer without generating"
            )
        self._lock.acquire()
        self._owner = me
        return self

    def __exit__(self, *exc: object) -> None:
        self._owner = None
        self._lock.release()

    @property
    def held(self) -> bool:
        return self._lock.locked()


_LOCKS: weakref.WeakKeyDictionary[Any, ModelLock] = weakref.WeakKeyDictionary()
_MAKING = threading.Lock()


def model_lock(model: Any) -> ModelLock:
    """The lock of ``model``'s weights (its ``hf_model`` when it has one)."""
    key = getattr(model, "hf_model", None)
    if key is None:
        key = model
    with _MAKING:
        lock = _LOCKS.get(key)
        if lock is None:
            lock = _LOCKS[key] = ModelLock()
        return lock
