"""The runs of the app and the sessions that hold them (process-level; a browser session keeps only an id).

* ``SESSIONS[session_hash] -> run id`` (Gradio's ``request.session_hash``; the same for every call of one
  browser tab or one gradio_client).
* ``RUNS[run_id]``: a run holds its ``TrainingRun`` (Trainer with its optimizer state, estimator, reward),
  the history of reports (for the plots), before/after images, preference session and click log. Idle
  runs expire (:func:`expire_idle`), old run folders are deleted (:func:`remove_old_run_folders`), and
  beyond ``caps(hosted)["max_runs"]`` the least recently used idle run is dropped (docs/hosting.md).
* :data:`MODELS`, the model cache (:mod:`app.model_cache`), asks this registry which models live runs use.
* All GPU/CPU work on a run's chain happens inside :func:`using`, under the work lock
  (:mod:`app.locks`), with the run's LoRA swapped in.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from rlr_core.config import TrainConfig
from rlr_core.run import TrainingRun

from .locks import WORK_LOCK
from .model_cache import ModelCache, ModelEntry
from .settings import caps, idle_seconds, run_folder_seconds, runs_root

__all__ = ["Run", "RUNS", "SESSIONS", "MODELS", "new_run_id", "run_dir", "register", "session_run", "models_in_use",
           "expire_idle", "remove_old_run_folders", "get_run", "drop_run", "abort_event", "fresh_abort_event",
           "drop_session", "using", "current_lora", "reset_all"]


@dataclass
class Run:
    """One run of one session (process-level; sessions hold its id): the library's TrainingRun
    (config, chain, reward, estimator, Trainer) plus what the UI shows of it."""

    id: str
    session: str
    training: TrainingRun
    entry: ModelEntry
    chain: Any  # the entry's chain variant with this run's sampler settings
    lora: dict[str, Any] | None  # CPU copy while another run owns the chain; None while loaded
    output_dir: Path
    kind: str = "train"  # "train", or "clicks-direct" / "clicks-learned" for preference runs
    created: float = field(default_factory=time.time)
    history: list[dict[str, Any]] = field(default_factory=list)  # StepReport.to_json_dict() rows
    before: list[tuple[Any, str]] | None = None  # (PIL image, caption), LoRA off, computed once
    after: list[tuple[Any, str]] | None = None
    after_step: int = 0
    running: bool = False
    stop_requested: bool = False
    finished: bool = False
    status: str = "created"
    started_at: float = 0.0  # time.time() of Start (progress and ETA)
    iterations_planned: int = 0  # iterations this Start asked for
    preference: Any = None  # rlr_core.training.clicks.PreferenceSession
    round: Any = None  # the PreferenceRound on screen
    strips: list[Any] = field(default_factory=list)  # app.clicks.Strip: the fixed seeds after each click update
    train_lr: float | None = None  # a click run: the Train settings' learning rate (what "auto" means off the tiny model)
    counters: dict[str, int] = field(default_factory=lambda: {"rounds": 0, "clicks": 0, "updates": 0, "undone": 0})
    optimizer_state: dict[str, Any] | None = None  # CPU copy between ZeroGPU chunks
    uploaded_lora: str = ""  # name of a LoRA file loaded into the run (Export tab), replacing what it trained
    last_used: float = field(default_factory=time.time)  # idle runs expire (settings.idle_seconds)

    @property
    def config(self) -> TrainConfig:
        return self.training.config

    @property
    def trainer(self) -> Any:  # rlr_core's Trainer
        return self.training.trainer

    @property
    def estimator(self) -> Any:
        return self.training.estimator

    @property
    def reward(self) -> Any:
        return self.training.reward

    @property
    def step(self) -> int:
        return int(self.trainer.step)


RUNS: dict[str, Run] = {}
SESSIONS: dict[str, str] = {}  # session hash -> current run id
_REGISTRY_LOCK = threading.RLock()


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def run_dir(run_id: str) -> Path:
    return runs_root() / "runs" / run_id


def register(run: Run, hosted: bool = False) -> None:
    """Make ``run`` the session's current run; the session's previous run is dropped, idle runs
    expire, and the oldest idle runs go beyond the run limit."""
    expire_idle(hosted)
    with _REGISTRY_LOCK:
        old = SESSIONS.get(run.session)
        RUNS[run.id] = run
        SESSIONS[run.session] = run.id
        if old and old != run.id:
            drop_run(old)
        limit = caps(hosted)["max_runs"]
        while len(RUNS) > limit:
            idle = [r for r in RUNS.values() if not r.running and r.id != run.id] or [r for r in RUNS.values() if r.id != run.id]
            drop_run(min(idle, key=lambda r: r.last_used).id)


def session_run(session: str) -> Run | None:
    with _REGISTRY_LOCK:
        run_id = SESSIONS.get(session)
        run = RUNS.get(run_id) if run_id else None
        if run is not None:
            run.last_used = time.time()
        return run


def models_in_use(exclude_session: str | None = None) -> set[tuple]:
    """Model keys of the live runs (those of ``exclude_session`` left out: it is about to replace its run)."""
    with _REGISTRY_LOCK:
        return {run.entry.key for run in RUNS.values() if run.session != exclude_session}


MODELS = ModelCache(in_use=lambda session: models_in_use(exclude_session=session))
"""The process's loaded models; a model a live run of another session uses is never dropped."""


def expire_idle(hosted: bool, now: float | None = None) -> list[str]:
    """Drop the runs nobody used for ``settings.idle_seconds(hosted)`` (not while training); their ids."""
    now = time.time() if now is None else now
    limit = idle_seconds(hosted)
    with _REGISTRY_LOCK:
        stale = [r.id for r in RUNS.values() if not r.running and now - r.last_used > limit]
    for run_id in stale:
        drop_run(run_id)
    return stale


def remove_old_run_folders(hosted: bool, now: float | None = None) -> list[Path]:
    """Delete run folders older than ``settings.run_folder_seconds(hosted)`` that no live run uses."""
    now = time.time() if now is None else now
    keep = {r.output_dir.resolve() for r in list(RUNS.values())}
    removed = []
    root = runs_root() / "runs"
    for folder in root.iterdir() if root.is_dir() else []:
        try:
            age = now - folder.stat().st_mtime
        except OSError:
            continue
        if folder.is_dir() and folder.resolve() not in keep and age > run_folder_seconds(hosted):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def get_run(run_id: str) -> Run | None:
    with _REGISTRY_LOCK:
        return RUNS.get(run_id)


def drop_run(run_id: str) -> None:
    """Forget a run (its files stay on disk); stops it if it is training."""
    with _REGISTRY_LOCK:
        run = RUNS.pop(run_id, None)
        for session, current in list(SESSIONS.items()):
            if current == run_id:
                SESSIONS.pop(session, None)
    if run is None:
        return
    with contextlib.suppress(Exception):
        run.trainer.stop()
    if run.entry.owner == run.id:
        run.entry.owner = None


_ABORTS: dict[str, threading.Event] = {}  # session -> the abort flag of its current cancellable request


def abort_event(session: str) -> threading.Event:
    """The abort flag of the session's current cancellable request (rlr_core.cancel)."""
    with _REGISTRY_LOCK:
        return _ABORTS.setdefault(session, threading.Event())


def fresh_abort_event(session: str) -> threading.Event:
    """A new, unset abort flag for a request that starts now."""
    with _REGISTRY_LOCK:
        _ABORTS[session] = threading.Event()
        return _ABORTS[session]


def drop_session(session: str) -> None:
    """Called when a browser session ends: forget its run."""
    with _REGISTRY_LOCK:
        _ABORTS.pop(session, None)
        run_id = SESSIONS.get(session)
    if run_id:
        drop_run(run_id)


@contextlib.contextmanager
def using(run: Run, kind: str = "short") -> Iterator[Any]:
    """Hold the work lock with ``run``'s LoRA loaded in its chain; yields the run's chain.
    ``kind``: "short" for requests, "iteration" for a training iteration (see WorkLock)."""
    run.last_used = time.time()
    with WORK_LOCK.hold(kind):
        entry = run.entry
        if entry.owner != run.id:
            previous = RUNS.get(entry.owner) if entry.owner else None
            if previous is not None and previous.lora is None:
                previous.lora = entry.chain.lora_state_dict()
            entry.chain.load_lora_state_dict(run.lora if run.lora is not None else entry.initial_lora)
            run.lora = None
            entry.owner = run.id
        yield run.chain


def current_lora(run: Run) -> dict[str, Any]:
    """A CPU copy of the run's LoRA (from the chain when the run owns it)."""
    with WORK_LOCK:
        if run.entry.owner == run.id or run.lora is None:
            with using(run) as chain:
                return chain.lora_state_dict()
        return {k: v.clone() for k, v in run.lora.items()}


def reset_all() -> None:
    """Forget every run, session and cached model (tests)."""
    with _REGISTRY_LOCK:
        for run_id in list(RUNS):
            drop_run(run_id)
        SESSIONS.clear()
    MODELS.clear()
