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

DEFAULT_PROMPTS = "a red circle on a blue background\na green square on a yellow background"

# Caps of the UI in hosted mode (the Trainer config limits come from rlr_core.config.HOSTED_LIMITS).
HOSTED_CAPS: dict[str, int] = {
    **HOSTED_LIMITS,
    "pref_k": 8,
    "generate_images": 4,
    "probe_repeats": 8,
    "prompts": 16,
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
