"""Static settings of the app: hosted mode, limits, model presets, where runs are written. No math."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from rlr_core.config import HOSTED_LIMITS

HOSTED_ENV = "RLR_STUDIO_HOSTED"
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

# Caps of the UI in hosted mode (the Trainer config limits come from rlr_core.config.HOSTED_LIMITS).
HOSTED_CAPS: dict[str, int] = {
    **HOSTED_LIMITS,
    "pref_k": 8,
    "generate_images": 4,
    "probe_repeats": 8,
    "prompts": 16,
    "prompt_chars": 500,  # characters per prompt / text field
    "json_chars": 4000,  # characters of a JSON options field
    "config_bytes": 64 * 1024,  # an uploaded config file
    "lora_bytes": 256 * 1024 * 1024,  # an uploaded LoRA file
    "run_disk_bytes": 256 * 1024 * 1024,  # everything one run writes (metrics, LoRA, exports, click images)
    "idle_seconds": 30 * 60,  # a run nobody used for this long is dropped (its files stay until expiry)
    "run_folder_seconds": 2 * 3600,  # run folders (and Gradio's file cache) older than this are deleted
}
LOCAL_CAPS: dict[str, int] = {
    "num_steps": 1000,
    "batch_size": 256,
    "steps": 100_000,
    "lora_rank": 256,
    "eval_seeds": 64,
    "pref_k": 32,
    "generate_images": 16,
    "probe_repeats": 64,
    "prompts": 10_000,
    "prompt_chars": 100_000,
    "json_chars": 1_000_000,
    "config_bytes": 1024 * 1024,
    "lora_bytes": 4 * 1024**3,
    "run_disk_bytes": 64 * 1024**3,
    "idle_seconds": 7 * 24 * 3600,
    "run_folder_seconds": 30 * 24 * 3600,
}


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def on_spaces() -> bool:
    """True inside a Hugging Face Space (the platform sets SPACE_ID)."""
    return bool(os.environ.get("SPACE_ID"))


def hosted_from_env() -> bool:
    """``RLR_STUDIO_HOSTED=1`` or running on a Hugging Face Space."""
    return env_flag(HOSTED_ENV) or on_spaces()


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
