"""Training runs of the app, without Gradio: a session's run is built by ``rlr_core.run.TrainingRun`` on the
cached model, then streamed one iteration at a time (Start / Stop / cancel, the disk quota, the status line).
Bad input is a ``FieldError`` naming the form's field.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

from rlr_core.config import TrainConfig
from rlr_core.hub import WeightsUnavailableError
from rlr_core.run import TrainingRun, check_config
from rlr_core.training import TrainingStepError

from . import formatting, runs
from .errors import FieldError
from .form import field_error
from .locks import WORK_LOCK
from .runs import Run
from .settings import caps

__all__ = ["create_run", "require_run", "train_stream", "record_report", "over_disk_quota", "folder_bytes", "cancel",
           "final_status", "kept_lora_text", "lora_iteration", "stop"]


def create_run(session: str, config: TrainConfig, hosted: bool, continue_lora: bool = False,
               reward: Any = None, kind: str = "train", run_id: str | None = None) -> Run:
    """Build the session's new run: the cached model, then ``TrainingRun.from_config`` (reward,
    estimator, Trainer); ``continue_lora`` starts from the session's current LoRA."""
    previous = runs.session_run(session)
    try:
        check_config(config, hosted=hosted, output_dir=False)  # once, before loading anything
    except ValueError as error:
        raise field_error(error) from None
    entry = runs.MODELS.get(config, session)
    chain = entry.variant(config)
    run_id = run_id or runs.new_run_id()
    output_dir = runs.run_dir(run_id)
    config = config.replace(output_dir=str(output_dir))
    try:
        with WORK_LOCK:  # the Trainer reads the chain's LoRA parameters: not while another request uses it
            training = TrainingRun.from_config(config, hosted=hosted, chain=chain, reward=reward, checked=True)
    except WeightsUnavailableError as error:
        raise FieldError("Reward", f"{error} Pick a weight-free reward (saturation, brightness, ...) offline.") from None
    except ValueError as error:
        raise field_error(error) from None
    lora = None
    if continue_lora and previous is not None:
        lora = runs.current_lora(previous)
        if set(lora) != set(entry.initial_lora) or any(
            tuple(lora[k].shape) != tuple(entry.initial_lora[k].shape) for k in lora
        ):
            raise FieldError(
                "Continue from the current LoRA",
                f"the session's LoRA ({previous.config.model}, rank {previous.config.lora_rank}, targets "
                f"{previous.config.lora_targets}) does not fit {config.model} with rank {config.lora_rank}, targets "
                f"{config.lora_targets}; uncheck it or use the same model, LoRA rank and LoRA targets",
            )
    run = Run(run_id, session, training, entry, chain, lora, output_dir, kind=kind)
    runs.register(run, hosted)
    return run


def require_run(session: str, what: str) -> Run:
    run = runs.session_run(session)
    if run is None:
        raise FieldError(what, "this session has no run yet: start training (or a preference round) first")
    return run


def train_stream(session: str, config: TrainConfig, hosted: bool, continue_lora: bool = False,
                 chunk: int | None = None) -> Iterator[Run]:
    """Create a run and yield it: once at once (phase "starting"), after each iteration, and at the end.

    The trainer is advanced one iteration at a time inside :func:`app.runs.using`, so other sessions
    can use the same chain between iterations. Closing this generator stops the run and exports the
    LoRA. ``chunk``: on ZeroGPU, iterations per GPU call (see :mod:`app.zerogpu`).
    """
    from . import zerogpu

    run = create_run(session, config, hosted, continue_lora)
    run.status = "Starting: sampling the 'before' images (LoRA off), then iteration 1"
    run.running = True
    run.started_at = time.time()
    run.iterations_planned = run.config.steps - run.step
    yield run
    stepper = zerogpu.stepper(run, chunk)
    try:
        for report in stepper:
            record_report(run, report)
            if over_disk_quota(run, hosted):
                run.stop_requested = True
                run.trainer.stop()
                run.status = (f"Stopping: this run's files passed the {caps(hosted)['run_disk_bytes'] // 2**20} MB "
                              f"limit of this server; the LoRA is kept")
            yield run
        run.finished, run.running = True, False
        run.status = final_status(run)
        yield run
    except TrainingStepError as error:
        run.status = f"Failed: {error}"
        raise FieldError("training", str(error)) from None
    finally:
        run.running = False
        if not run.finished:
            run.stop_requested = True
            run.trainer.stop()
            with runs.using(run):
                stepper.close()


def record_report(run: Run, report: Any) -> None:
    """Store what the UI shows of a StepReport in the run (history rows, before/after images)."""
    row = report.to_json_dict()
    run.history.append(row)
    if report.before_images is not None and run.before is None:
        run.before = formatting.captioned(report.before_images, run.trainer.eval_prompts, report.before_rewards)
    if report.eval_images is not None:
        run.after = formatting.captioned(report.eval_images, run.trainer.eval_prompts, report.eval_rewards)
        run.after_step = report.step
    run.status = formatting.status_line(run, row)


def over_disk_quota(run: Run, hosted: bool) -> bool:
    """True when the run's folder holds more than ``caps(hosted)["run_disk_bytes"]``."""
    return folder_bytes(run.output_dir) > caps(hosted)["run_disk_bytes"]


def folder_bytes(folder: Path) -> int:
    total = 0
    for path in folder.rglob("*") if folder.is_dir() else []:
        try:
            total += path.stat().st_size if path.is_file() else 0
        except OSError:
            pass
    return total


def cancel(session: str) -> None:
    """A cancelled request of ``session`` (closed page, client ``job.cancel()``): its training or
    probe is aborted at the next model call; the LoRA of the last completed iteration is kept."""
    runs.abort_event(session).set()
    run = runs.session_run(session)
    if run is not None and run.running:
        run.stop_requested = True
        run.trainer.abort()


def final_status(run: Run) -> str:
    """"finished N iterations" or "stopped at iteration N", and which LoRA is kept."""
    last = run.history[-1] if run.history else None
    head = f"Stopped at iteration {run.step}" if run.step < run.config.steps else f"Finished {run.step} iterations"
    tail = formatting.status_line(run, last) if last else ""
    where = "Export tab; the last iteration's LoRA is in lora-last" if run.config.keep_best else "Export tab"
    return f"{head}; {kept_lora_text(run)} ({where}). {tail}".strip()


def lora_iteration(run: Run) -> int:
    """The iteration whose LoRA the session holds: the current one while training; after a keep_best training
    the guard's pick (the Trainer loads it when its run ends)."""
    if run.config.keep_best and run.kind == "train" and run.history and not run.running and not run.uploaded_lora:
        return int(run.trainer.guard.best_step)
    return run.step


def kept_lora_text(run: Run) -> str:
    """"LoRA kept", and with keep_best which iteration's (the Trainer loads it when its run ends)."""
    if not run.config.keep_best:
        return "LoRA kept"
    return f"LoRA kept: the guard's pick, iteration {run.trainer.guard.best_step}"


def stop(session: str) -> str:
    """Ask the session's training to stop after the iteration in progress; the answer for a toast."""
    run = runs.session_run(session)
    if run is None or not run.running:
        return "Nothing is running in this session."
    run.stop_requested = True
    run.trainer.stop()
    if not run.history:
        return "Stopping before the first iteration; the LoRA is kept."
    return "Stopping after this iteration; the LoRA is kept."
