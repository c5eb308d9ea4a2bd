"""Hosted mode: every limit a public server (a Hugging Face Space) puts on strangers, in one place.

A shared server must not be monopolised, read its own files or run a stranger's code, so in hosted mode
(``RLR_STUDIO_HOSTED=1``, ``rlr-studio --hosted``, or any Hugging Face Space) sizes and work are capped
(:data:`HOSTED_LIMITS`), reward options that pick a model, a file or a folder take only the listed values
(:data:`HOSTED_REWARD_OPTION_VALUES`), some rewards and all reward plug-ins are refused, and local model
folders are refused. :func:`check_hosted` checks a ``TrainConfig`` against the limits; the app's Train
form reads the same table for its widgets. See docs/hosting.md.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from rlr_core.config import ConfigError

__all__ = ["HOSTED_ENV", "is_hosted", "HOSTED_LIMITS", "HOSTED_CONFIG_LIMITS", "HOSTED_ESTIMATOR_LIMITS",
           "HOSTED_WORK_LIMIT", "HOSTED_REWARD_OPTION_VALUES", "HOSTED_REFUSED_REWARDS", "check_hosted",
           "looks_like_local_path"]

HOSTED_ENV = "RLR_STUDIO_HOSTED"
"""Environment variable that switches hosted mode on (1, true, yes or on)."""


def is_hosted() -> bool:
    """True when ``$RLR_STUDIO_HOSTED`` is 1, true, yes or on."""
    return os.environ.get(HOSTED_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


HOSTED_LIMITS: dict[str, int] = {
    # TrainConfig fields (eval_seeds and prompts: how many entries)
    "num_steps": 50,
    "batch_size": 8,
    "steps": 500,
    "lora_rank": 64,
    "eval_seeds": 16,
    "prompts": 16,
    "prompt_chars": 500,  # characters per prompt / text field
    # work of one run: iterations x batch x sampling steps x (PPO epochs + 1); 100,000 is the default tiny
    # run (50 x 4 x 20) 25 times over, or 500 iterations of SD at batch 8 and 25 steps
    "work": 100_000,
    # estimator options that multiply the work of an iteration
    "estimator_options.inner_epochs": 8,
    "estimator_options.lr_samples": 16,
    "estimator_options.chain_len": 1000,
    "estimator_options.h": 1000,
    "estimator_options.k": 1000,
    "estimator_options.k_max": 1000,
    "estimator_options.n": 8,
    "estimator_options.jumps": 50,
    "estimator_options.cv_jumps": 50,
    # reward options
    "reward_text_chars": 500,  # longest text of a string reward option (texts to score against)
    "reward_texts": 64,  # most captions in contrast_texts
    # the app
    "pref_k": 8,  # images per preference round
    "generate_images": 4,
    "probe_repeats": 8,  # repeats of the diagnostics tab
    "json_chars": 4000,  # characters of a JSON options field
    "config_bytes": 64 * 1024,  # an uploaded config file
    "lora_bytes": 256 * 1024 * 1024,  # an uploaded LoRA file
    "run_disk_bytes": 256 * 1024 * 1024,  # everything one run writes (metrics, LoRA, exports, click images)
    "max_runs": 16,  # runs kept in memory at once
    "idle_seconds": 30 * 60,  # a run nobody used for this long is dropped (its files stay until expiry)
    "run_folder_seconds": 2 * 3600,  # run folders (and Gradio's file cache) older than this are deleted
    "cache_sweep_seconds": 600,  # how often Gradio's file cache is swept
    # the Space's queue (app/space.py)
    "queue_concurrency": 4,
    "queue_size": 32,
    # ZeroGPU: one GPU call trains this many iterations or seconds at most (env RLR_STUDIO_CHUNK / _SECONDS)
    "zerogpu_chunk_iterations": 10,
    "zerogpu_chunk_seconds": 120,
}
"""Every numeric limit of hosted mode (sizes, counts, work, bytes, seconds)."""

HOSTED_CONFIG_LIMITS: dict[str, int] = {name: HOSTED_LIMITS[name] for name in
                                        ("num_steps", "batch_size", "steps", "lora_rank", "eval_seeds", "prompts")}
"""The TrainConfig fields of :data:`HOSTED_LIMITS` (for a list: most entries)."""

HOSTED_ESTIMATOR_LIMITS: dict[str, int] = {key.split(".", 1)[1]: value for key, value in HOSTED_LIMITS.items()
                                           if key.startswith("estimator_options.")}
"""Largest values of the estimator options that multiply the work of an iteration."""

HOSTED_WORK_LIMIT = HOSTED_LIMITS["work"]
"""Most image-steps one run may ask for, iterations x batch x sampling steps x (PPO epochs + 1)."""

HOSTED_REWARD_OPTION_VALUES: dict[str, dict[str, tuple]] = {
    "aesthetic": {"clip_model": ("ViT-L-14-quickgelu",), "pretrained": ("openai",), "precision": ("fp32",),
                  "cache_dir": ("",), "head_path": ("",)},
    "clip": {"clip_model": ("ViT-L-14-quickgelu", "tiny-clip"), "model": ("", "tiny-clip", "ViT-L-14-quickgelu"),
             "pretrained": ("openai",), "precision": ("fp32",), "cache_dir": ("",)},
    "pickscore": {"model": ("yuvalkirstain/PickScore_v1",), "processor": ("laion/CLIP-ViT-H-14-laion2B-s32B-b79K",),
                  "precision": ("fp32",), "cache_dir": ("",)},
    "hpsv2": {"version": ("v2.1",), "checkpoint": ("",), "clip_model": ("ViT-H-14",), "precision": ("fp32",),
              "cache_dir": ("",)},
}
"""The only values of the reward options that choose a model, a file or a folder. Anything else would read
server files (``head_path``, ``checkpoint``, ``cache_dir``) or load one more large model per distinct value
(``clip_model``, ``pretrained``, ``precision``, ...), so it is refused before loading."""

HOSTED_REFUSED_REWARDS: dict[str, str] = {
    "preference": "its click log is a server file; use the Preference tab, which keeps its own log",
}
"""Rewards refused in hosted mode, with the reason (reward plug-ins are refused as well: they run code)."""


def looks_like_local_path(model: str) -> bool:
    """True when ``model`` names a local folder rather than ``"tiny"`` or a Hub id."""
    return model != "tiny" and (model.startswith((".", "/", "~")) or os.path.exists(model))


def check_hosted(config: Any, estimator_defaults: Mapping[str, Any] | None = None) -> Any:
    """``config`` (a validated ``TrainConfig``), or ``ConfigError`` naming the field it breaks in hosted mode:
    a limit of :data:`HOSTED_LIMITS` (sizes, prompt lengths, estimator options, the work of the run) or a
    local model folder. ``estimator_defaults``: the estimator's default options (its default PPO epochs
    count in the work)."""
    for name, limit in HOSTED_CONFIG_LIMITS.items():
        value = getattr(config, name)
        size = len(value) if isinstance(value, list) else value
        if size > limit:
            raise ConfigError(name, f"{name} must be at most {limit} on a hosted Space; got {size}")
    chars = HOSTED_LIMITS["prompt_chars"]
    for name in ("prompts", "eval_prompts", "coarse_prompt", "mid_prompt", "fine_prompt"):
        value = getattr(config, name)
        longest = max((len(text) for text in value), default=0) if isinstance(value, list) else len(value)
        if longest > chars:
            raise ConfigError(name, f"{name} must be at most {chars} characters per prompt on a hosted Space; "
                                    f"got {longest:,}")
    if looks_like_local_path(config.model):
        raise ConfigError("model", f"model must be 'tiny' or a Hugging Face Hub id on a hosted Space; got local path "
                                   f"{config.model!r}")
    options = config.estimator_options
    for name, limit in HOSTED_ESTIMATOR_LIMITS.items():
        value = options.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > limit:
            raise ConfigError("estimator_options",
                              f"estimator_options {name} must be at most {limit} on a hosted Space; got {value:g}")
    epochs = {**(estimator_defaults or {}), **options}.get("inner_epochs", 1)
    epochs = int(epochs) if isinstance(epochs, (int, float)) and not isinstance(epochs, bool) and epochs >= 1 else 1
    work = config.steps * config.batch_size * config.num_steps * (epochs + 1)
    if work > HOSTED_WORK_LIMIT:
        raise ConfigError("steps", f"steps x batch_size x num_steps x (PPO epochs + 1) must be at most "
                                   f"{HOSTED_WORK_LIMIT:,} on a hosted Space; got {config.steps} x {config.batch_size} x "
                                   f"{config.num_steps} x {epochs + 1} = {work:,} (fewer iterations, a smaller batch or "
                                   "fewer sampling steps)")
    return config
