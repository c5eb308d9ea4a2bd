"""Loading a model as a ``DiffusersChain``: ``"tiny"`` (the bundled model in ``assets/tiny-shapes``), a local
diffusers folder or a Hugging Face Hub id (cache first; offline, a fast clear ``ModelUnavailableError``)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

import torch

from ..config import AUTO_LORA_TARGETS, resolve_lora_targets
from ..hub import WeightsUnavailableError, ensure_can_download, hf_endpoint_host
from .ddim import DEFAULT_GUIDANCE_SCALE, DEFAULT_NUM_STEPS
from .devices import resolve_device, resolve_dtype
from .diffusers_chain import DiffusersChain

STUDIO_CONFIG_NAME = "rlr_studio.json"
REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_MODEL_DIR = REPO_ROOT / "assets" / "tiny-shapes"

# The one "cannot get the weights" error of the project (models and reward weights alike).
ModelUnavailableError = WeightsUnavailableError

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_HUB_PATTERNS = ["model_index.json", "unet/*", "vae/*", "text_encoder/*", "tokenizer/*", "scheduler/*",
                 STUDIO_CONFIG_NAME]
_HUB_IGNORE = ["*.bin", "*.ckpt", "*.msgpack", "*.onnx", "*.onnx_data", "*.pb", "*.h5", "*fp16*", "*non_ema*",
               "*.ema.*", "*openvino*"]


def _download_hub_model(repo_id: str) -> Path:
    """The local snapshot of a Hub diffusers repo (cache first; a clear error when the Hub is unreachable)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS, ignore_patterns=_HUB_IGNORE,
                                      local_files_only=True))
    except Exception:  # not cached (fully): go online if we can
        pass
    weights = f"model '{repo_id}'"
    source = f"the Hugging Face Hub (https://huggingface.co/{repo_id})"
    ensure_can_download(weights, source, hf_endpoint_host())
    try:
        local = Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS, ignore_patterns=_HUB_IGNORE))
        if not any((local / "unet").glob("*.safetensors")):  # older repos: .bin only
            local = Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS,
                                           ignore_patterns=[p for p in _HUB_IGNORE if p != "*.bin"]))
        return local
    except Exception as exc:  # noqa: BLE001 - re-raised with a clear message
        raise ModelUnavailableError(weights, source, f"and the download failed ({type(exc).__name__}: {exc})") from exc


def _resolve_model_dir(name_or_path: str) -> tuple[Path, str]:
    if not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path).strip():
        raise ValueError(f"model must be 'tiny', a local diffusers folder or a Hugging Face Hub id, got {name_or_path!r}")
    name = str(name_or_path).strip()
    if name == "tiny":
        if not (TINY_MODEL_DIR / "unet").is_dir():
            raise ModelUnavailableError("the bundled tiny model", "this repository (assets/tiny-shapes)",
                                        f"but {TINY_MODEL_DIR} has no unet/ folder (a partial clone? re-clone)")
        return TINY_MODEL_DIR, "tiny"
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "unet").is_dir():
            raise ValueError(
                f"model folder {path} is not a diffusers model folder: expected subfolders unet/, text_encoder/, "
                f"tokenizer/, scheduler/ (vae/ optional)"
            )
        return path, name
    if _HUB_ID.match(name) and not name.startswith((".", "/", "~")):
        return _download_hub_model(name), name
    raise ValueError(
        f"model must be 'tiny', an existing local diffusers folder or a Hugging Face Hub id 'owner/name', "
        f"got {name!r} (no such folder)"
    )


def load_model(
    name_or_path: str = "tiny",
    num_steps: int | None = None,
    lora_rank: int = 4,
    lora_alpha: float | None = None,
    guidance_scale: float | None = None,
    eta: float = 1.0,
    final_eta: float = 0.0,
    lora_targets: str | Sequence[str] = "auto",
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    gradient_checkpointing: bool = False,
    prompt_boundaries: Sequence[int | float] | None = None,
    attention: str = "sdpa",
    autocast: bool = False,
    decode_slice_size: int | None = None,
    tf32: bool = True,
) -> DiffusersChain:
    """Load a diffusers text-to-image model as a ``DiffusersChain`` with fresh LoRA adapters.

    ``name_or_path``: ``"tiny"`` (the bundled model in ``assets/tiny-shapes``), a local diffusers folder
    (subfolders unet/, text_encoder/, tokenizer/, scheduler/, optional vae/) or a Hugging Face Hub id.
    Arguments left as None take the folder's ``rlr_studio.json`` defaults when present, else
    num_steps=20 and guidance_scale=7.5. ``lora_targets``: where the LoRA adapters go: "auto" (the folder's
    ``rlr_studio.json`` ``lora_targets``, else "attention"), "attention" (every attention projection),
    "cross-attention" (only the keys and values that read the text), "attention+conv" (attention and the
    ResNet blocks' convolutions) or a list of module-name suffixes. ``device="auto"``: cuda > mps > cpu; ``dtype="auto"``:
    float16 on cuda, float32 otherwise. ``attention``, ``autocast``, ``decode_slice_size``, ``tf32`` and
    ``gradient_checkpointing``: the GPU settings of :class:`DiffusersChain`.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    model_dir, label = _resolve_model_dir(name_or_path)
    defaults: dict[str, Any] = {}
    studio = model_dir / STUDIO_CONFIG_NAME
    if studio.is_file():
        try:
            defaults = json.loads(studio.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{studio} is not valid JSON: {exc}") from exc
    if num_steps is None:
        num_steps = int(defaults.get("num_steps", DEFAULT_NUM_STEPS))
    if guidance_scale is None:
        guidance_scale = float(defaults.get("guidance_scale", DEFAULT_GUIDANCE_SCALE))
    if lora_alpha is None and defaults.get("lora_alpha") is not None and lora_rank == defaults.get("lora_rank"):
        lora_alpha = defaults["lora_alpha"]
    if prompt_boundaries is None and defaults.get("prompt_boundaries") is not None:
        prompt_boundaries = defaults["prompt_boundaries"]
    lora_targets = resolve_lora_targets(lora_targets, auto=str(defaults.get("lora_targets", AUTO_LORA_TARGETS)))

    unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet", torch_dtype=torch_dtype)
    text_encoder = CLIPTextModel.from_pretrained(model_dir, subfolder="text_encoder", dtype=torch_dtype)
    tokenizer = CLIPTokenizer.from_pretrained(model_dir, subfolder="tokenizer")
    scheduler = DDIMScheduler.from_config(DDIMScheduler.load_config(model_dir, subfolder="scheduler"))
    vae = None
    if (model_dir / "vae").is_dir():
        vae = AutoencoderKL.from_pretrained(model_dir, subfolder="vae", torch_dtype=torch_dtype)
    return DiffusersChain(
        unet, text_encoder, tokenizer, scheduler, vae=vae, num_steps=num_steps, guidance_scale=guidance_scale,
        eta=eta, final_eta=final_eta, lora_rank=lora_rank, lora_alpha=lora_alpha, lora_targets=lora_targets,
        device=dev, dtype=torch_dtype,
        gradient_checkpointing=gradient_checkpointing, prompt_boundaries=prompt_boundaries, model_name=label,
        attention=attention, autocast=autocast, decode_slice_size=decode_slice_size, tf32=tf32,
    )


def model_defaults(name_or_path: str) -> dict[str, Any]:
    """The defaults of a model without loading it: ``num_steps``, ``guidance_scale`` and ``lora_targets`` (what
    "auto" means) from its folder's ``rlr_studio.json`` ("tiny" and local folders), else 20, 7.5 and
    :data:`AUTO_LORA_TARGETS`. Never downloads."""
    defaults: dict[str, Any] = {"num_steps": DEFAULT_NUM_STEPS, "guidance_scale": DEFAULT_GUIDANCE_SCALE,
                                "lora_targets": AUTO_LORA_TARGETS}
    name = str(name_or_path or "").strip()
    folder = TINY_MODEL_DIR if name == "tiny" else Path(name).expanduser()
    studio = folder / STUDIO_CONFIG_NAME
    if name and studio.is_file():
        try:
            saved = json.loads(studio.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return defaults
        for key in ("num_steps", "guidance_scale"):
            if isinstance(saved.get(key), (int, float)) and not isinstance(saved.get(key), bool):
                defaults[key] = saved[key]
        if isinstance(saved.get("lora_targets"), str) and saved["lora_targets"].strip():
            defaults["lora_targets"] = saved["lora_targets"].strip()
    return defaults
