"""Where and in which precision a model runs: device and dtype choice, attention backend, TF32, autocast."""

from __future__ import annotations

import contextlib
from typing import Any, ContextManager

import torch

ATTENTION_BACKENDS = ("sdpa", "eager")  # PyTorch SDPA (AttnProcessor2_0) or the classic softmax(QK^T)V
_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> cuda if available, else mps, else cpu; otherwise ``torch.device(device)``."""
    if isinstance(device, torch.device):
        return device
    if not isinstance(device, str):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}")
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but CUDA is not available; use 'auto' or 'cpu'")
    return dev


def resolve_dtype(dtype: str | torch.dtype = "auto", device: torch.device | None = None) -> torch.dtype:
    """``"auto"`` -> float16 on cuda, float32 otherwise; also accepts float32/fp32/float16/fp16/bfloat16/bf16."""
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"dtype must be one of auto, float32, float16, bfloat16, got {dtype}")
        return dtype
    if dtype == "auto":
        return torch.float16 if device is not None and device.type == "cuda" else torch.float32
    if isinstance(dtype, str) and dtype.lower() in _DTYPES:
        return _DTYPES[dtype.lower()]
    raise ValueError(f"dtype must be one of auto, float32 (fp32), float16 (fp16), bfloat16 (bf16), got {dtype!r}")


def set_attention(module: Any, attention: str) -> None:
    """Give every diffusers ``Attention`` of ``module`` the processor of ``attention`` ("sdpa" / "eager")."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    if attention not in ATTENTION_BACKENDS:
        raise ValueError(f"attention must be one of {list(ATTENTION_BACKENDS)}, got {attention!r}")
    if hasattr(module, "set_attn_processor") and getattr(module, "attn_processors", None):
        module.set_attn_processor(AttnProcessor2_0() if attention == "sdpa" else AttnProcessor())


def enable_tf32(device: torch.device) -> bool:
    """On CUDA allow TF32 matmuls and cuDNN convolutions (PyTorch's global flags); True if set."""
    if device.type != "cuda":
        return False
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return True


def autocast_context(enabled: bool, device: torch.device, dtype: torch.dtype) -> ContextManager:
    """``torch.autocast`` in ``dtype`` when ``enabled``, else a no-op."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def freeze_to(modules: tuple[Any, ...], device: torch.device, dtype: torch.dtype) -> None:
    """Frozen (no grad), in ``dtype`` on ``device``, eval mode: the base model components (None skipped)."""
    for module in modules:
        if module is not None:
            module.requires_grad_(False)
            if next(module.parameters()).dtype != dtype:
                module.to(dtype=dtype)
            module.to(device=device)
            module.eval()
