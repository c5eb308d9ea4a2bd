"""Architecture of the bundled tiny text-to-image model (pixel space, 32x32) and its export format."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

IMAGE_SIZE = 32
TEXT_HIDDEN = 128
MAX_LENGTH = 32  # tokenizer model_max_length == text encoder max_position_embeddings

# Sampling and LoRA defaults honoured by load_model (written to rlr_studio.json); train.py may override. The LoRA
# covers the ResNet convolutions too: attention sits at 8x8 only and cannot move where a shape is drawn
# (benchmarks/results/clicks/conv-lora).
DEFAULTS = {"guidance_scale": 3.0, "num_steps": 20, "eta": 1.0, "lora_targets": "attention+conv"}


def unet_config() -> dict:
    return dict(
        sample_size=IMAGE_SIZE,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(32, 64, 128),
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),  # attention at 8x8 only (CPU cost)
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=4,  # diffusers naming: number of heads
        norm_num_groups=32,
        # pooled caption embedding added to the time embedding: global conditioning (colour,
        # background) reaches every ResNet block, also at 32x32 where there is no cross-attention
        addition_embed_type="text",
        addition_embed_type_num_heads=4,
    )


def text_config():
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=TEXT_HIDDEN,
        intermediate_size=4 * TEXT_HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_LENGTH,
        hidden_act="quick_gelu",
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )


def scheduler_config(prediction_type: str = "v_prediction") -> dict:
    zero_snr = prediction_type == "v_prediction"
    return dict(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        prediction_type=prediction_type,
        rescale_betas_zero_snr=zero_snr,
        timestep_spacing="trailing",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=0,
    )


def build_models(prediction_type: str = "v_prediction", tokenizer_dir: str | None = None):
    """Fresh (unet, text_encoder, tokenizer, scheduler)."""
    import tempfile

    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    from rlr_core.tokenizer import build_clip_tokenizer

    unet = UNet2DConditionModel(**unet_config())
    text_encoder = CLIPTextModel(text_config())
    tok_dir = tokenizer_dir or tempfile.mkdtemp(prefix="tiny-tok-")
    tokenizer = build_clip_tokenizer(tok_dir, model_max_length=MAX_LENGTH)
    scheduler = DDIMScheduler(**scheduler_config(prediction_type))
    return unet, text_encoder, tokenizer, scheduler


def encode(text_encoder, tokenizer, prompts: list[str]) -> torch.Tensor:
    ids = tokenizer(prompts, padding="max_length", max_length=MAX_LENGTH, truncation=True,
                    return_tensors="pt").input_ids
    return text_encoder(ids.to(text_encoder.device))[0]


def export(out_dir, unet, text_encoder, tokenizer, scheduler, defaults: dict | None = None,
           extra: dict | None = None, half: bool = True) -> Path:
    """Write the diffusers-style folder: unet/, text_encoder/, tokenizer/, scheduler/, model_index.json,
    rlr_studio.json. ``half`` stores fp16 weights (loaders upcast to float32)."""
    import copy

    import diffusers
    import transformers

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    u = copy.deepcopy(unet).to(torch.float16 if half else torch.float32)
    t = copy.deepcopy(text_encoder).to(torch.float16 if half else torch.float32)
    u.save_pretrained(out / "unet", safe_serialization=True)
    t.save_pretrained(out / "text_encoder", safe_serialization=True)
    tokenizer.save_pretrained(out / "tokenizer")
    scheduler.save_pretrained(out / "scheduler")
    index = {
        "_class_name": "DiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "_transformers_version": transformers.__version__,
        "unet": ["diffusers", "UNet2DConditionModel"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "vae": [None, None],
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    meta = dict(DEFAULTS if defaults is None else defaults)
    meta.update({"pixel_space": True, "vae": None, "image_size": IMAGE_SIZE,
                 "value_range": [-1.0, 1.0], "weights_dtype": "float16" if half else "float32"})
    if extra:
        meta.update(extra)
    (out / "rlr_studio.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def load(folder, dtype=torch.float32):
    """Load (unet, text_encoder, tokenizer, scheduler, meta) from an exported folder (offline)."""
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    unet = UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=dtype)
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", dtype=dtype)
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    scheduler = DDIMScheduler.from_pretrained(folder / "scheduler")
    meta = json.loads((folder / "rlr_studio.json").read_text())
    return unet.eval(), text_encoder.eval(), tokenizer, scheduler, meta


@torch.no_grad()
def sample_ddim(unet, text_encoder, tokenizer, scheduler, prompts: list[str], seeds: list[int],
                num_steps: int = 20, guidance_scale: float = 1.0, eta: float = 0.0) -> torch.Tensor:
    """Reference DDIM(eta) sampler with the same step as ``DiffusersChain.step_mean_std`` (x[0] and
    the step noises drawn per seed like ``rlr_core.sampling.draw_noise_per_seed``); images
    [B,3,H,W] in [0,1]. Used by train/evaluate without LoRA machinery."""
    import math

    sched = copy.deepcopy(scheduler)
    sched.set_timesteps(num_steps)
    timesteps = [int(t) for t in sched.timesteps]
    ac = sched.alphas_cumprod.to(torch.float64)
    final = float(sched.final_alpha_cumprod)
    gap = sched.config.num_train_timesteps // num_steps
    shape = (1, 3, IMAGE_SIZE, IMAGE_SIZE)
    xs, noises = [], []
    for s in seeds:
        g = torch.Generator().manual_seed(int(s))
        xs.append(torch.randn(shape, generator=g))
        noises.append([torch.randn(shape, generator=g) for _ in range(num_steps)])
    x = torch.cat(xs)
    cond = encode(text_encoder, tokenizer, prompts)
    uncond = encode(text_encoder, tokenizer, [""] * len(prompts)) if guidance_scale != 1.0 else None
    pred = scheduler.config.prediction_type
    for k, t in enumerate(timesteps):
        tt = torch.tensor(t)
        if uncond is not None:
            out = unet(torch.cat([x, x]), tt, encoder_hidden_states=torch.cat([uncond, cond])).sample
            u, c = out.chunk(2)
            out = u + guidance_scale * (c - u)
        else:
            out = unet(x, tt, encoder_hidden_states=cond).sample
        a_t = float(ac[t])
        a_prev = float(ac[t - gap]) if t - gap >= 0 else final
        step_eta = 0.0 if k == num_steps - 1 else eta
        var = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
        std = step_eta * math.sqrt(max(var, 0.0))
        sa, sb = math.sqrt(a_t), math.sqrt(1 - a_t)
        if pred == "v_prediction":
            x0, eps = sa * x - sb * out, sa * out + sb * x
        else:
            eps = out
            x0 = (x - sb * eps) / sa
        x = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - std**2, 0.0)) * eps
        if std > 0:
            x = x + std * torch.cat([n[k] for n in noises])
    return ((x + 1) / 2).clamp(0, 1)
