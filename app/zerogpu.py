"""Training steppers: one iteration at a time locally, or chunks of iterations per ZeroGPU call.

Without the ``spaces`` package (or off ZeroGPU) :func:`stepper` advances ``Trainer.run()`` one
iteration at a time inside :func:`app.runs.using`; nothing else changes. On a ZeroGPU Space
(``spaces`` importable and ``SPACES_ZERO_GPU`` set, or ``RLR_STUDIO_CHUNKED=1`` to try the
same path anywhere) every chunk of ``CHUNK_ITERATIONS`` iterations runs inside one
``spaces.GPU``-decorated call; between chunks the run's LoRA and optimizer state are copied
to CPU and the chain is released, so nothing of the run has to stay on the GPU.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

from rlr_core.hosted import HOSTED_LIMITS

from . import runs

try:  # pragma: no cover - only on Hugging Face Spaces
    import spaces  # type: ignore[import-not-found]
except ImportError:
    spaces = None

CHUNK_ITERATIONS = int(os.environ.get("RLR_STUDIO_CHUNK", HOSTED_LIMITS["zerogpu_chunk_iterations"]))
CHUNK_SECONDS = int(os.environ.get("RLR_STUDIO_CHUNK_SECONDS", HOSTED_LIMITS["zerogpu_chunk_seconds"]))


def zerogpu_active() -> bool:
    flag = os.environ.get("SPACES_ZERO_GPU", "") or os.environ.get("RLR_STUDIO_CHUNKED", "")
    return spaces is not None and flag.strip().lower() in {"1", "true", "yes", "on"}


def _to_cpu(value: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu").clone()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


def run_chunk(run_id: str, iterations: int) -> list[Any]:
    """Up to ``iterations`` training iterations of run ``run_id``; state goes back to CPU after."""
    run = runs.get_run(run_id)
    if run is None:
        return []
    trainer = run.trainer
    with runs.using(run) as chain:
        if run.optimizer_state is not None:
            trainer.optimizer.load_state_dict(run.optimizer_state)  # cast to the parameters' device
        try:
            reports = []
            for report in trainer.run(max_iterations=iterations):
                reports.append(report)
                if run.stop_requested:
                    break
        finally:
            run.optimizer_state = _to_cpu(trainer.optimizer.state_dict())
            trainer.optimizer.state.clear()
            run.lora = chain.lora_state_dict()  # CPU copy; the next chunk loads it again
            run.entry.owner = None
    return reports


run_chunk_gpu = spaces.GPU(duration=CHUNK_SECONDS)(run_chunk) if spaces is not None else run_chunk


def _local(run: Any) -> Iterator[Any]:
    iterator = run.trainer.run()
    done = False
    try:
        while True:
            with runs.using(run, "iteration"):
                try:
                    report = next(iterator)
                except StopIteration:
                    done = True
                    return
            yield report
    finally:
        if not done:
            run.trainer.stop()
            with runs.using(run):
                iterator.close()  # exports the LoRA


def _chunked(run: Any, chunk: int) -> Iterator[Any]:
    while run.step < run.config.steps and not run.stop_requested:
        reports = run_chunk_gpu(run.id, chunk)
        if not reports:
            return
        yield from reports


def stepper(run: Any, chunk: int | None = None) -> Iterator[Any]:
    """Iterator of StepReports of ``run`` (see the module docstring)."""
    if chunk is not None or zerogpu_active():
        return _chunked(run, int(chunk or CHUNK_ITERATIONS))
    return _local(run)
