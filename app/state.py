"""Process-level state of the app: the model cache, the runs, the per-session ids, the work lock.

* Per browser session the app keeps only ids: ``SESSIONS[session_hash] -> run id`` (Gradio's
  ``request.session_hash``; the same for every call of one browser tab or one gradio_client).
* Models live in one process-level cache keyed by their weights (model, LoRA rank and alpha,
  dtype, device; at most ``MAX_MODELS``). Runs with other sampler settings get a variant of the
  loaded chain that shares its weights and LoRA parameters; each run keeps its own LoRA, and the
  weights hold the LoRA of one run at a time (the "owner"): :func:`using` swaps a run's LoRA in
  before any work on the chain.
* Runs live in ``RUNS[run_id]``; a run holds its Trainer (optimizer state), estimator, reward,
  history of reports (for the plots), before/after images, preference session and click log.
  Idle runs expire (:func:`expire_idle`), old run folders are deleted (:func:`remove_old_run_folders`).
* All GPU/CPU work happens inside :func:`using`, under one process-wide :class:`WorkLock` that
  lets waiting short requests go before the next training iteration.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from rlr_core.config import TrainConfig, resolve_lora_targets
from rlr_core.hub import WeightsUnavailableError
from rlr_core.run import TrainingRun
from rlr_core.trainer import Trainer

from .settings import runs_root

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

MAX_MODELS = 2
"""Loaded model weights kept at once (each SD model is several GB); sampler-setting variants share them."""
MAX_VARIANTS = 8
MAX_RUNS = 64
HOSTED_MAX_RUNS = 16


class FieldError(ValueError):
    """Bad input; ``field`` names the UI field / API argument (shown in the toast)."""

    def __init__(self, field_name: str, message: str) -> None:
        self.field = field_name
        text = message if message.startswith(field_name) else f"{field_name}: {message}"
        super().__init__(text)


# ----------------------------------------------------------------------------------- models
@dataclass
class ModelEntry:
    """One loaded model (its weights once) and the sampler-setting variants of it in use."""

    key: tuple
    chain: Any  # the chain loaded first; variants share its modules and LoRA parameters
    initial_lora: dict[str, Any]  # the fresh LoRA right after loading (every new run starts here)
    default_guidance: float = 7.5
    owner: str | None = None  # id of the run whose LoRA is in the chain now
    loaded_at: float = field(default_factory=time.time)
    load_seconds: float = 0.0
    variants: OrderedDict = field(default_factory=OrderedDict)

    def variant(self, config: TrainConfig) -> Any:
        """The chain with ``config``'s sampler settings (shares the weights of ``chain``)."""
        key = sampler_key(config)
        chain = self.variants.get(key)
        if chain is None:
            if key == self.chain.loaded_sampler_key:  # the settings it was loaded with
                chain = self.chain
            else:
                guidance = self.default_guidance if config.guidance_scale is None else config.guidance_scale
                boundaries = list(config.prompt_boundaries) if config.uses_prompt_schedule else None
                chain = self.chain.with_sampler_settings(config.num_steps, guidance, config.eta, boundaries)
                chain.gradient_checkpointing = bool(config.gradient_checkpointing)
            self.variants[key] = chain
            while len(self.variants) > MAX_VARIANTS:
                self.variants.popitem(last=False)  # runs keep theirs; the cache only forgets it
        self.variants.move_to_end(key)
        return chain


def model_key(config: TrainConfig) -> tuple:
    """Cache key of the weights: model, LoRA rank, alpha and targets, dtype, device."""
    return (config.model, int(config.lora_rank), config.lora_alpha, tuple(resolve_lora_targets(config.lora_targets)),
            config.dtype, config.device)


def sampler_key(config: TrainConfig) -> tuple:
    """The sampler settings a chain variant is built with."""
    boundaries = tuple(config.prompt_boundaries) if config.uses_prompt_schedule else None
    return (int(config.num_steps), config.guidance_scale, float(config.eta), boundaries, bool(config.gradient_checkpointing))



class ModelCache:
    """The loaded models: at most ``capacity`` distinct weights. A model no live run uses is dropped
    first (least recently used); when every loaded model is in use by other sessions, a new one is
    refused with a FieldError rather than loaded past the bound."""

    def __init__(self, capacity: int = MAX_MODELS) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[tuple, ModelEntry] = OrderedDict()
        self._lock = threading.RLock()

    def get(self, config: TrainConfig, session: str | None = None) -> ModelEntry:
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
                self._make_room(session)
            start = time.perf_counter()
            chain = load_chain(config)
            chain.loaded_sampler_key = sampler_key(config)
            entry = ModelEntry(key, chain, chain.lora_state_dict(), default_guidance=float(chain.guidance_scale)
                               if config.guidance_scale is None else _default_guidance(config.model),
                               load_seconds=time.perf_counter() - start)
            with self._lock:
                self._entries[key] = entry
            return entry

    def _make_room(self, session: str | None) -> None:
        """Drop unused models until one more fits; FieldError when the others are all in use."""
        while len(self._entries) >= self.capacity:
            in_use = models_in_use(exclude_session=session)
            free = [key for key in self._entries if key not in in_use]
            if not free:
                loaded = ", ".join(sorted({key[0] for key in self._entries}))
                raise FieldError("Model", f"this server keeps at most {self.capacity} models in memory and they are in use "
                                          f"by other sessions ({loaded}); pick one of those or try again later")
            self._entries.pop(free[0])

    def keys(self) -> list[tuple]:
        with self._lock:
            return list(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def _default_guidance(model: str) -> float:
    from rlr_core.diffusers_chain import model_defaults

    return float(model_defaults(model)["guidance_scale"])


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
    preference: Any = None  # rlr_core.rewards.preference.PreferenceSession
    round: Any = None  # the PreferenceRound on screen
    counters: dict[str, int] = field(default_factory=lambda: {"rounds": 0, "clicks": 0, "updates": 0})
    optimizer_state: dict[str, Any] | None = None  # CPU copy between ZeroGPU chunks
    last_used: float = field(default_factory=time.time)  # idle runs expire (settings.idle_seconds)

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
        limit = HOSTED_MAX_RUNS if hosted else MAX_RUNS
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


def expire_idle(hosted: bool, now: float | None = None) -> list[str]:
    """Drop the runs nobody used for ``settings.idle_seconds(hosted)`` (not while training); their ids."""
    from .settings import idle_seconds

    now = time.time() if now is None else now
    limit = idle_seconds(hosted)
    with _REGISTRY_LOCK:
        stale = [r.id for r in RUNS.values() if not r.running and now - r.last_used > limit]
    for run_id in stale:
        drop_run(run_id)
    return stale


def remove_old_run_folders(hosted: bool, now: float | None = None) -> list[Path]:
    """Delete run folders older than ``settings.run_folder_seconds(hosted)`` that no live run uses."""
    import shutil

    from .settings import run_folder_seconds

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
