"""Heavy handlers run in worker threads, so that a cancelled request gives its queue slot back at once.

Gradio runs a plain (sync) handler in a thread it cannot interrupt: ``job.cancel()`` or a closed
page marks the job cancelled, but the queue slot stays taken until the handler's current step
returns (for a training iteration, possibly hours). :func:`in_worker` turns a sync handler (or
generator) into an ``async`` one that runs each step in this module's thread pool and awaits it.
A cancellation then ends the async handler at once (the slot is free); ``on_cancel(args, kwargs)``
is called so the work still running in the pool aborts at its next model call
(``rlr_core.cancel``), and a generator is closed once its step in flight has returned (for a
training: the LoRA of the last completed iteration is exported).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, AsyncIterator, Callable, Iterator

POOL = ThreadPoolExecutor(max_workers=32, thread_name_prefix="rlr-work")
_DONE = object()


def _advance(stream: Iterator[Any]) -> Any:
    try:
        return next(stream)
    except StopIteration:
        return _DONE


def _close_when_done(stream: Iterator[Any], in_flight: Future | None) -> None:
    if in_flight is not None:
        with contextlib.suppress(BaseException):
            in_flight.result()
    with contextlib.suppress(Exception):
        stream.close()  # type: ignore[attr-defined]


def in_worker(fn: Callable, on_cancel: Callable[[tuple, dict], None]) -> Callable:
    """``fn`` (a function or a generator function) as an async handler run in the worker pool.

    The wrapper keeps ``fn``'s signature (Gradio reads the inputs and ``gr.Request`` from it)."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        async def stream_in_worker(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            stream = fn(*args, **kwargs)  # creating a generator runs none of it
            in_flight: Future | None = None
            finished = False
            try:
                while True:
                    in_flight = POOL.submit(_advance, stream)
                    item = await asyncio.wrap_future(in_flight)
                    in_flight = None
                    if item is _DONE:
                        finished = True
                        return
                    yield item
            except (asyncio.CancelledError, GeneratorExit):
                on_cancel(args, kwargs)
                raise
            finally:
                if not finished:
                    POOL.submit(_close_when_done, stream, in_flight)

        return stream_in_worker

    @functools.wraps(fn)
    async def call_in_worker(*args: Any, **kwargs: Any) -> Any:
        future = POOL.submit(fn, *args, **kwargs)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            on_cancel(args, kwargs)
            raise

    return call_in_worker
