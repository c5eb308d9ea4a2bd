"""The ``/train`` API endpoint: its parameters are generated from the Train form's table (same names and
defaults); it streams one JSON summary per iteration and a final one, and raises on bad input."""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterator

import gradio as gr

from .. import formatting, runner
from ..form import FIELDS, FORM_DEFAULTS, FORM_KEYS
from .events import TRAIN, api_errors, session_of, worker

__all__ = ["train_endpoint", "wire"]


def train_endpoint(hosted: bool) -> Callable[..., Iterator[dict]]:
    """The ``/train`` function, its parameters generated from the form table (same names and defaults;
    estimator options default to None = the estimator's default)."""
    parameters = [
        inspect.Parameter(f.key, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=FORM_DEFAULTS[f.key], annotation=f.python_type)
        for f in FIELDS
    ]
    parameters.append(inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
                                        annotation=gr.Request))

    def train(*values: Any) -> Iterator[dict]:
        *form_values, request = values  # Gradio passes the request at its place in the signature: last
        form_values_by_key = dict(zip(FORM_KEYS, form_values))
        config = runner.config_from_form(form_values_by_key, hosted)
        stream = runner.train_stream(session_of(request), config, hosted, bool(form_values_by_key.get("continue_lora")))
        next(stream)  # the "starting" state: the API streams one update per iteration, then the final one
        for run in stream:
            yield formatting.run_summary(run)

    train.__signature__ = inspect.Signature(parameters, return_annotation=Iterator[dict])  # type: ignore[attr-defined]
    train.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": Iterator[dict]}
    train.__doc__ = ("Train this session's LoRA; yields a JSON summary after every iteration and a final one "
                     "(prompt: one per line; estimator options left None take the estimator's defaults).")
    return train


def wire(hosted: bool) -> None:
    """Register ``/train`` (inside the Blocks)."""
    gr.api(worker(api_errors(train_endpoint(hosted))), api_name="train", **TRAIN)
