"""The models layer: diffusers chains and how they are built (see docs/models.md).

    devices.py          device / dtype choice, attention backend, TF32, autocast
    ddim.py             DDIM(eta) maths as plain functions
    condition.py        prompt encoding (per-phase embeddings)
    lora.py             LoRA attach / state / the one save and load path
    diffusers_chain.py  DiffusersChain (the Chain protocol over a diffusers UNet)
    loading.py          load_model ("tiny", a local folder, a Hub id), model_defaults
    sd_arch.py          random-init Stable Diffusion architectures, built offline
"""

from .condition import DiffusersCondition
from .devices import resolve_device, resolve_dtype
from .diffusers_chain import DiffusersChain
from .loading import TINY_MODEL_DIR, ModelUnavailableError, load_model, model_defaults

__all__ = ["DiffusersChain", "DiffusersCondition", "ModelUnavailableError", "TINY_MODEL_DIR", "load_model",
           "model_defaults", "resolve_device", "resolve_dtype"]
