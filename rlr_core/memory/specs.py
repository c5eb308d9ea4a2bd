"""What a memory prediction is about: the model (``ModelSpec``), the run settings (``Settings``), the traced
bytes of each part of an estimate (``PartMemory``) and the result (``Prediction``). docs/memory.md."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

REWARD_KINDS: tuple[str, ...] = ("aesthetic", "clip", "pixel", "none")
CUDA_OVERHEAD_GB = 0.6  # CUDA context + allocator slack on top of the predicted tensors (typical, not measured here)
GB = 2**30


@dataclass(frozen=True)
class ModelSpec:
    """What the memory of a text-to-image chain depends on (hashable: configs are JSON strings).

    ``reward``: "aesthetic" (open_clip ``reward_clip_model`` + LAION head), "clip" (CLIP score),
    "pixel" (a weight-free differentiable reward such as saturation: traced as saturation),
    "none" (a non-differentiable reward: no FO graph).
    """

    name: str
    unet_config: str
    vae_config: str | None
    scheduler_config: str
    text_dim: int
    text_len: int = 77
    text_encoder_parameters: int = 0
    num_steps: int = 50
    guidance_scale: float = 7.5
    lora_rank: int = 4
    lora_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    reward: str = "aesthetic"
    reward_clip_model: str = "ViT-L-14"

    def __post_init__(self) -> None:
        if self.reward not in REWARD_KINDS:
            raise ValueError(f"reward must be one of {list(REWARD_KINDS)}, got {self.reward!r}")

    @property
    def image_size(self) -> int:
        """Pixels per side of the decoded images."""
        unet = json.loads(self.unet_config)
        size = unet["sample_size"]
        size = size if isinstance(size, int) else size[0]
        if self.vae_config is None:
            return int(size)
        return int(size) * 2 ** (len(json.loads(self.vae_config)["block_out_channels"]) - 1)

    @property
    def differentiable_reward(self) -> bool:
        """True when the reward has a graph (FO terms possible)."""
        return self.reward != "none"


@dataclass(frozen=True)
class Settings:
    """The run settings a prediction is for."""

    batch_size: int = 1
    dtype: str = "float16"
    gradient_checkpointing: bool = False
    attention: str = "sdpa"
    autocast: bool = False
    decode_slice_size: int | None = None
    device_type: str = "cuda"  # whose autocast policy to replay ("cuda" or "cpu")


@dataclass
class PartMemory:
    """Traced bytes of each part of an estimate, for one ``ModelSpec`` and ``Settings``."""

    step_first: int  # graph of one step from a state without graph (HO start, FO step, LR term), weights excluded
    step_inner: int  # graph of one step from a state with graph (inside HO sub-chains / full-bp)
    log_prob: int  # graph of the Gaussian log-probability at the HO exit
    decode: int  # graph of the VAE decode
    reward: int  # graph of the reward model
    step_work: int  # working memory of one no-grad step (ZO / plain sampling)
    decode_work: int
    reward_work: int
    recompute: int  # graph rebuilt by the largest checkpointed segment in backward (0 without checkpointing)
    unet_views: int  # weights saved through views (W^T of a linear...): resident anyway, MemoryMeter counts them once
    vae_views: int
    reward_views: int
    weights: int  # base model + reward model + LoRA (float32) with its gradient and AdamW moments
    lora_parameters: int

    @property
    def fo(self) -> int:
        """FO: last step + decode + reward."""
        return self.step_first + self.decode + self.reward

    def ho(self, h: int) -> int:
        """HO sub-chain of ``h`` steps (with its exit log-probability)."""
        return self.step_first + (h - 1) * self.step_inner + self.log_prob

    @property
    def work(self) -> int:
        """The largest no-grad working set (a step, a decode, a reward call)."""
        return max(self.step_work, self.decode_work, self.reward_work)


@dataclass
class Prediction:
    """Predicted memory of one estimate of ``estimator`` with ``options``."""

    estimator: str
    options: dict[str, Any]
    settings: Settings
    graph_bytes: int
    peak_bytes: int
    parts: dict[str, int] = field(default_factory=dict)

    @property
    def graph_mb(self) -> float:
        """Predicted ``MemoryMeter.graph_memory_mb``."""
        return self.graph_bytes / 2**20

    @property
    def graph_gb(self) -> float:
        return self.graph_bytes / GB

    @property
    def peak_gb(self) -> float:
        """Predicted peak device memory (GiB) without the CUDA overhead."""
        return self.peak_bytes / GB

    def as_dict(self) -> dict[str, Any]:
        """Plain data (for JSON)."""
        return {"estimator": self.estimator, "options": dict(self.options), "settings": asdict(self.settings),
                "graph_gb": round(self.graph_gb, 4), "peak_gb": round(self.peak_gb, 4),
                "parts_gb": {k: round(v / GB, 4) for k, v in self.parts.items()}}


# --------------------------------------------------------------------------------------------
# Specs
# --------------------------------------------------------------------------------------------


def _json(config: Any) -> str:
    return json.dumps({k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(config).items()
                       if not str(k).startswith("_")}, sort_keys=True, default=str)


def spec_for_arch(arch: str, width_divisor: int = 1, image_size: int | None = None, num_steps: int = 50,
                  lora_rank: int = 4, guidance_scale: float = 7.5, reward: str = "aesthetic",
                  reward_clip_model: str = "ViT-L-14") -> ModelSpec:
    """The spec of an SD architecture of :mod:`rlr_core.models.sd_arch` ("sd15", "sd21-base", "sd21")."""
    from ..models.sd_arch import scheduler_config, text_encoder_config, unet_config, vae_config

    text = text_encoder_config(arch, width_divisor)
    hidden, layers = text["hidden_size"], text["num_hidden_layers"]
    # CLIPTextModel: token + position embeddings, per layer 4 h^2 + 2 * 4 h^2 weights (+ biases, norms)
    text_params = text["vocab_size"] * hidden + 77 * hidden + layers * (12 * hidden * hidden + 13 * hidden) + 2 * hidden
    return ModelSpec(
        name=arch if width_divisor == 1 else f"{arch}/w{width_divisor}",
        unet_config=_json(unet_config(arch, width_divisor, image_size)),
        vae_config=_json(vae_config(arch, width_divisor, image_size)),
        scheduler_config=_json(scheduler_config(arch)),
        text_dim=unet_config(arch, width_divisor)["cross_attention_dim"],
        text_encoder_parameters=int(text_params),
        num_steps=num_steps, guidance_scale=guidance_scale, lora_rank=lora_rank,
        reward=reward, reward_clip_model=reward_clip_model,
    )


def reward_kind(reward: Any) -> tuple[str, str]:
    """(kind, clip model) of a reward object for :class:`ModelSpec` (None: non-differentiable)."""
    if reward is None or not bool(getattr(reward, "differentiable", False)):
        return "none", "ViT-L-14"
    name = getattr(reward, "name", "")
    clip_model = str(getattr(reward, "clip_model", "ViT-L-14"))
    if name in ("aesthetic", "clip") and clip_model != "tiny-clip":
        return name, clip_model
    return "pixel", clip_model


def spec_from_chain(chain: Any, reward: Any = None) -> ModelSpec:
    """The spec of a loaded ``DiffusersChain`` (and the reward it is trained with; None: non-differentiable)."""
    kind, clip_model = reward_kind(reward)
    text_params = sum(p.numel() for p in chain.text_encoder.parameters()) if chain.text_encoder is not None else 0
    unet_config = dict(chain.unet.config)
    return ModelSpec(
        name=str(getattr(chain, "model_name", "custom")),
        unet_config=_json(unet_config),
        vae_config=_json(chain.vae.config) if chain.vae is not None else None,
        scheduler_config=_json(chain.scheduler.config),
        text_dim=int(unet_config["cross_attention_dim"]),
        text_len=int(getattr(chain.tokenizer, "model_max_length", 77) or 77) if chain.tokenizer is not None else 77,
        text_encoder_parameters=int(text_params),
        num_steps=int(chain.num_steps), guidance_scale=float(chain.guidance_scale), lora_rank=int(chain.lora_rank),
        lora_targets=tuple(chain.lora_targets), reward=kind, reward_clip_model=clip_model,
    )


def settings_from_chain(chain: Any, batch_size: int) -> Settings:
    """The settings a loaded chain runs with, at ``batch_size``."""
    return Settings(
        batch_size=int(batch_size), dtype=str(chain.dtype).replace("torch.", ""),
        gradient_checkpointing=bool(chain.gradient_checkpointing), attention=getattr(chain, "attention", "sdpa"),
        autocast=bool(getattr(chain, "autocast", False)), decode_slice_size=getattr(chain, "decode_slice_size", None),
        device_type="cuda" if torch.device(chain.device).type == "cuda" else "cpu",
    )
