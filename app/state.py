"""Process-level state of the app, one import away: the names of :mod:`app.errors`, :mod:`app.locks`,
:mod:`app.model_cache` and :mod:`app.runs` (where each is defined and documented).

* :mod:`app.locks`: the work lock that orders all GPU/CPU work (short requests before training iterations).
* :mod:`app.model_cache`: loaded weights, shared by runs through sampler-setting variants.
* :mod:`app.runs`: the runs, the per-session ids, expiry, and :func:`using` (a run's LoRA swapped in).
"""

from __future__ import annotations

from rlr_core.hosted import HOSTED_LIMITS

from .errors import FieldError
from .locks import WORK_LOCK, WorkLock
from .model_cache import MAX_MODELS, MAX_VARIANTS, ModelCache, ModelEntry, load_chain, model_key, sampler_key
from .runs import (MODELS, RUNS, SESSIONS, Run, abort_event, current_lora, drop_run, drop_session, expire_idle,
                   fresh_abort_event, get_run, models_in_use, new_run_id, register, remove_old_run_folders, reset_all,
                   run_dir, session_run, using)
from .settings import LOCAL_CAPS, runs_root

MAX_RUNS = LOCAL_CAPS["max_runs"]
"""Runs kept in memory by a local app (``app.settings.LOCAL_CAPS``)."""
HOSTED_MAX_RUNS = HOSTED_LIMITS["max_runs"]
"""Runs kept in memory in hosted mode (``rlr_core.hosted.HOSTED_LIMITS``)."""

__all__ = ["FieldError", "WorkLock", "WORK_LOCK", "MAX_MODELS", "MAX_VARIANTS", "MAX_RUNS", "HOSTED_MAX_RUNS",
           "ModelEntry", "ModelCache", "model_key", "sampler_key", "load_chain", "MODELS", "Run", "RUNS", "SESSIONS",
           "new_run_id", "run_dir", "register", "session_run", "models_in_use", "expire_idle", "remove_old_run_folders",
           "get_run", "drop_run", "abort_event", "fresh_abort_event", "drop_session", "using", "current_lora",
           "reset_all", "runs_root"]
