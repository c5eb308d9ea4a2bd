"""The old home of ``DiffusersChain``: a re-export of :mod:`rlr_core.models` (kept so existing imports work)."""

from .models.condition import DiffusersCondition
from .models.ddim import DEFAULT_GUIDANCE_SCALE, DEFAULT_NUM_STEPS, PREDICTION_TYPES
from .models.devices import ATTENTION_BACKENDS, resolve_device, resolve_dtype
from .models.diffusers_chain import DiffusersChain
from .models.loading import (REPO_ROOT, STUDIO_CONFIG_NAME, TINY_MODEL_DIR, ModelUnavailableError, load_model,
                             model_defaults)
from .models.lora import LORA_CONFIG_NAME, LORA_TARGET_MODULES, LORA_WEIGHT_NAME

__all__ = ["ATTENTION_BACKENDS", "DEFAULT_GUIDANCE_SCALE", "DEFAULT_NUM_STEPS", "DiffusersChain", "DiffusersCondition",
           "LORA_CONFIG_NAME", "LORA_TARGET_MODULES", "LORA_WEIGHT_NAME", "ModelUnavailableError", "PREDICTION_TYPES",
           "REPO_ROOT", "STUDIO_CONFIG_NAME", "TINY_MODEL_DIR", "load_model", "model_defaults", "resolve_device",
           "resolve_dtype"]
