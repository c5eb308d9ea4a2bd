"""Tracing each part of an estimate on the ``meta`` device, where tensors have shapes and dtypes but no data.

Graph bytes are counted with saved-tensor hooks (:class:`rlr_core.memory.meter.SavedBytesCounter`, the
same count as ``MemoryMeter.graph_memory_mb``), working memory by following every operator output
until it is freed (:class:`rlr_core.memory.meter.LiveBytesTracker`). On meta, PyTorch's SDPA would fall
back to the math kernel (which keeps the N x N attention matrix); the trace substitutes the CPU
flash-attention op, whose saved tensors (q, k, v, output, logsumexp) are those of the CUDA flash /
memory-efficient kernels too. ``autocast`` is replayed by casting the inputs of matmuls and
convolutions to the low dtype and of normalisations / softmax to float32, autocast's own policy
(meta tensors skip autocast). docs/memory.md.
"""

from __future__ import annotations

import contextlib
import functools
import json
import threading
from dataclasses import replace
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from .meter import LiveBytesTracker, SavedBytesCounter
from .specs import ModelSpec, PartMemory, Settings

_META = torch.device("meta")
_TRACE_LOCK = threading.Lock()


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
    from ..models.devices import resolve_dtype

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

    from ..models import DiffusersChain, resolve_dtype

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
    from ..rewards.simple import SaturationReward

    if kind in ("none", "pixel"):
        saturation = SaturationReward()
        return (lambda images: saturation(images, [""] * images.shape[0])), 0, set()
    import open_clip

    from ..rewards.aesthetic import AestheticHead
    from ..rewards.clip_models import LoadedClip, encode_images

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
    from ..models.condition import DiffusersCondition

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
