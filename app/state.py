"""Process-level state of the app: the model cache, the runs, the per-session ids, the work lock.

* Per browser session the app keeps only ids: ``SESSIONS[session_hash] -> run id`` (Gradio's
  ``request.session_hash``; the same for every call of one browser tab or one gradio_client).
* Models live in one process-level cache keyed by (model, LoRA rank, dtype) plus the sampler
  settings a loaded chain bakes in (steps, guidance, eta, device, ...). Sessions with the same
  key share one chain; each run keeps its own LoRA, and the chain holds the LoRA of one run at a
  time (the "owner"): :func:`using` swaps a run's LoRA in before any work on the chain.
* Runs live in ``RUNS[run_id]``; a run holds its Trainer (optimizer state), estimator, reward,
  history of reports (for the plots), before/after images, preference session and click log.
* All GPU/CPU work happens inside :func:`using`, under one process-wide lock; the UI additionally
  sends every heavy event through one Gradio queue (``concurrency_id="gpu"``, limit 1).
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from rlr_core.config import TrainConfig
from rlr_core.hub import WeightsUnavailableError
from rlr_core.run import TrainingRun
from rlr_core.trainer import Trainer

from .settings import runs_root

WORK_LOCK = threading.RLock()
"""Held while a chain computes: one piece of GPU/CPU work at a time in this process."""

MAX_MODELS = 2
MAX_RUNS = 64


class FieldError(ValueError):
    """Bad input; ``field`` names the UI field / API argument (shown in the toast)."""

    def __init__(self, field_name: str, message: str) -> None:
        self.field = field_name
        text = message if message.startswith(field_name) else f"{field_name}: {message}"
        super().__init__(text)


# ----------------------------------------------------------------------------------- models
@dataclass
class ModelEntry:
    key: tuple
    chain: Any
    initial_lora: dict[str, Any]  # the fresh LoRA right after loading (every new run starts here)
    owner: str | None = None  # id of the run whose LoRA is in the chain now
    loaded_at: float = field(default_factory=time.time)
    load_seconds: float = 0.0


def model_key(config: TrainConfig) -> tuple:
    """Cache key: (model, rank, dtype) and the sampler settings a chain is built with."""
    boundaries = tuple(config.prompt_boundaries) if config.uses_prompt_schedule else None
    return (
        config.model,
        int(config.lora_rank),
        config.dtype,
        config.lora_alpha,
        int(config.num_steps),
        config.guidance_scale,
        float(config.eta),
        config.device,
        bool(config.gradient_checkpointing),
        boundaries,
    )


class ModelCache:
    """LRU cache of loaded chains (at most ``MAX_MODELS``; runs keep their own reference)."""

    def __init__(self, capacity: int = MAX_MODELS) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[tuple, ModelEntry] = OrderedDict()
        self._lock = threading.RLock()

    def get(self, config: TrainConfig) -> ModelEntry:
        key = model_key(config)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                return entry
        with WORK_LOCK:  # loading is heavy work too
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None:
                    return entry
            start = time.perf_counter()
            chain = load_chain(config)
            entry = ModelEntry(key, chain, chain.lora_state_dict(), load_seconds=time.perf_counter() - start)
            with self._lock:
                self._entries[key] = entry
                while len(self._entries) > self.capacity:
                    self._entries.popitem(last=False)
            return entry

    def keys(self) -> list[tuple]:
        with self._lock:
            return list(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def load_chain(config: TrainConfig) -> Any:
    """``config.load_chain()`` (the call ``TrainingRun.from_config`` makes), errors naming the Model field."""
    try:
        return config.load_chain()
    except WeightsUnavailableError as error:
        raise FieldError("Model", str(error)) from error
    except (OSError, ValueError) as error:
        raise FieldError("Model", f"could not load {config.model!r}: {error}") from error


MODELS = ModelCache()


# ----------------------------------------------------------------------------------- runs
@dataclass
class Run:
    """One run of one session (process-level; sessions hold its id): the library's TrainingRun
    (config, chain, reward, estimator, Trainer) plus what the UI shows of it."""

    id: str
    session: str
    training: TrainingRun
    entry: ModelEntry
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
    preference: Any = None  # rlr_core.rewards.preference.PreferenceSession
    round: Any = None  # the PreferenceRound on screen
    counters: dict[str, int] = field(default_factory=lambda: {"rounds": 0, "clicks": 0, "updates": 0})
    optimizer_state: dict[str, Any] | None = None  # CPU copy between ZeroGPU chunks

    @property
    def config(self) -> TrainConfig:
        return self.training.config

    @property
    def trainer(self) -> Trainer:
        return self.training.trainer

    @property
    def estimator(self) -> Any:
        return self.training.estimator

    @property
    def reward(self) -> Any:
        return self.training.reward

    @property
    def chain(self) -> Any:
        return self.entry.chain

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


def register(run: Run) -> None:
    """Make ``run`` the session's current run; the session's previous run is dropped."""
    with _REGISTRY_LOCK:
        old = SESSIONS.get(run.session)
        RUNS[run.id] = run
        SESSIONS[run.session] = run.id
        if old and old != run.id:
            drop_run(old)
        while len(RUNS) > MAX_RUNS:
            oldest = min(RUNS.values(), key=lambda r: r.created)
            drop_run(oldest.id)


def session_run(session: str) -> Run | None:
    with _REGISTRY_LOCK:
        run_id = SESSIONS.get(session)
        return RUNS.get(run_id) if run_id else None


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


def drop_session(session: str) -> None:
    """Called when a browser session ends: forget its run."""
    with _REGISTRY_LOCK:
        run_id = SESSIONS.get(session)
    if run_id:
        drop_run(run_id)


@contextlib.contextmanager
def using(run: Run) -> Iterator[Any]:
    """Hold the work lock with ``run``'s LoRA loaded in its chain; yields the chain."""
    with WORK_LOCK:
        entry = run.entry
        if entry.owner != run.id:
            previous = RUNS.get(entry.owner) if entry.owner else None
            if previous is not None and previous.lora is None:
                previous.lora = entry.chain.lora_state_dict()
            entry.chain.load_lora_state_dict(run.lora if run.lora is not None else entry.initial_lora)
            run.lora = None
            entry.owner = run.id
        yield entry.chain


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
