"""Architecture-true Stable Diffusion pipelines with random weights, built offline.

No machine here can download SD weights, so the SD code path is proven on the real
architectures with random initialisation: the UNet, VAE, text encoder, tokenizer and DDIM
scheduler of

    sd15       Stable Diffusion 1.5      512 px, epsilon,      CLIP ViT-L/14 text encoder (768-d)
    sd21-base  Stable Diffusion 2.1-base 512 px, epsilon,      OpenCLIP ViT-H/14 text encoder (1024-d)
    sd21       Stable Diffusion 2.1      768 px, v-prediction, OpenCLIP ViT-H/14 text encoder (1024-d)

from the published ``config.json`` values of runwayml/stable-diffusion-v1-5 and
stabilityai/stable-diffusion-2-1(-base). ``write_pipeline(arch, out_dir)`` writes a diffusers
folder that ``load_model(out_dir)`` loads like real weights:

    python -m rlr_core.sd_arch write sd15 /tmp/sd15-random [--width-divisor 10] [--dtype bf16]

``width_divisor`` > 1 gives a *reduced SD-shaped* model for tests: every block, layer and
attention of the real topology is kept, only channel widths are divided (rounded to multiples of
8, GroupNorm with 8 groups, attention heads reduced to divide the width) and the sample size is
set by ``image_size``. ``width_divisor=1`` is the real size (SD 1.5 UNet: 860M parameters).

The aesthetic reward at full size needs no helper here: ``get_reward("aesthetic", clip_model="ViT-L-14",
pretrained="random", head_path=<the LAION head>)`` is a random-init open_clip ViT-L/14 with the
real head (benchmarks/sd_reward_arch.py wraps it for the SD-scale benchmark).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any

import torch

ARCHITECTURES: tuple[str, ...] = ("sd15", "sd21-base", "sd21")

# published values (unet/config.json, vae/config.json, text_encoder/config.json, scheduler_config.json)
_IMAGE_SIZE = {"sd15": 512, "sd21-base": 512, "sd21": 768}
_PREDICTION = {"sd15": "epsilon", "sd21-base": "epsilon", "sd21": "v_prediction"}
_UNET_BLOCKS = (320, 640, 1280, 1280)
_VAE_BLOCKS = (128, 256, 512, 512)


def check_arch(arch: str) -> str:
    """``arch`` if it is one of ARCHITECTURES, else ValueError naming the allowed values."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {list(ARCHITECTURES)}, got {arch!r}")
    return arch


def _check_divisor(width_divisor: int) -> int:
    if isinstance(width_divisor, bool) or not isinstance(width_divisor, int) or width_divisor < 1:
        raise ValueError(f"width_divisor must be an integer >= 1 (1 = real size), got {width_divisor!r}")
    return width_divisor


def _width(channels: int, divisor: int) -> int:
    """Channel count divided by ``divisor``, rounded to a multiple of 8 (unchanged at divisor 1)."""
    if divisor == 1:
        return channels
    return max(8, 8 * round(channels / divisor / 8))


def default_image_size(arch: str) -> int:
    """The native resolution of ``arch`` in pixels (512 or 768)."""
    return _IMAGE_SIZE[check_arch(arch)]


def unet_config(arch: str, width_divisor: int = 1, image_size: int | None = None) -> dict[str, Any]:
    """``UNet2DConditionModel`` keyword arguments of ``arch`` (reduced widths when ``width_divisor`` > 1)."""
    check_arch(arch)
    d = _check_divisor(width_divisor)
    size = image_size or default_image_size(arch)
    if size % 64:
        raise ValueError(f"image_size must be a multiple of 64 (8x VAE, 3 UNet downsamplings), got {size}")
    blocks = [_width(c, d) for c in _UNET_BLOCKS]
    sd2 = arch != "sd15"
    if sd2:  # diffusers' naming quirk: "attention_head_dim" holds the number of heads (head dim 64)
        heads: Any = [c // 64 for c in _UNET_BLOCKS] if d == 1 else [math.gcd(b, c // 64) for b, c in zip(blocks, _UNET_BLOCKS)]
    else:
        heads = 8
    return {
        "sample_size": size // 8,
        "in_channels": 4,
        "out_channels": 4,
        "center_input_sample": False,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
        "block_out_channels": blocks,
        "layers_per_block": 2,
        "downsample_padding": 1,
        "mid_block_scale_factor": 1,
        "act_fn": "silu",
        "norm_num_groups": 32 if d == 1 else 8,
        "norm_eps": 1e-5,
        "cross_attention_dim": _width(1024 if sd2 else 768, d),
        "attention_head_dim": heads,
        "use_linear_projection": sd2,
        "upcast_attention": arch == "sd21",
    }


def vae_config(arch: str, width_divisor: int = 1, image_size: int | None = None) -> dict[str, Any]:
    """``AutoencoderKL`` keyword arguments (the same VAE for SD 1.x and 2.x)."""
    check_arch(arch)
    d = _check_divisor(width_divisor)
    return {
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [_width(c, d) for c in _VAE_BLOCKS],
        "layers_per_block": 2,
        "act_fn": "silu",
        "norm_num_groups": 32 if d == 1 else 8,
        "sample_size": image_size or default_image_size(arch),
        "scaling_factor": 0.18215,
    }


def text_encoder_config(arch: str, width_divisor: int = 1) -> dict[str, Any]:
    """``CLIPTextConfig`` keyword arguments: CLIP ViT-L/14 text (sd15) or OpenCLIP ViT-H/14 text, 23 layers (sd2)."""
    check_arch(arch)
    d = _check_divisor(width_divisor)
    sd2 = arch != "sd15"
    hidden, heads = (1024, 16) if sd2 else (768, 12)
    if d > 1:
        hidden, heads = _width(hidden, d), max(1, math.gcd(_width(hidden, d), heads))
    return {
        "vocab_size": 49408,
        "hidden_size": hidden,
        "intermediate_size": 4 * hidden,
        "num_hidden_layers": 23 if sd2 else 12,
        "num_attention_heads": heads,
        "max_position_embeddings": 77,
        "hidden_act": "gelu" if sd2 else "quick_gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": (512 if sd2 else 768) if d == 1 else hidden,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 0 if sd2 else 49407,
    }


def scheduler_config(arch: str) -> dict[str, Any]:
    """``DDIMScheduler`` keyword arguments (scaled-linear betas 0.00085 .. 0.012, 1000 train steps)."""
    check_arch(arch)
    return {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
        "prediction_type": _PREDICTION[arch],
    }


def build_unet(arch: str, width_divisor: int = 1, image_size: int | None = None, device: str = "cpu"):
    """A random-init ``UNet2DConditionModel`` of ``arch`` (``device="meta"``: shapes only, no memory)."""
    from diffusers import UNet2DConditionModel

    with torch.device(device):
        return UNet2DConditionModel(**unet_config(arch, width_divisor, image_size)).eval()


def build_vae(arch: str, width_divisor: int = 1, image_size: int | None = None, device: str = "cpu"):
    """A random-init ``AutoencoderKL`` of ``arch``."""
    from diffusers import AutoencoderKL

    with torch.device(device):
        return AutoencoderKL(**vae_config(arch, width_divisor, image_size)).eval()


def build_text_encoder(arch: str, width_divisor: int = 1, device: str = "cpu"):
    """A random-init ``CLIPTextModel`` of ``arch``."""
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device(device):
        return CLIPTextModel(CLIPTextConfig(**text_encoder_config(arch, width_divisor))).eval()


def build_tokenizer(arch: str, work_dir: str | os.PathLike):
    """The 49,408-token CLIP tokenizer from the offline builder (SD 2.x pads with "!" = id 0)."""
    from ..tokenizer import build_clip_tokenizer

    tokenizer = build_clip_tokenizer(Path(work_dir))
    if check_arch(arch) != "sd15":
        tokenizer.pad_token = "!"
    return tokenizer


def write_pipeline(
    arch: str,
    out_dir: str | os.PathLike,
    width_divisor: int = 1,
    image_size: int | None = None,
    seed: int = 0,
    dtype: str | torch.dtype = torch.float32,
    num_steps: int = 50,
    tokenizer: Any = None,
) -> Path:
    """Write a random-init diffusers folder of ``arch`` (unet/ vae/ text_encoder/ tokenizer/ scheduler/).

    ``load_model(out_dir)`` loads it exactly like a downloaded SD folder. ``dtype`` is the dtype of
    the saved weights (bf16 halves the 4 GB of a full-size SD 1.5); ``rlr_studio.json`` records
    the architecture and defaults ``num_steps`` / ``guidance_scale`` 7.5. ``tokenizer``: an already built
    CLIP tokenizer to save (default: built offline with :func:`build_tokenizer`).
    """
    from diffusers import DDIMScheduler

    from .devices import resolve_dtype

    check_arch(arch)
    torch_dtype = resolve_dtype(dtype)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    for name, build in (("unet", lambda: build_unet(arch, width_divisor, image_size)),
                        ("vae", lambda: build_vae(arch, width_divisor, image_size)),
                        ("text_encoder", lambda: build_text_encoder(arch, width_divisor))):
        module = build().to(torch_dtype)
        module.save_pretrained(out / name, safe_serialization=True)
        del module
    if tokenizer is None:
        tokenizer = build_tokenizer(arch, out / "_tokenizer_files")
    elif arch != "sd15":
        tokenizer.pad_token = "!"
    tokenizer.save_pretrained(out / "tokenizer")
    DDIMScheduler(**scheduler_config(arch)).save_pretrained(out / "scheduler")
    index = {
        "_class_name": "StableDiffusionPipeline",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    studio = {"arch": arch, "width_divisor": width_divisor, "image_size": image_size or default_image_size(arch),
              "random_init": True, "num_steps": int(num_steps), "guidance_scale": 7.5}
    (out / "rlr_studio.json").write_text(json.dumps(studio, indent=2), encoding="utf-8")
    return out


def parameter_count(module: torch.nn.Module) -> int:
    """Number of scalar parameters of ``module``."""
    return int(sum(p.numel() for p in module.parameters()))


def main(argv: list[str] | None = None) -> None:
    """``python -m rlr_core.sd_arch write ARCH DIR [--width-divisor N] [--image-size PX] [--dtype D]``."""
    p = argparse.ArgumentParser(prog="python -m rlr_core.sd_arch", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="write a random-init diffusers folder")
    w.add_argument("arch", choices=ARCHITECTURES)
    w.add_argument("out_dir")
    w.add_argument("--width-divisor", type=int, default=1)
    w.add_argument("--image-size", type=int, default=None)
    w.add_argument("--dtype", default="float32", help="float32, float16 or bfloat16 (weights as saved)")
    w.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = write_pipeline(args.arch, args.out_dir, args.width_divisor, args.image_size, args.seed, args.dtype)
    print(f"wrote {args.arch} (width_divisor={args.width_divisor}) to {out}")


if __name__ == "__main__":
    main()
