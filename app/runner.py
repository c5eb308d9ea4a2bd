"""What the app does, without Gradio, in one place: the Gradio handlers (:mod:`app.ui`, :mod:`app.tabs`)
call only this module. Every computation is a call into ``rlr_core``; the app only orchestrates (which run,
which lock, which files) and reports bad input as ``FieldError`` naming the form's field.

* :mod:`app.training`: a session's run (``rlr_core.run.TrainingRun``), the training stream, Stop and cancel;
* :mod:`app.clicks`: preference rounds and click updates;
* :mod:`app.probe`: the memory prediction before Start and the Diagnostics probe;
* :mod:`app.transfer`: export, and the config / LoRA uploads;
* here: :func:`generate` (images with or without the session's LoRA).
"""

from __future__ import annotations

from typing import Any

from rlr_core.config import MAX_SEED
from rlr_core.images import to_pil
from rlr_core.sampling import sample

from . import runs
from .clicks import PREFERENCE_MODES, noise_group_batch, preference_round, preference_run, preference_update
from .errors import FieldError
from .form import FORM_DEFAULTS, config_from_form, form_from_config, parse_int, parse_seed
from .locks import WORK_LOCK
from .probe import diagnostics, predict_memory
from .settings import caps
from .training import (cancel, create_run, final_status, kept_lora_text, lora_iteration, record_report, require_run, stop,
                       train_stream)
from .transfer import (check_upload_size, export, kept_lora_note, last_lora_beside, load_config_file, portable_config,
                       snippet, upload_lora)

__all__ = ["FORM_DEFAULTS", "config_from_form", "form_from_config", "create_run", "train_stream", "stop", "cancel",
           "generate", "preference_round", "preference_update", "diagnostics", "predict_memory", "export", "snippet",
           "upload_lora", "load_config_file", "PREFERENCE_MODES", "noise_group_batch", "preference_run",
           "final_status", "kept_lora_text", "lora_iteration", "record_report", "require_run", "check_upload_size",
           "portable_config", "last_lora_beside", "kept_lora_note"]


def generate(session: str, model: str, prompt: str, seed: Any, use_lora: bool, hosted: bool,
             num_images: int = 4) -> list[tuple[Any, str]]:
    """Images for ``prompt`` from seeds seed, seed+1, ... with the session's LoRA or the base model."""
    prompt = str(prompt or "").strip()
    if not prompt:
        raise FieldError("Prompt", "enter a prompt")
    seed = parse_seed("Seed", seed)
    n = parse_int("number of images", num_images, 1, caps(hosted)["generate_images"])
    model = str(model or "").strip()
    seeds = [(seed + i) % (MAX_SEED + 1) for i in range(n)]
    if use_lora:
        run = require_run(session, "use_lora")
        if model and model != run.config.model:
            raise FieldError("Model", f"this session's LoRA was trained on {run.config.model!r}, not {model!r}; "
                                      f"pass that model or use_lora=false")
        with runs.using(run) as chain:
            images = sample(chain, [prompt] * n, seeds=seeds)
        label = f"{run.config.model} + LoRA ({lora_iteration(run)} it)"
    else:
        config = config_from_form({"model": model or "tiny"}, hosted)
        run = runs.session_run(session)
        if run is not None and run.config.model == config.model:
            config = run.config  # same sampler settings as the session's run
        chain = runs.MODELS.get(config, session).variant(config)
        with WORK_LOCK, chain.adapters_disabled():
            images = sample(chain, [prompt] * n, seeds=seeds)
        label = f"{config.model} (base)"
    return [(image, f"{label} · seed {s}") for image, s in zip(to_pil(images) or [], seeds)]
