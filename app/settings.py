"""Static settings of the app: hosted mode, limits, model presets, where runs are written. No math.

The hosted limits are ``rlr_core.hosted.HOSTED_LIMITS`` (one table); the local ones below take the config's
bounds from ``rlr_core.config.FIELD_SPECS``."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from rlr_core.config import field_spec
from rlr_core.hosted import HOSTED_ENV, HOSTED_LIMITS, is_hosted

__all__ = ["HOSTED_ENV", "HOME_ENV", "MODEL_PRESETS", "HOSTED_MODELS_ENV", "hosted_models", "DEFAULT_PROMPTS",
           "HOSTED_CAPS", "LOCAL_CAPS", "env_flag", "on_spaces", "hosted_from_env", "caps", "runs_root",
           "tiny_model_available", "TINY_MISSING_MESSAGE", "idle_seconds", "run_folder_seconds"]

HOME_ENV = "RLR_STUDIO_HOME"

MODEL_PRESETS: list[tuple[str, str]] = [
    ("tiny (bundled)", "tiny"),
    ("SD 1.4", "CompVis/stable-diffusion-v1-4"),
    ("SD 1.5", "stable-diffusion-v1-5/stable-diffusion-v1-5"),
    ("SD 2.1-base", "stabilityai/stable-diffusion-2-1-base"),
]

HOSTED_MODELS_ENV = "RLR_STUDIO_HOSTED_MODELS"


def hosted_models() -> list[str]:
    """The models a hosted server may load: the presets plus the comma-separated Hub ids of
    ``$RLR_STUDIO_HOSTED_MODELS`` (each Hub model is GBs of download and disk, so strangers may
    not pick any repository)."""
    extra = [m.strip() for m in os.environ.get(HOSTED_MODELS_ENV, "").split(",") if m.strip()]
    return list(dict.fromkeys([value for _, value in MODEL_PRESETS] + extra))


DEFAULT_PROMPTS = "a red circle on a blue background\na green square on a yellow background"

HOSTED_CAPS: dict[str, int] = HOSTED_LIMITS
"""Limits in hosted mode: the one table of ``rlr_core.hosted``."""

LOCAL_CAPS: dict[str, int] = {
    # the config's own bounds (rlr_core.config.FIELD_SPECS)
    **{name: int(field_spec(name).max) for name in ("num_steps", "batch_size", "steps", "lora_rank")},
    **{name: int(field_spec(name).max_items) for name in ("eval_seeds", "prompts")},
    "pref_k": 32,
    "generate_images": 16,
    "probe_repeats": 64,
    "prompt_chars": 100_000,
    "json_chars": 1_000_000,
    "config_bytes": 1024 * 1024,
    "lora_bytes": 4 * 1024**3,
    "run_disk_bytes": 64 * 1024**3,
    "max_runs": 64,
    "idle_seconds": 7 * 24 * 3600,
    "run_folder_seconds": 30 * 24 * 3600,
}
"""Limits of a local app (the user's own machine): the config's bounds, and sizes that keep one app usable."""


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def on_spaces() -> bool:
    """True inside a Hugging Face Space (the platform sets SPACE_ID)."""
    return bool(os.environ.get("SPACE_ID"))


def hosted_from_env() -> bool:
    """``RLR_STUDIO_HOSTED=1`` or running on a Hugging Face Space."""
    return is_hosted() or on_spaces()


def caps(hosted: bool) -> dict[str, int]:
    return HOSTED_CAPS if hosted else LOCAL_CAPS


def runs_root() -> Path:
    """Where runs (metrics, LoRA, click logs, exports) are written: $RLR_STUDIO_HOME or <tmp>/rlr-studio."""
    root = Path(os.environ.get(HOME_ENV) or Path(tempfile.gettempdir()) / "rlr-studio")
    root.mkdir(parents=True, exist_ok=True)
    return root


def tiny_model_available() -> bool:
    from rlr_core.diffusers_chain import TINY_MODEL_DIR

    return (TINY_MODEL_DIR / "unet").is_dir()


TINY_MISSING_MESSAGE = (
    "model: the bundled tiny model is not built yet (assets/tiny-shapes has no unet/). "
    "Enter a local diffusers folder or a Hub id in the model field instead."
)


def idle_seconds(hosted: bool) -> int:
    """After how long without use a run is dropped from memory."""
    return caps(hosted)["idle_seconds"]


def run_folder_seconds(hosted: bool) -> int:
    """After how long a run folder no live run uses is deleted."""
    return caps(hosted)["run_folder_seconds"]
