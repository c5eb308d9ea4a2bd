"""What the tabs share: the page context, the queues, and errors as toasts (browser) or ``gr.Error`` (API).

Heavy events run in the worker pool of :mod:`app.workers` (queues ``work`` and ``train``;
:class:`app.locks.WorkLock` orders the work itself). In the browser, bad input is a toast titled with the
field and the outputs keep their last good values (:func:`capture_errors`); API endpoints raise
(:func:`api_errors`).
"""

from __future__ import annotations

import functools
import inspect
import logging
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import gradio as gr

from .. import runner
from ..errors import FieldError
from ..form import FORM_KEYS
from ..workers import in_worker

log = logging.getLogger("rlr_studio")

MAX_TRAININGS = 4
GPU = {"concurrency_limit": 8, "concurrency_id": "work"}
"""Short heavy requests (generate, rounds, diagnostics, export): app.locks.WorkLock orders the actual work."""
TRAIN = {"concurrency_limit": MAX_TRAININGS, "concurrency_id": "train"}
"""Trainings: up to MAX_TRAININGS at once take turns per iteration (WorkLock); short requests go between."""
UI_ONLY = {"api_visibility": "undocumented"}


@dataclass
class Page:
    """The context of one built page: hosted mode, its limits, and the Train form's widgets by field key."""

    hosted: bool
    limit: dict[str, int]
    widgets: dict[str, Any] = field(default_factory=dict)
    error_state: Any = None  # gr.State of the last captured error (made once the tabs are laid out)

    @property
    def form(self) -> list[Any]:
        """The Train form's widgets in ``FORM_KEYS`` order (the inputs of every event that reads the form)."""
        return [self.widgets[key] for key in FORM_KEYS]

    def listen(self, event: Callable, fn: Callable, inputs: Any, outputs: list, **kwargs: Any) -> None:
        """``event(fn)`` with errors as toasts (see capture_errors)."""
        toast = {"concurrency_limit": None} if kwargs.get("queue", True) else {"queue": False}
        handler = capture_errors(fn, len(outputs))
        if kwargs.get("concurrency_id") in (GPU["concurrency_id"], TRAIN["concurrency_id"]):
            handler = worker(handler)
        event(handler, inputs=inputs, outputs=[*outputs, self.error_state], **kwargs).then(
            raise_captured, inputs=self.error_state, outputs=None, **toast, **UI_ONLY)


def form_dict(values: tuple) -> dict[str, Any]:
    """Train-form values (in ``FORM_KEYS`` order) by field key."""
    return dict(zip(FORM_KEYS, values))


def _title(error: BaseException) -> str:
    if isinstance(error, FieldError):
        return f"Check '{error.field}'"
    if isinstance(error, (ValueError, TypeError)):
        return "Invalid input"
    return "Something went wrong (the server keeps running)"


def _message(error: BaseException) -> str:
    if not isinstance(error, (ValueError, TypeError)):
        log.error("unexpected error:\n%s", traceback.format_exc())
        return f"{type(error).__name__}: {error}"
    return str(error)


def api_errors(fn: Callable) -> Callable:
    """For API endpoints: every exception becomes ``gr.Error`` titled with the field (the client raises)."""
    def to_gradio(error: BaseException) -> gr.Error:
        if isinstance(error, gr.Error):
            return error
        return gr.Error(_message(error), title=_title(error), print_exception=False)

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen_wrapper(*args: Any, **kwargs: Any) -> Iterator[Any]:
            try:
                yield from fn(*args, **kwargs)
            except GeneratorExit:
                raise
            except Exception as error:  # noqa: BLE001 - shown to the client
                raise to_gradio(error) from error

        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - shown to the client
            raise to_gradio(error) from error

    return wrapper


def capture_errors(fn: Callable, outputs: int) -> Callable:
    """For browser events: ``fn``'s outputs plus one more, the error of the call as (title, message)
    or None. On an error the ``outputs`` components are left as they were (``gr.skip``); the event's
    ``.then(raise_captured)`` turns the error into a toast, from an event without outputs, so no
    component shows an error state."""
    def pack(result: Any) -> tuple:
        values = result if outputs != 1 else (result,)
        return (*(values if outputs else ()), None)

    def failed(error: BaseException) -> tuple:
        return (*(gr.skip() for _ in range(outputs)), (_title(error), _message(error)))

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen_wrapper(*args: Any, **kwargs: Any) -> Iterator[Any]:
            try:
                for result in fn(*args, **kwargs):
                    yield pack(result)
            except GeneratorExit:
                raise
            except Exception as error:  # noqa: BLE001 - shown to the user
                yield failed(error)

        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return pack(fn(*args, **kwargs))
        except Exception as error:  # noqa: BLE001 - shown to the user
            return failed(error)

    return wrapper


def raise_captured(error: tuple[str, str] | None) -> None:
    """The toast of a captured error (an event with no outputs, so nothing gets an error badge)."""
    if error:
        title, message = error
        raise gr.Error(message, title=title, print_exception=False)


def worker(fn: Callable) -> Callable:
    """``fn`` run in the worker pool; a cancelled call aborts the session's work (app.workers)."""
    def on_cancel(args: tuple, kwargs: dict) -> None:
        request = next((a for a in (*args, *kwargs.values()) if isinstance(a, gr.Request)), None)
        runner.cancel(session_of(request))

    return in_worker(fn, on_cancel)


def session_of(request: gr.Request | None) -> str:
    """The browser session's id (one per tab / gradio_client); per-session state is only this id."""
    session = getattr(request, "session_hash", None) if request is not None else None
    return str(session or "anonymous")
