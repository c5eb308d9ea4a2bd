"""Predicting the memory of a gradient estimate without running the model at full cost.

How: the model (UNet + VAE + reward model, with LoRA) is rebuilt on the ``meta`` device, where
tensors have shapes and dtypes but no data, and each *part* of an estimate is traced once:

- ``step_first`` / ``step_inner``: the autograd graph of one sampling step with grad on (input
  without / with a graph of its own). An HO sub-chain of h steps keeps
  ``step_first + (h - 1) * step_inner + log_prob``.
- FO: the last step + VAE decode + reward model (``step_first + decode + reward``).
- ``*_work``: the working memory of one no-grad pass (ZO steps and plain sampling keep no graph).

Graph bytes are counted with saved-tensor hooks (:class:`rlr_core.memory.SavedBytesCounter`, the
same count as ``MemoryMeter.graph_memory_mb``), working memory by following every operator output
until it is freed (:class:`rlr_core.memory.LiveBytesTracker`). On meta, PyTorch's SDPA would fall
back to the math kernel (which keeps the N x N attention matrix); the trace substitutes the CPU
flash-attention op, whose saved tensors (q, k, v, output, logsumexp) are those of the CUDA flash /
memory-efficient kernels too. ``autocast`` is replayed by casting the inputs of matmuls and
convolutions to the low dtype and of normalisations / softmax to float32, autocast's own policy
(meta tensors skip autocast).

The parts combine per estimator (:func:`predict`), mirroring what each keeps alive at its peak:

    rlr / rlr-paper h   HO(h) + FO                  (the HO log-probability waits for the reward)
      + control variate HO(h) + max(FO, CV)         CV = cv_jumps calls + decode + reward (the stand-in's gradient)
    full-bp             step_first + (T-1) step_inner + decode + reward
    truncated-bp k      step_first + (k-1) step_inner + decode + reward
    alignprop k_max     k_max stored step inputs + decode + reward; one step's graph is rebuilt
                        in the backward pass (counted in ``recompute``: its steps are checkpointed)
    ddpo, rlr-released  max(FO, step_first + log_prob)   (one likelihood-ratio step per backward)
    draft-lv            FO                          (one re-noising's last step at a time)
    refl jumps          step_first + (jumps-1) step_inner + decode + reward   (the x0 prediction)
    zo                  0                           (inference only)

``graph_bytes`` is what tests check against measurement (within 10% on reduced SD-shaped models):
the activation graph plus the weights autograd saves through views (``W^T`` of a linear layer),
which ``MemoryMeter`` counts once per measurement although they are resident anyway (they are
left out of ``peak_bytes``, whose weights term already holds them).
``peak_bytes`` adds the weights (base model in its dtype, reward model, LoRA + gradient + AdamW
state in float32), the largest no-grad working set, and with gradient checkpointing the graph of
the largest recomputed segment (a step or a decode slice, rebuilt in the backward pass). It is an
estimate of the device's peak allocation; CUDA adds its context and allocator slack
(``CUDA_OVERHEAD_GB``, used by :func:`fits` and :func:`choose_h`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import threading
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from .memory import LiveBytesTracker, SavedBytesCounter

ESTIMATORS: tuple[str, ...] = (
    "rlr", "rlr-paper", "full-bp", "truncated-bp", "ddpo", "zo", "rlr-released", "alignprop", "draft-lv", "refl",
)
FIRST_ORDER_ONLY: tuple[str, ...] = ("full-bp", "truncated-bp", "rlr-released", "alignprop", "draft-lv", "refl")
"""Estimators that need a differentiable reward (no prediction for spec reward "none")."""
REWARD_KINDS: tuple[str, ...] = ("aesthetic", "clip", "pixel", "none")
CUDA_OVERHEAD_GB = 0.6  # CUDA context + allocator slack on top of the predicted tensors (typical, not measured here)
GB = 2**30
_META = torch.device("meta")
_TRACE_LOCK = threading.Lock()


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
    """The spec of an SD architecture of :mod:`rlr_core.sd_arch` ("sd15", "sd21-base", "sd21")."""
    from . import sd_arch

    text = sd_arch.text_encoder_config(arch, width_divisor)
    hidden, layers = text["hidden_size"], text["num_hidden_layers"]
    # CLIPTextModel: token + position embeddings, per layer 4 h^2 + 2 * 4 h^2 weights (+ biases, norms)
    text_params = text["vocab_size"] * hidden + 77 * hidden + layers * (12 * hidden * hidden + 13 * hidden) + 2 * hidden
    return ModelSpec(
        name=arch if width_divisor == 1 else f"{arch}/w{width_divisor}",
        unet_config=_json(sd_arch.unet_config(arch, width_divisor, image_size)),
        vae_config=_json(sd_arch.vae_config(arch, width_divisor, image_size)),
        scheduler_config=_json(sd_arch.scheduler_config(arch)),
        text_dim=sd_arch.unet_config(arch, width_divisor)["cross_attention_dim"],
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


# --------------------------------------------------------------------------------------------
# Tracing on the meta device
# --------------------------------------------------------------------------------------------


def _flash_on_meta(original):
    """``F.scaled_dot_product_attention`` that runs the flash kernel's op on meta tensors (not math)."""

    def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if query.device.type == "meta" and attn_mask is None and not enable_gqa:
            out = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                query, key, value, dropout_p, is_causal, scale=scale)
            return out[0]
        return original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                        scale=scale, enable_gqa=enable_gqa)

    return sdpa


@contextlib.contextmanager
def _meta_attention() -> Iterator[None]:
    original = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _flash_on_meta(original)
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


class _AutocastOnMeta(torch.overrides.TorchFunctionMode):
    """``torch.autocast``'s cast policy replayed on meta tensors (which autocast skips).

    Matmuls and convolutions run in the low dtype; on CUDA normalisations and softmax run in
    float32 (CPU autocast leaves them in the input dtype). The casts create the same saved tensors
    as real autocast.
    """

    LOW = (F.linear, F.conv2d, torch.matmul, torch.mm, torch.bmm, torch.baddbmm, torch.addmm, torch.Tensor.matmul)
    FP32 = (F.group_norm, F.layer_norm, F.softmax, torch.softmax, torch.Tensor.softmax, F.log_softmax)

    def __init__(self, dtype: torch.dtype, device_type: str) -> None:
        super().__init__()
        self.dtype = dtype
        self.upcast = device_type == "cuda"

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        target = self.dtype if func in self.LOW else (torch.float32 if self.upcast and func in self.FP32 else None)
        if target is not None:
            def cast(value):
                if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != target:
                    return value.to(target)
                return value

            args = tuple(cast(a) for a in args)
            kwargs = {k: cast(v) for k, v in kwargs.items()}
        return func(*args, **kwargs)


def _autocast_context(settings: "Settings") -> Any:
    from .diffusers_chain import resolve_dtype

    dtype = resolve_dtype(settings.dtype)
    if settings.autocast and dtype != torch.float32:
        return _AutocastOnMeta(dtype, settings.device_type)
    return contextlib.nullcontext()


def _counted(fn, weights: set[int] | None = None) -> tuple[int, Any, int]:
    """Graph bytes saved while running ``fn()``, its result (kept alive by the caller) and the bytes of
    weights saved through views (storages in ``weights``)."""
    with SavedBytesCounter(weights) as counter:
        out = fn()
    return counter.peak_bytes, out, counter.weight_bytes


def _working(fn) -> int:
    """Peak bytes of tensors created and alive while running ``fn()`` under no_grad."""
    with torch.no_grad(), LiveBytesTracker() as tracker:
        out = fn()
        del out
    return tracker.peak_bytes


def _shadow_chain(spec: ModelSpec, dtype: str, gradient_checkpointing: bool, attention: str, autocast: bool,
                  decode_slice_size: int | None):
    """A ``DiffusersChain`` of ``spec`` on the meta device (no memory, no compute), with these settings.

    One meta model per (spec, dtype, attention) is built and reused; checkpointing and the decode
    slice size are plain attributes the chain reads at every call. ``autocast`` is replayed while
    tracing (:class:`_AutocastOnMeta`), so the shadow chain itself runs without it.
    """
    chain = _meta_chain(spec, dtype, attention)
    chain.gradient_checkpointing = gradient_checkpointing
    chain.decode_slice_size = decode_slice_size
    return chain


@functools.lru_cache(maxsize=8)
def _meta_chain(spec: ModelSpec, dtype: str, attention: str):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    from .diffusers_chain import DiffusersChain, resolve_dtype

    torch_dtype = resolve_dtype(dtype)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**json.loads(spec.unet_config))
        vae = AutoencoderKL(**json.loads(spec.vae_config)) if spec.vae_config else None
    chain = DiffusersChain(
        unet, None, None, DDIMScheduler.from_config(json.loads(spec.scheduler_config)), vae=vae,
        num_steps=spec.num_steps, guidance_scale=spec.guidance_scale, lora_rank=spec.lora_rank,
        lora_targets=spec.lora_targets, device=_META, dtype=torch_dtype, attention=attention, autocast=False, tf32=False,
    )
    return chain  # autocast is replayed by _AutocastOnMeta while tracing


@functools.lru_cache(maxsize=4)
def _shadow_reward(kind: str, clip_model: str):
    """A callable reward(images) on meta for ``kind``, its number of weights and their storage keys."""
    from .rewards.simple import SaturationReward

    if kind in ("none", "pixel"):
        saturation = SaturationReward()
        return (lambda images: saturation(images, [""] * images.shape[0])), 0, set()
    import open_clip

    from .rewards.aesthetic import AestheticHead
    from .rewards.clip_models import LoadedClip, encode_images

    with torch.device("meta"):
        model = open_clip.create_model(clip_model, device="meta").eval().requires_grad_(False)
        head = AestheticHead(int(model.visual.output_dim)).eval().requires_grad_(False)
    size = model.visual.image_size
    size = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
    clip = LoadedClip(model, None, size, open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD, "bicubic",
                      int(model.visual.output_dim), clip_model)
    n_weights = sum(p.numel() for p in model.parameters())
    keys = SavedBytesCounter.storage_keys(model, head)
    if kind == "aesthetic":
        n_weights += sum(p.numel() for p in head.parameters())
        return (lambda images: head(encode_images(clip, images))), n_weights, keys
    text = torch.zeros(1, int(model.visual.output_dim), device=_META)
    return (lambda images: (encode_images(clip, images) * text).sum(-1)), n_weights, keys


def _condition(chain: Any, spec: ModelSpec, batch: int):
    from .diffusers_chain import DiffusersCondition

    embeds = torch.empty(batch, spec.text_len, spec.text_dim, device=_META, dtype=chain.dtype)
    return DiffusersCondition((embeds, embeds, embeds), embeds, [""] * batch, chain.boundaries)


@functools.lru_cache(maxsize=256)
def trace_parts(spec: ModelSpec, settings: Settings) -> PartMemory:
    """Trace every part of an estimate once on the meta device (a few seconds at SD size)."""
    if settings.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {settings.batch_size}")
    with _TRACE_LOCK, _meta_attention():
        chain = _shadow_chain(spec, settings.dtype, settings.gradient_checkpointing, settings.attention,
                              settings.autocast, settings.decode_slice_size)
        reward_fn, reward_weights, reward_keys = _shadow_reward(spec.reward, spec.reward_clip_model)
        unet_keys = SavedBytesCounter.storage_keys(chain.unet)
        vae_keys = SavedBytesCounter.storage_keys(chain.vae)
        B = settings.batch_size
        cond = _condition(chain, spec, B)
        x = chain.initial(B, None).to(_META)
        k = 1 if spec.num_steps > 1 else 0
        step, decode_fn = _chain_calls(chain, settings, k, cond)
        with torch.enable_grad():
            step_first, (mean, std), unet_views = _counted(lambda: step(x), unet_keys)
            x_graph = mean + (std or 1.0) * torch.empty_like(mean)
            step_inner = _counted(lambda: step(x_graph), unet_keys)[0]
            log_prob = _counted(lambda: ((x.detach() - mean) ** 2).flatten(1).sum(dim=1) / 2.0)[0]
            x_latent = torch.empty_like(x).requires_grad_(True)
            decode, images, vae_views = _counted(lambda: decode_fn(x_latent), vae_keys)
            reward, reward_views = 0, 0
            if spec.differentiable_reward:
                reward, _, reward_views = _counted(lambda: reward_fn(images), reward_keys)
        step_work = _working(lambda: step(x)[0])
        decode_work = _working(lambda: decode_fn(x))
        reward_work = _working(lambda: reward_fn(torch.empty(B, 3, spec.image_size, spec.image_size, device=_META)))
        recompute = 0
        if settings.gradient_checkpointing:  # the segments rebuilt in backward: a UNet call or a decode slice
            plain = replace(settings, gradient_checkpointing=False)
            parts = _recompute_graphs(spec, plain, reward_fn)
            recompute = max(parts[0], parts[1])
        itemsize = torch.empty(0, dtype=chain.dtype).element_size()
        base = sum(p.numel() for p in chain.unet.parameters() if not p.requires_grad)
        base += sum(p.numel() for p in chain.vae.parameters()) if chain.vae is not None else 0
        base += spec.text_encoder_parameters
        lora = sum(p.numel() for p in chain.trainable_parameters())
        weights = base * itemsize + reward_weights * 4 + lora * 4 * 4
    return PartMemory(step_first, step_inner, log_prob, decode, reward, step_work, decode_work, reward_work,
                      recompute, unet_views, vae_views, reward_views, weights, lora)


def _recompute_graphs(spec: ModelSpec, settings: Settings, reward_fn) -> tuple[int, int]:
    """(UNet-step graph, decode-slice graph) without checkpointing (called inside ``trace_parts``)."""
    chain = _shadow_chain(spec, settings.dtype, False, settings.attention, settings.autocast,
                          settings.decode_slice_size)
    B = settings.batch_size
    cond = _condition(chain, spec, B)
    x = chain.initial(B, None).to(_META)
    slice_batch = min(B, settings.decode_slice_size or B)
    unet_keys, vae_keys = SavedBytesCounter.storage_keys(chain.unet), SavedBytesCounter.storage_keys(chain.vae)
    step_fn, decode_fn = _chain_calls(chain, settings, 1 if spec.num_steps > 1 else 0, cond)
    with torch.enable_grad():
        step = _counted(lambda: step_fn(x), unet_keys)[0]
        latents = torch.empty(slice_batch, *x.shape[1:], device=_META).requires_grad_(True)
        decode = _counted(lambda: decode_fn(latents), vae_keys)[0]
    return step, decode


def _chain_calls(chain: Any, settings: Settings, k: int, cond: Any):
    """step(x) and decode(x) of the shadow chain, under the replayed autocast when ``settings.autocast``."""

    def step(x):
        with _autocast_context(settings):
            return chain.step_mean_std(x, k, cond)

    def decode(x):
        with _autocast_context(settings):
            return chain.decode(x)

    return step, decode


# --------------------------------------------------------------------------------------------
# Predictions
# --------------------------------------------------------------------------------------------


def _spec_and_settings(model: Any, batch_size: int, reward: Any, overrides: dict[str, Any]) -> tuple[ModelSpec, Settings]:
    if isinstance(model, ModelSpec):
        spec, settings = model, Settings(batch_size=int(batch_size))
    elif isinstance(model, str):
        spec, settings = spec_for_arch(model), Settings(batch_size=int(batch_size))
    else:
        spec, settings = spec_from_chain(model, reward), settings_from_chain(model, batch_size)
    given = {k: v for k, v in overrides.items() if v is not None}
    if "dtype" in given and isinstance(given["dtype"], torch.dtype):
        given["dtype"] = str(given["dtype"]).replace("torch.", "")
    return spec, replace(settings, **given)


def combine(parts: PartMemory, spec: ModelSpec, estimator: str, options: dict[str, Any]) -> tuple[int, dict[str, int]]:
    """Activation graph bytes at the peak of ``estimator`` from the traced parts, and the pieces summing to it.

    Weights saved through views are not included (see :func:`weight_views`).
    """
    T = spec.num_steps
    fo = parts.fo if spec.differentiable_reward else 0
    if estimator in ("rlr", "rlr-paper"):
        h = int(options.get("h", 2))
        if not 1 <= h <= T - 1:
            raise ValueError(f"h must be between 1 and num_steps - 1 = {T - 1}, got {h}")
        pieces = {"ho": parts.ho(h), "fo": fo}
        if spec.differentiable_reward and _control_variate_on(estimator, options):
            # the stand-in's gradient (cv_jumps calls + decode + reward) is taken while the HO graph waits;
            # it is freed before the FO graph is built, so the larger of the two counts
            # predict_final makes at most one call per remaining step: T - h from the earliest exit
            jumps = max(1, min(int(options.get("cv_jumps", 3)), T - h))
            stand_in = parts.step_first + (jumps - 1) * parts.step_inner + parts.decode + parts.reward
            pieces = {"ho": parts.ho(h), "fo" if fo >= stand_in else "cv_stand_in": max(fo, stand_in)}
    elif estimator == "full-bp":
        pieces = {"fo_chain": parts.step_first + (T - 1) * parts.step_inner, "decode": parts.decode, "reward": parts.reward}
    elif estimator == "truncated-bp":
        k = int(options.get("k", 1))
        if not 1 <= k <= T:
            raise ValueError(f"k must be between 1 and num_steps = {T}, got {k}")
        pieces = {"fo_chain": parts.step_first + (k - 1) * parts.step_inner, "decode": parts.decode, "reward": parts.reward}
    elif estimator == "alignprop":
        k = _alignprop_k(T, options)
        # checkpointed steps keep only their inputs (one state each: the bytes the log-probability
        # graph saves); their graphs are rebuilt one at a time in backward (``recompute_bytes``)
        pieces = {"step_inputs": k * parts.log_prob, "decode": parts.decode, "reward": parts.reward}
    elif estimator == "draft-lv":
        pieces = {"fo": parts.fo}
    elif estimator == "refl":
        jumps = int(options.get("jumps", 1))
        if jumps < 1:
            raise ValueError(f"jumps must be an integer >= 1, got {jumps}")
        jumps = min(jumps, T)  # predict_final makes at most one call per remaining step
        pieces = {"prediction": parts.step_first + (jumps - 1) * parts.step_inner, "decode": parts.decode,
                  "reward": parts.reward}
    elif estimator in ("ddpo", "rlr-released"):
        if estimator == "rlr-released" and not spec.differentiable_reward:
            raise ValueError(f"estimator {estimator!r} needs a differentiable reward (spec reward='none')")
        per_step = parts.step_first + parts.log_prob
        return max(fo, per_step), {"fo": fo, "per_step": per_step}
    elif estimator == "zo":
        return 0, {}
    else:
        raise ValueError(f"estimator must be one of {list(ESTIMATORS)}, got {estimator!r}")
    if estimator in FIRST_ORDER_ONLY and not spec.differentiable_reward:
        raise ValueError(f"estimator {estimator!r} needs a differentiable reward (spec reward='none')")
    return sum(pieces.values()), pieces


def _control_variate_on(estimator: str, options: dict[str, Any]) -> bool:
    """Whether an rlr estimate with ``options`` runs the HO control variate (its default when not given)."""
    from .estimators import estimator_options

    value = options.get("control_variate", estimator_options(estimator)["control_variate"])
    return value is True or value == "auto"


def _alignprop_k(num_steps: int, options: dict[str, Any]) -> int:
    """The largest truncation depth alignprop may draw: ``k_max`` (None: num_steps), checked."""
    k_max = options.get("k_max")
    k = num_steps if k_max is None else int(k_max)
    if not 1 <= k <= num_steps:
        raise ValueError(f"k_max must be between 1 and num_steps = {num_steps}, got {k}")
    return k


def recompute_bytes(parts: PartMemory, estimator: str) -> int:
    """Graph rebuilt in the backward pass by the largest checkpointed segment: the chain's own
    checkpointing (``parts.recompute``), plus for alignprop one whole checkpointed step."""
    if estimator == "zo":  # never runs backward
        return 0
    if estimator == "alignprop":
        return parts.recompute + parts.step_first
    return parts.recompute


def weight_views(parts: PartMemory, spec: ModelSpec, estimator: str) -> int:
    """Bytes of weights the graph saves through views: counted once by ``MemoryMeter``, resident anyway."""
    if estimator == "zo":
        return 0
    views = 0 if estimator == "alignprop" else parts.unet_views  # its UNet calls are all checkpointed
    if spec.differentiable_reward:
        views += parts.vae_views + parts.reward_views
    return views


def predict(
    model: Any,
    estimator: str = "rlr",
    batch_size: int = 1,
    reward: Any = None,
    dtype: str | torch.dtype | None = None,
    gradient_checkpointing: bool | None = None,
    attention: str | None = None,
    autocast: bool | None = None,
    decode_slice_size: int | None = None,
    **options: Any,
) -> Prediction:
    """Predicted graph and peak memory of one ``estimator`` estimate (``options``: h for rlr / rlr-paper, k for
    truncated-bp, k_max for alignprop (None: num_steps, the worst case), jumps for refl).

    ``model``: a loaded ``DiffusersChain`` (its settings are the defaults; ``reward`` is the reward
    object it trains with), a :class:`ModelSpec`, or an architecture name of ``rlr_core.sd_arch``.
    """
    spec, settings = _spec_and_settings(model, batch_size, reward, {
        "dtype": dtype, "gradient_checkpointing": gradient_checkpointing, "attention": attention,
        "autocast": autocast, "decode_slice_size": decode_slice_size})
    parts = trace_parts(spec, settings)
    activations, pieces = combine(parts, spec, estimator, options)
    views = weight_views(parts, spec, estimator)
    recompute = recompute_bytes(parts, estimator)
    peak = parts.weights + activations + parts.work + recompute
    pieces.update({"weights": parts.weights, "work": parts.work, "recompute": recompute, "weight_views": views})
    return Prediction(estimator, dict(options), settings, int(activations + views), int(peak), pieces)


def per_step_memory(model: Any, batch_size: int = 1, **overrides: Any) -> dict[str, float]:
    """GiB per HO step (graph of one inner step), FO (step + decode + reward) and per ZO / sampling step (working set)."""
    spec, settings = _spec_and_settings(model, batch_size, overrides.pop("reward", None), overrides)
    parts = trace_parts(spec, settings)
    return {"ho_step_gb": parts.step_inner / GB, "fo_gb": parts.fo / GB, "zo_step_gb": parts.step_work / GB,
            "decode_gb": parts.decode / GB, "reward_gb": parts.reward / GB, "weights_gb": parts.weights / GB}


def fits(prediction: Prediction, budget_gb: float, device_type: str = "cuda") -> bool:
    """True when the predicted peak (+ ``CUDA_OVERHEAD_GB`` on CUDA) is within ``budget_gb``."""
    overhead = CUDA_OVERHEAD_GB if device_type == "cuda" else 0.0
    return prediction.peak_gb + overhead <= budget_gb


# --------------------------------------------------------------------------------------------
# h: auto
# --------------------------------------------------------------------------------------------


def free_memory_gb(device: torch.device | str) -> float:
    """Free memory of ``device`` in GiB: CUDA ``mem_get_info``, else the system's available RAM."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free / GB
    try:
        import psutil

        return psutil.virtual_memory().available / GB
    except ImportError:  # pragma: no cover
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / GB


def choose_h(
    chain_or_spec: Any,
    batch_size: int,
    memory_budget_gb: float | None = None,
    reward: Any = None,
    max_h: int | None = None,
    dtype: str | torch.dtype | None = None,
    device_type: str | None = None,
    estimator: str = "rlr",
    options: dict[str, Any] | None = None,
) -> tuple[int, bool, float]:
    """``h: auto``: the largest HO length h whose predicted peak fits, and whether it needs checkpointing.

    ``estimator`` ("rlr" or "rlr-paper") and its ``options`` (``h`` aside) decide what else the
    prediction counts, e.g. the control variate's stand-in graph (``control_variate``, ``cv_jumps``).

    Returns ``(h, gradient_checkpointing, predicted_gb)``. Gradient checkpointing (inside the HO /
    FO segments) is switched on only when it lets a larger h fit than without it. ``h`` is at
    most ``max_h`` (default: num_steps - 1). ``memory_budget_gb`` defaults to the free memory of
    the chain's device plus the chain's own resident weights (they are part of the prediction);
    with a spec and no budget, the free memory of cuda if available else of the CPU.
    ``predicted_gb`` includes ``CUDA_OVERHEAD_GB`` on CUDA.
    Raises ValueError naming the memory needed (h = 1 with checkpointing) and the budget when
    nothing fits.
    """
    if isinstance(chain_or_spec, ModelSpec):
        spec = chain_or_spec
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        resident = 0.0
    else:
        spec = spec_from_chain(chain_or_spec, reward)
        device = torch.device(chain_or_spec.device)
        resident = trace_parts(spec, settings_from_chain(chain_or_spec, batch_size)).weights / GB if memory_budget_gb is None else 0.0
    device_type = device_type or device.type
    if memory_budget_gb is None:
        budget = free_memory_gb(device) + resident
        source = f"free memory of {device} ({budget - resident:.2f} GB) + the loaded weights ({resident:.2f} GB)"
    else:
        if not isinstance(memory_budget_gb, (int, float)) or isinstance(memory_budget_gb, bool) or not memory_budget_gb > 0:
            raise ValueError(f"memory_budget_gb must be a number > 0 (GB) or None (free device memory), got {memory_budget_gb!r}")
        budget, source = float(memory_budget_gb), "memory_budget_gb"
    top = spec.num_steps - 1 if max_h is None else int(max_h)
    if top < 1 or top > spec.num_steps - 1:
        raise ValueError(f"max_h must be between 1 and num_steps - 1 = {spec.num_steps - 1}, got {max_h!r}")
    base = chain_or_spec if not isinstance(chain_or_spec, ModelSpec) else spec
    extra = {k: v for k, v in (options or {}).items() if k in ("control_variate", "cv_jumps")}
    overhead = CUDA_OVERHEAD_GB if device_type == "cuda" else 0.0

    def largest(checkpointing: bool) -> tuple[int, float]:
        best, best_gb = 0, math.inf
        for h in range(1, top + 1):  # linear in h: stop at the first that does not fit
            gb = predict(base, estimator, batch_size, reward=reward, dtype=dtype,
                         gradient_checkpointing=checkpointing, **{**extra, "h": h}).peak_gb + overhead
            if gb > budget:
                return best, (best_gb if best else gb)
            best, best_gb = h, gb
        return best, best_gb

    plain_h, plain_gb = largest(False)
    ckpt_h, ckpt_gb = largest(True)
    if ckpt_h > plain_h:
        return ckpt_h, True, ckpt_gb
    if plain_h >= 1:
        return plain_h, False, plain_gb
    raise ValueError(
        f"h: auto: nothing fits: rlr with h=1 and gradient checkpointing needs {ckpt_gb:.2f} GB (predicted peak, "
        f"batch_size={batch_size}) but {budget:.2f} GB are available ({source}); lower batch_size, use dtype "
        f"float16 / bfloat16, or raise memory_budget_gb"
    )
