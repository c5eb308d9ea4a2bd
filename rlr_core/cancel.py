"""Cancelling work in the middle of an iteration: one flag checked before every model call.

``Trainer.stop()`` ends a run after the iteration in progress. That can be far away (a PPO
iteration with many epochs, a large batch at 512 px), and a server must be able to get its worker
back at once when a request is cancelled. So work that may be cancelled runs inside
``cancellable(event)``; every model call of the sampler loop (``sampling.take_step``,
``sampling.step_log_prob``) calls :func:`check_cancelled`, which raises :class:`Cancelled` once
the event is set. The flag lives in a context variable, so it applies to the thread (or task) that
entered ``cancellable`` and to nothing else.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from typing import Iterator

__all__ = ["Cancelled", "cancellable", "check_cancelled", "shielded"]

_CURRENT: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("rlr_cancel_event", default=None)


class Cancelled(RuntimeError):
    """The work was cancelled before it finished (nothing of it was applied)."""


@contextlib.contextmanager
def cancellable(event: threading.Event | None) -> Iterator[None]:
    """Model calls inside this block raise :class:`Cancelled` once ``event`` is set (None: never)."""
    token = _CURRENT.set(event)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def shielded() -> contextlib.AbstractContextManager[None]:
    """A block that is not cancelled (work that must finish once started, e.g. after an update)."""
    return cancellable(None)


def check_cancelled() -> None:
    """Raise :class:`Cancelled` when the current block's event is set."""
    event = _CURRENT.get()
    if event is not None and event.is_set():
        raise Cancelled("cancelled")
