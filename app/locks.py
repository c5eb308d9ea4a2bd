"""The process-wide work lock: all GPU/CPU work on a chain happens under :data:`WORK_LOCK`.

Waiting short requests (generate, rounds, exports) go before the next training iteration, so several
trainings take turns per iteration and a short request waits for at most the iteration in progress
(docs/app.md).
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from typing import Any, Iterator

__all__ = ["WorkLock", "WORK_LOCK"]


class WorkLock:
    """The process-wide lock around chain work, handed out in order: waiting short requests
    (generate, rounds, exports) first, then training iterations, each kind first come first
    served. A training takes it once per iteration, so several trainings take turns and a short
    request waits for at most the iteration in progress. Re-entrant in the holding thread."""

    def __init__(self) -> None:
        self._condition = threading.Condition(threading.Lock())
        self._owner: int | None = None
        self._depth = 0
        self._waiting: dict[str, deque] = {"short": deque(), "iteration": deque()}

    def acquire(self, kind: str = "short") -> None:
        me = threading.get_ident()
        with self._condition:
            if self._owner == me:
                self._depth += 1
                return
            ticket = object()
            self._waiting[kind].append(ticket)
            while self._owner is not None or self._next() is not ticket:
                self._condition.wait()
            self._waiting[kind].popleft()
            self._owner, self._depth = me, 1

    def release(self) -> None:
        with self._condition:
            if self._owner != threading.get_ident():
                raise RuntimeError("WorkLock released by a thread that does not hold it")
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                self._condition.notify_all()

    def _next(self) -> object | None:
        for queue in self._waiting.values():  # "short" first
            if queue:
                return queue[0]
        return None

    @contextlib.contextmanager
    def hold(self, kind: str = "short") -> Iterator[None]:
        self.acquire(kind)
        try:
            yield
        finally:
            self.release()

    def __enter__(self) -> "WorkLock":
        self.acquire("short")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


WORK_LOCK = WorkLock()
"""Held while a chain computes: one piece of GPU/CPU work at a time in this process."""
