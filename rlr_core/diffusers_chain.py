"""``DiffusersChain``: the Chain protocol for diffusers ``UNet2DConditionModel`` models.

Supports Stable Diffusion 1.x / 2.x style models (AutoencoderKL latents) and pixel-space models
without a VAE (x is the image in [-1, 1]). Sampling is DDIM with eta (DDPO's
``ddim_step_with_logprob``): step k (sampling order, k = 0 .. T-1) has

    std  = eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev)
    mean = sqrt(a_prev) * x0_pred + sqrt(1 - a_prev - std^2) * eps_pred

with classifier-free guidance inside, and the last step using ``final_eta`` (0 = deterministic,
SPEC-RLR §3). theta = LoRA weights on the UNet attention projections (peft), kept in float32
even when the base model is float16 / bfloat16.

``load_model(name_or_path, ...)`` builds one from ``"tiny"`` (the bundled model), a local
diffusers folder or a Hugging Face Hub id.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ContextManager, Iterator, Sequence

import torch

from .chain import perturb_parameters
from .config import LORA_TARGET_SETS, resolve_lora_targets
from .hub import WeightsUnavailableError, ensure_can_download, hf_endpoint_host
from .prompts import phase_texts, resolve_boundaries

LORA_TARGET_MODULES: tuple[str, ...] = LORA_TARGET_SETS["attention"]  # the default: every attention projection
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
LORA_CONFIG_NAME = "rlr_lora.json"
STUDIO_CONFIG_NAME = "rlr_studio.json"
REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL_DIR = REPO_ROOT / "assets" / "tiny-shapes"
DEFAULT_NUM_STEPS = 20
DEFAULT_GUIDANCE_SCALE = 7.5
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
ATTENTION_BACKENDS = ("sdpa", "eager")  # PyTorch SDPA (AttnProcessor2_0) or the classic softmax(QK^T)V
_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


# The one "cannot get the weights" error of the project (models and reward weights alike).
ModelUnavailableError = WeightsUnavailableError


# --------------------------------------------------------------------------------------------
# Conditioning
# --------------------------------------------------------------------------------------------


@dataclass
class DiffusersCondition:
    """Encoded prompts: one text embedding per phase (coarse, mid, fine) and the empty prompt.

    ``phase_embeds[p]`` is [B, L, D] for phase p; ``uncond_embeds`` is [B, L, D] (the empty prompt,
    for classifier-free guidance); ``boundaries`` are the two step indices that split the phases.
    """

    phase_embeds: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    uncond_embeds: torch.Tensor
    prompts: list[str]
    boundaries: tuple[int, int]

    @property
    def batch_size(self) -> int:
        """Number of prompts encoded."""
        return int(self.uncond_embeds.shape[0])

    def phase(self, k: int) -> int:
        """Phase (0 coarse, 1 mid, 2 fine) of sampling step k."""
        b1, b2 = self.boundaries
        return 0 if k < b1 else (1 if k < b2 else 2)

    def embeds_for_step(self, k: int) -> torch.Tensor:
        """The conditional text embedding used at sampling step k."""
        return self.phase_embeds[self.phase(k)]

    def select(self, index: Sequence[int] | slice | torch.Tensor) -> "DiffusersCondition":
        """The condition of a sub-batch (e.g. one antithetic half)."""
        idx = list(range(self.batch_size))[index] if isinstance(index, slice) else index
        idx_t = torch.as_tensor(idx, dtype=torch.long, device=self.uncond_embeds.device)
        prompts = [self.prompts[int(i)] for i in idx_t.tolist()]
        embeds = tuple(e.index_select(0, idx_t) for e in self.phase_embeds)
        return DiffusersCondition(embeds, self.uncond_embeds.index_select(0, idx_t), prompts, self.boundaries)


# --------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------


def _check_number(name: str, value: Any, low: float, high: float = math.inf, integer: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))
    if integer:
        ok = ok and isinstance(value, int)
    if not ok or not (low <= float(value) <= high):
        kind = "an int" if integer else "a number"
        upper = "" if high == math.inf else f", {high}"
        bracket = ")" if high == math.inf else "]"
        raise ValueError(f"{name} must be {kind} in [{low}{upper or ', inf'}{bracket}, got {value!r}")


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


# --------------------------------------------------------------------------------------------
# The chain
# --------------------------------------------------------------------------------------------


class DiffusersChain:
    """Chain protocol over a diffusers UNet2DConditionModel with DDIM(eta) steps, CFG and LoRA.

    Args:
        unet, text_encoder, tokenizer: the model components (frozen; LoRA is added to ``unet``).
        scheduler: any diffusers scheduler; converted with ``DDIMScheduler.from_config``.
        vae: an AutoencoderKL, or None for a pixel-space model (x = image in [-1, 1]).
        num_steps: T, the number of sampling steps.
        guidance_scale: classifier-free guidance scale (1 = no CFG, a single UNet call per step).
        eta: DDIM eta of steps 0 .. T-2 (0 deterministic, 1 DDPM-like), in [0, 1].
        final_eta: eta of the last step k = T-1 (default 0: deterministic, as the FO step wants).
        lora_rank, lora_alpha: LoRA rank and alpha (alpha defaults to the rank: scale 1).
        lora_targets: where LoRA adapters go: a name of ``LORA_TARGET_SETS`` ("attention": every
            attention projection; "cross-attention": only the keys and values that read the text) or a
            list of module-name suffixes (see :func:`resolve_lora_targets`).
        device, dtype: where and in which precision the base model runs (LoRA is float32).
        gradient_checkpointing: checkpoint the UNet call and the VAE decode when grad is enabled (the
            HO and FO segments): their activations are recomputed in the backward pass, not kept.
        attention: "sdpa" (PyTorch scaled_dot_product_attention, diffusers AttnProcessor2_0: flash /
            memory-efficient kernels, no N x N attention matrix kept) or "eager" (AttnProcessor).
        autocast: run the UNet and the VAE under ``torch.autocast`` in ``dtype`` (only with float16 /
            bfloat16 base weights): the float32 LoRA matmuls then run in the low precision too while
            the LoRA weights and their gradients stay float32.
        decode_slice_size: decode at most this many latents at a time (None: the whole batch at once);
            with gradient checkpointing each slice is recomputed on its own in the backward pass.
        tf32: on CUDA allow TF32 matmuls / convolutions (``torch.backends``; no effect elsewhere).
        prompt_boundaries: the coarse/mid/fine split, two step indices or fractions (default thirds).
        model_name: a label for ``describe()`` and the saved LoRA metadata.
    """

    def __init__(
        self,
        unet: Any,
        text_encoder: Any,
        tokenizer: Any,
        scheduler: Any,
        vae: Any | None = None,
        num_steps: int = DEFAULT_NUM_STEPS,
        guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
        eta: float = 1.0,
        final_eta: float = 0.0,
        lora_rank: int = 4,
        lora_alpha: float | None = None,
        lora_targets: str | Sequence[str] = LORA_TARGET_MODULES,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = torch.float32,
        gradient_checkpointing: bool = False,
        prompt_boundaries: Sequence[int | float] | None = None,
        model_name: str = "custom",
        attention: str = "sdpa",
        autocast: bool = False,
        decode_slice_size: int | None = None,
        tf32: bool = True,
    ) -> None:
        from peft import LoraConfig

        _check_number("num_steps", num_steps, 1, 1000, integer=True)
        _check_number("guidance_scale", guidance_scale, 0.0, 100.0)
        _check_number("eta", eta, 0.0, 1.0)
        _check_number("final_eta", final_eta, 0.0, 1.0)
        _check_number("lora_rank", lora_rank, 1, 1024, integer=True)
        if lora_alpha is None:
            lora_alpha = lora_rank
        _check_number("lora_alpha", lora_alpha, 1e-8, 1e6)
        targets = resolve_lora_targets(lora_targets)
        if attention not in ATTENTION_BACKENDS:
            raise ValueError(f"attention must be one of {list(ATTENTION_BACKENDS)}, got {attention!r}")
        for flag_name, flag in (("autocast", autocast), ("tf32", tf32)):
            if not isinstance(flag, bool):
                raise ValueError(f"{flag_name} must be true or false, got {flag!r}")
        if decode_slice_size is not None:
            _check_number("decode_slice_size", decode_slice_size, 1, 1e9, integer=True)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        if autocast and self.dtype == torch.float32:
            raise ValueError("autocast needs dtype float16 or bfloat16 base weights (got float32); use autocast=false")
        self.attention = attention
        self.autocast = autocast
        self.decode_slice_size = None if decode_slice_size is None else int(decode_slice_size)
        self.tf32 = self.enable_tf32(self.device) if tf32 else False
        self.final_eta = float(final_eta)
        self.lora_rank = int(lora_rank)
        self.lora_alpha = float(lora_alpha) if float(lora_alpha) != int(lora_alpha) else int(lora_alpha)
        self.lora_targets = targets
        self.gradient_checkpointing = bool(gradient_checkpointing)
        self.model_name = str(model_name)
        self._set_schedule(scheduler.config, num_steps, guidance_scale, eta, prompt_boundaries)

        # model components: frozen, in the model dtype, eval mode
        self.unet = unet
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.vae = vae
        for module in (unet, text_encoder, vae):
            if module is not None:
                module.requires_grad_(False)
                if next(module.parameters()).dtype != self.dtype:
                    module.to(dtype=self.dtype)
                module.to(device=self.device)
                module.eval()
        self.set_attention(unet, attention)
        if vae is not None:
            self.set_attention(vae, attention)
        try:
            self.unet.add_adapter(
                LoraConfig(r=self.lora_rank, lora_alpha=self.lora_alpha, init_lora_weights="gaussian",
                           target_modules=targets)
            )
        except ValueError as error:  # peft's NoMatchingPeftModuleError
            if "not found" not in str(error):
                raise
            raise ValueError(f"lora_targets {targets} matched no module of the UNet; allowed: one of "
                             f"{list(LORA_TARGET_SETS)} or module-name suffixes such as 'attn2.to_k'") from None
        self._lora_named: list[tuple[str, torch.nn.Parameter]] = []
        for name, param in self.unet.named_parameters():
            if "lora_" in name:
                param.data = param.data.to(torch.float32)
                param.requires_grad_(True)
                self._lora_named.append((name, param))
            else:
                param.requires_grad_(False)
        if not self._lora_named:
            raise ValueError(f"lora_targets {targets} matched no module of the UNet")

        ucfg = self.unet.config
        self.latent_channels = int(ucfg.in_channels)
        sample_size = ucfg.sample_size
        self.latent_size = (int(sample_size), int(sample_size)) if isinstance(sample_size, int) else tuple(int(s) for s in sample_size)
        if vae is not None:
            self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
            self.scaling_factor = float(getattr(vae.config, "scaling_factor", 0.18215) or 0.18215)
        else:
            if self.latent_channels != 3:
                raise ValueError(f"a model without a VAE must have unet in_channels=3 (pixels), got {self.latent_channels}")
            self.vae_scale_factor = 1
            self.scaling_factor = 1.0
        self.image_size = (self.latent_size[0] * self.vae_scale_factor, self.latent_size[1] * self.vae_scale_factor)


    def _set_schedule(self, scheduler_config: Any, num_steps: int, guidance_scale: float, eta: float,
                      prompt_boundaries: Sequence[int | float] | None) -> None:
        """The sampler settings: DDIM timesteps, per-step alphas and stds, guidance, prompt phases."""
        from diffusers import DDIMScheduler

        self.num_steps = int(num_steps)
        self.guidance_scale = float(guidance_scale)
        self.eta = float(eta)
        self.boundaries = resolve_boundaries(self.num_steps, prompt_boundaries)
        self.prompt_boundaries = prompt_boundaries

        # scheduler: DDIM with the model's noise schedule
        self.scheduler = DDIMScheduler.from_config(scheduler_config)
        num_train = int(self.scheduler.config.num_train_timesteps)
        if self.num_steps > num_train:
            raise ValueError(f"num_steps must be in [1, {num_train}] for this scheduler, got {self.num_steps}")
        self.prediction_type = str(self.scheduler.config.prediction_type)
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"scheduler prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")
        self.scheduler.set_timesteps(self.num_steps)
        self._timesteps = [int(t) for t in self.scheduler.timesteps]
        alphas = self.scheduler.alphas_cumprod.to(torch.float64)
        final_alpha = float(self.scheduler.final_alpha_cumprod)
        step_gap = num_train // self.num_steps
        self._alpha_t: list[float] = []
        self._alpha_prev: list[float] = []
        self._stds: list[float] = []
        for k, t in enumerate(self._timesteps):
            prev_t = t - step_gap
            a_t = float(alphas[t])
            a_prev = float(alphas[prev_t]) if prev_t >= 0 else final_alpha
            step_eta = self.final_eta if k == self.num_steps - 1 else self.eta
            variance = (1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)
            self._alpha_t.append(a_t)
            self._alpha_prev.append(a_prev)
            self._stds.append(float(step_eta * math.sqrt(max(variance, 0.0))))
        cfg = self.scheduler.config
        self._clip_sample = bool(cfg.get("clip_sample", False))
        self._clip_range = float(cfg.get("clip_sample_range", 1.0))

    def with_sampler_settings(self, num_steps: int, guidance_scale: float, eta: float,
                              prompt_boundaries: Sequence[int | float] | None = None) -> "DiffusersChain":
        """A chain with other sampler settings that shares this one's modules and LoRA parameters
        (no second copy of the weights). Both hold the same LoRA; ``gradient_checkpointing`` and the
        other plain settings are per chain."""
        _check_number("num_steps", num_steps, 1, 1000, integer=True)
        _check_number("guidance_scale", guidance_scale, 0.0, 100.0)
        _check_number("eta", eta, 0.0, 1.0)
        variant = copy.copy(self)
        variant._set_schedule(self.scheduler.config, num_steps, guidance_scale, eta, prompt_boundaries)
        return variant

    # --- Chain protocol ---------------------------------------------------------------------
    def trainable_parameters(self) -> list[torch.Tensor]:
        """The LoRA tensors (float32), in the UNet's fixed module order."""
        return [p for _, p in self._lora_named]

    @torch.no_grad()
    def _encode(self, texts: list[str]) -> torch.Tensor:
        max_len = int(getattr(self.tokenizer, "model_max_length", 77) or 77)
        if max_len > 100000:
            max_len = 77
        tokens = self.tokenizer(
            texts, padding="max_length", max_length=max_len, truncation=True, return_tensors="pt"
        )
        ids = tokens.input_ids.to(self.device)
        return self.text_encoder(ids)[0].to(self.dtype)

    def condition(self, prompts: list[str]) -> DiffusersCondition:
        """Encode prompts (plain str: same text in all phases; ``ScheduledPrompt``: coarse/mid/fine) and ""."""
        if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)) or len(prompts) == 0:
            raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r}")
        phases = [phase_texts(p) for p in prompts]
        unique = sorted({text for texts in phases for text in texts} | {""})
        embeds = self._encode(unique)
        index = {text: i for i, text in enumerate(unique)}
        per_phase = tuple(
            embeds[torch.tensor([index[texts[p]] for texts in phases], device=embeds.device)] for p in range(3)
        )
        uncond = embeds[index[""]].unsqueeze(0).expand(len(prompts), -1, -1).contiguous()
        return DiffusersCondition(per_phase, uncond, [str(p) for p in prompts], self.boundaries)

    def initial(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """x[0] ~ N(0, I) of shape [B, C, h, w] (float32), drawn on the generator's device."""
        _check_number("batch_size", batch_size, 1, 1e9, integer=True)
        shape = (int(batch_size), self.latent_channels, *self.latent_size)
        gen_device = generator.device if generator is not None else torch.device("cpu")
        x = torch.randn(shape, generator=generator, device=gen_device, dtype=torch.float32)
        return x.to(self.device)

    def step_std(self, k: int) -> float:
        """The std s[k] of step k (eta for k < T-1, final_eta for k = T-1)."""
        return self._stds[self._check_k(k)]

    def timestep(self, k: int) -> int:
        """The scheduler timestep t of sampling step k."""
        return self._timesteps[self._check_k(k)]

    def _check_k(self, k: int) -> int:
        if isinstance(k, bool) or not isinstance(k, int) or not (0 <= k < self.num_steps):
            try:
                k = int(k.__index__())  # numpy / torch integer scalars
            except (AttributeError, TypeError):
                raise ValueError(f"step k must be an int in [0, {self.num_steps - 1}], got {k!r}") from None
            if not (0 <= k < self.num_steps):
                raise ValueError(f"step k must be an int in [0, {self.num_steps - 1}], got {k!r}")
        return int(k)

    def _autocast(self) -> ContextManager:
        """``torch.autocast`` in the base dtype when ``autocast`` is on, else a no-op."""
        if not self.autocast:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def _unet(self, x_in: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return self.unet(x_in, t, encoder_hidden_states=embeds, return_dict=False)[0]

    def _vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return self.vae.decode(latents, return_dict=False)[0].float()

    def model_output(self, x: torch.Tensor, k: int, cond: DiffusersCondition) -> torch.Tensor:
        """The guided UNet output (epsilon / v / sample, per prediction_type) at step k, float32."""
        k = self._check_k(k)
        if x.shape[0] != cond.batch_size:
            raise ValueError(f"x has batch size {x.shape[0]} but cond was encoded for {cond.batch_size} prompts")
        t = torch.tensor(self._timesteps[k], device=self.device)
        embeds = cond.embeds_for_step(k)
        use_cfg = self.guidance_scale != 1.0
        x_in = x.to(device=self.device, dtype=self.dtype)
        if use_cfg:
            x_in = torch.cat([x_in, x_in], dim=0)
            embeds = torch.cat([cond.uncond_embeds, embeds], dim=0)
        if self.gradient_checkpointing and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            out = checkpoint(self._unet, x_in, t, embeds, use_reentrant=False)
        else:
            out = self._unet(x_in, t, embeds)
        out = out.float()
        if use_cfg:
            out_uncond, out_cond = out.chunk(2, dim=0)
            out = out_uncond + self.guidance_scale * (out_cond - out_uncond)
        return out

    def step_mean_std(self, x: torch.Tensor, k: int, cond: DiffusersCondition) -> tuple[torch.Tensor, float]:
        """One DDIM(eta) step: mean of x[k+1] (float32, differentiable) and its std (python float)."""
        k = self._check_k(k)
        x0, eps = self._predict_x0_eps(x, k, cond)
        a_prev, std = self._alpha_prev[k], self._stds[k]
        direction = math.sqrt(max(1.0 - a_prev - std**2, 0.0))
        mean = math.sqrt(a_prev) * x0 + direction * eps
        return mean, std

    def predict_final(self, x: torch.Tensor, k: int, cond: DiffusersCondition, jumps: int = 3) -> torch.Tensor:
        """A deterministic guess of x[T] from x[k] in ``jumps`` model calls (differentiable in x and theta).

        DDIM with eta 0 over a coarse grid of the remaining steps: from step k, jumps to
        ``jumps - 1`` evenly spaced later steps, then to x[T]. ``jumps=1`` is the one-call
        (Tweedie) estimate of the clean sample. Used by rlr's control variate as a cheap
        stand-in for the rest of the chain.
        """
        k = self._check_k(k)
        if not isinstance(jumps, int) or isinstance(jumps, bool) or jumps < 1:
            raise ValueError(f"jumps must be an integer >= 1, got {jumps!r}")
        last = self.num_steps - 1
        stops = sorted({k + (last - k + 1) * i // jumps for i in range(jumps)})  # jumps >= last - k + 1: every step
        x = x.to(device=self.device, dtype=torch.float32)
        for index, stop in enumerate(stops):
            x0, eps = self._predict_x0_eps(x, stop, cond)
            a_next = self._alpha_t[stops[index + 1]] if index + 1 < len(stops) else self._alpha_prev[last]
            x = math.sqrt(a_next) * x0 + math.sqrt(max(1.0 - a_next, 0.0)) * eps
        return x

    def renoise(self, x_final: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Forward diffusion of a final state to the noise level of step k's input: a draw of x[k].

        q(x_t | x_0) with x_0 = ``x_final`` and t = ``timestep(k)``:
        ``sqrt(a_t) x_final + sqrt(1 - a_t) noise``, noise ~ N(0, I) from ``generator`` (drawn on the
        generator's device in float32, like ``initial``). Used by draft-lv (k = T-1: re-noise the
        sample to the last step's input and denoise it again with grad). Returns float32, no graph
        to ``x_final`` beyond the linear map (it is usually detached).
        """
        k = self._check_k(k)
        a_t = self._alpha_t[k]
        gen_device = generator.device if generator is not None else torch.device("cpu")
        noise = torch.randn(x_final.shape, generator=generator, device=gen_device, dtype=torch.float32)
        x0 = x_final.to(device=self.device, dtype=torch.float32)
        return math.sqrt(a_t) * x0 + math.sqrt(1.0 - a_t) * noise.to(self.device)

    def _predict_x0_eps(self, x: torch.Tensor, k: int, cond: DiffusersCondition) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's clean-sample and noise predictions at step k (float32)."""
        out = self.model_output(x, k, cond)
        x = x.to(device=self.device, dtype=torch.float32)
        a_t = self._alpha_t[k]
        sa, sb = math.sqrt(a_t), math.sqrt(1.0 - a_t)
        if self.prediction_type == "epsilon":
            eps = out
            x0 = (x - sb * eps) / sa
        elif self.prediction_type == "v_prediction":
            x0 = sa * x - sb * out
            eps = sa * out + sb * x
        else:  # "sample"
            x0 = out
            eps = (x - sa * x0) / sb
        if self._clip_sample:
            x0 = x0.clamp(-self._clip_range, self._clip_range)
        return x0, eps

    def decode(self, x_T: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] in [0, 1], float32, differentiable (VAE decode, or (x + 1) / 2 for pixels).

        The VAE decodes ``decode_slice_size`` latents at a time (all at once when None) and is
        checkpointed per slice under ``gradient_checkpointing`` when the latents carry a graph.
        """
        if self.vae is None:
            images = x_T.float()
        else:
            latents = (x_T / self.scaling_factor).to(device=self.device, dtype=self.dtype)
            size = self.decode_slice_size or latents.shape[0]
            checkpointed = self.gradient_checkpointing and torch.is_grad_enabled() and latents.requires_grad
            pieces = []
            for chunk in latents.split(size):
                if checkpointed:
                    from torch.utils.checkpoint import checkpoint

                    pieces.append(checkpoint(self._vae_decode, chunk, use_reentrant=False))
                else:
                    pieces.append(self._vae_decode(chunk))
            images = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
        return ((images + 1.0) / 2.0).clamp(0.0, 1.0)

    def perturbed(self, seed: int, scale: float) -> ContextManager:
        """Temporarily theta += scale * xi(seed) over the LoRA tensors; restored exactly on exit."""
        return perturb_parameters(self.trainable_parameters(), seed, scale)

    # --- extras -----------------------------------------------------------------------------
    @staticmethod
    def set_attention(module: Any, attention: str) -> None:
        """Give every diffusers ``Attention`` of ``module`` the processor of ``attention`` ("sdpa" / "eager")."""
        from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

        if attention not in ATTENTION_BACKENDS:
            raise ValueError(f"attention must be one of {list(ATTENTION_BACKENDS)}, got {attention!r}")
        if hasattr(module, "set_attn_processor") and getattr(module, "attn_processors", None):
            module.set_attn_processor(AttnProcessor2_0() if attention == "sdpa" else AttnProcessor())


    @staticmethod
    def enable_tf32(device: torch.device) -> bool:
        """On CUDA allow TF32 matmuls and cuDNN convolutions (PyTorch's global flags); True if set."""
        if device.type != "cuda":
            return False
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        return True

    @contextlib.contextmanager
    def adapters_disabled(self) -> Iterator[None]:
        """Run the base model (LoRA off) inside the block; LoRA is re-enabled on exit, even on error."""
        self.unet.disable_adapters()
        try:
            yield
        finally:
            self.unet.enable_adapters()

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        """LoRA tensors by parameter name (CPU clones), for checkpoints."""
        return {name: p.detach().to("cpu").clone() for name, p in self._lora_named}

    def load_lora_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load tensors from ``lora_state_dict()`` (same names and shapes, exactly; finite values).

        Every key, shape and value is checked before the first tensor is copied: on any error a
        ValueError names the problem and the LoRA is unchanged.
        """
        values = self._checked_lora_values(state_dict)
        with torch.no_grad():
            for (_, param), value in zip(self._lora_named, values):
                param.copy_(value.to(device=param.device, dtype=param.dtype))

    def _checked_lora_values(self, state_dict: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """The tensors of ``state_dict`` in this chain's LoRA order, once all are known good.

        ValueError when a key is missing or unexpected, or a value is not a floating-point tensor
        of this chain's shape with finite entries (the first bad key, in the UNet's order, is named).
        """
        if not isinstance(state_dict, dict):
            raise ValueError(f"a LoRA state dict must be a dict of name: tensor; got {type(state_dict).__name__}")
        expected = {name for name, _ in self._lora_named}
        missing, unexpected = expected - set(state_dict), set(state_dict) - expected
        if missing or unexpected:
            raise ValueError(
                f"LoRA state dict does not match this model (lora_rank={self.lora_rank}): "
                f"{len(missing)} missing keys (e.g. {sorted(missing)[:2]}), "
                f"{len(unexpected)} unexpected keys (e.g. {sorted(map(str, unexpected))[:2]}); nothing was loaded"
            )
        values = []
        for name, param in self._lora_named:
            value = state_dict[name]
            if not isinstance(value, torch.Tensor) or not value.is_floating_point():
                kind = value.dtype if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(f"LoRA tensor {name} must be a floating-point tensor; got {kind}; nothing was loaded")
            if tuple(value.shape) != tuple(param.shape):
                raise ValueError(
                    f"LoRA tensor {name} has shape {tuple(value.shape)}, expected {tuple(param.shape)} "
                    f"(lora_rank={self.lora_rank}); nothing was loaded"
                )
            if not bool(torch.isfinite(value).all()):
                raise ValueError(f"LoRA tensor {name} holds non-finite values (NaN or inf); nothing was loaded")
            values.append(value)
        return values

    def lora_is_untrained(self) -> bool:
        """True when every lora_B tensor is zero: the LoRA changes nothing yet (a fresh initialisation)."""
        return not any(bool(param.detach().any()) for name, param in self._lora_named if ".lora_B." in name)

    def reset_lora(self, seed: int) -> None:
        """Initialise the LoRA afresh from ``seed``, as peft's ``init_lora_weights="gaussian"`` does:
        lora_A ~ N(0, (1 / lora_rank)^2), lora_B = 0, so the LoRA changes nothing until trained.

        Drawn on the CPU in float32 in the UNet's fixed parameter order: the same seed gives the
        same LoRA in every process and on every device (the Trainer calls this at the start of a
        fresh run, so identical configs train identically). The tensors are updated in place.
        """
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        with torch.no_grad():
            for name, param in self._lora_named:
                if ".lora_A." in name:
                    value = torch.randn(param.shape, generator=generator, dtype=torch.float32) / self.lora_rank
                else:
                    value = torch.zeros(param.shape, dtype=torch.float32)
                param.copy_(value.to(device=param.device, dtype=param.dtype))

    def save_lora(self, directory: str | os.PathLike) -> Path:
        """Write ``pytorch_lora_weights.safetensors`` (diffusers format) and ``rlr_lora.json`` into ``directory``.

        The weights load in plain diffusers with ``StableDiffusionPipeline.load_lora_weights(directory)``.
        """
        from diffusers import StableDiffusionPipeline
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        peft_sd = get_peft_model_state_dict(self.unet, adapter_name="default")
        peft_sd = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in peft_sd.items()}
        unet_sd = convert_state_dict_to_diffusers(peft_sd)
        metadata = {
            "r": self.lora_rank,
            "lora_alpha": self.lora_alpha,
            "target_modules": sorted(self.lora_targets),
            "init_lora_weights": "gaussian",
        }
        StableDiffusionPipeline.save_lora_weights(
            save_directory=str(out), unet_lora_layers=unet_sd, weight_name=LORA_WEIGHT_NAME,
            safe_serialization=True, unet_lora_adapter_metadata=metadata,
        )
        info = {
            "format": "diffusers-lora",
            "weight_name": LORA_WEIGHT_NAME,
            "base_model": self.model_name,
            "lora_rank": self.lora_rank,
            "lora_alpha": self.lora_alpha,
            "target_modules": list(self.lora_targets),
            "num_parameters": self.num_trainable_parameters(),
        }
        (out / LORA_CONFIG_NAME).write_text(json.dumps(info, indent=2), encoding="utf-8")
        return out

    def load_lora(self, directory: str | os.PathLike) -> None:
        """Load LoRA weights written by ``save_lora`` (or any diffusers-format UNet LoRA of the same rank).

        ``directory``: a folder holding ``pytorch_lora_weights.safetensors`` (and ``rlr_lora.json``), or
        the ``.safetensors`` file itself. Only safetensors are read (pickle files such as ``.bin`` /
        ``.pt`` can run code and are refused). Rank, alpha, every key, shape and value are checked
        before anything is copied: on any error a ValueError names the problem and the LoRA is unchanged.
        """
        from diffusers.utils import convert_unet_state_dict_to_peft
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(directory)
        weight_file = path / LORA_WEIGHT_NAME if path.is_dir() else path
        if weight_file.suffix.lower() != ".safetensors":
            raise ValueError(
                f"LoRA weights must be a .safetensors file (written by save_lora); got {weight_file.name!r} "
                "(pickle formats such as .bin, .pt and .ckpt are refused: loading them can run code)"
            )
        if not weight_file.is_file():
            raise FileNotFoundError(f"no LoRA weights at {weight_file} (expected {LORA_WEIGHT_NAME} from save_lora)")
        try:
            raw = load_file(str(weight_file))
        except (SafetensorError, OSError, ValueError, RuntimeError) as error:
            raise ValueError(f"{weight_file} is not a readable safetensors file ({error}); nothing was loaded") from None
        unet_sd = {k[len("unet."):]: v for k, v in raw.items() if k.startswith("unet.")}
        if not unet_sd:
            raise ValueError(f"{weight_file} holds no UNet LoRA weights (keys starting with 'unet.')")
        peft_sd = convert_unet_state_dict_to_peft(unet_sd)
        ours: dict[str, torch.Tensor] = {}
        for key, value in peft_sd.items():
            if ".lora_A." not in key and ".lora_B." not in key:
                continue  # e.g. alpha entries
            ours[re.sub(r"\.(lora_[AB])\.", r".\1.default.", key)] = value
        config_file = path / LORA_CONFIG_NAME if path.is_dir() else None
        if config_file is not None and config_file.is_file():
            try:
                saved = json.loads(config_file.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                raise ValueError(f"{config_file} is not valid JSON ({error}); nothing was loaded") from None
            if not isinstance(saved, dict) or not all(
                isinstance(saved.get(key, 0), (int, float)) for key in ("lora_rank", "lora_alpha")
            ):
                raise ValueError(f"{config_file} must map lora_rank and lora_alpha to numbers; nothing was loaded")
            if int(saved.get("lora_rank", self.lora_rank)) != self.lora_rank:
                raise ValueError(
                    f"saved lora_rank={saved.get('lora_rank')} differs from this chain's lora_rank={self.lora_rank}; "
                    f"load the model with lora_rank={saved.get('lora_rank')}"
                )
            if float(saved.get("lora_alpha", self.lora_alpha)) != float(self.lora_alpha):
                raise ValueError(
                    f"saved lora_alpha={saved.get('lora_alpha')} differs from this chain's lora_alpha={self.lora_alpha}"
                )
            saved_targets = saved.get("target_modules")
            if isinstance(saved_targets, list) and sorted(map(str, saved_targets)) != sorted(self.lora_targets):
                raise ValueError(
                    f"saved target_modules={saved_targets} differ from this chain's lora_targets={self.lora_targets}; "
                    f"load the model with lora_targets={saved_targets}; nothing was loaded"
                )
        self.load_lora_state_dict(ours)

    def num_trainable_parameters(self) -> int:
        """Number of scalar LoRA parameters."""
        return int(sum(p.numel() for p in self.trainable_parameters()))

    def describe(self) -> dict[str, Any]:
        """A short summary: model, steps, guidance, eta, rank, trainable params, device, dtype."""
        return {
            "model": self.model_name,
            "num_steps": self.num_steps,
            "guidance_scale": self.guidance_scale,
            "eta": self.eta,
            "final_eta": self.final_eta,
            "lora_rank": self.lora_rank,
            "lora_alpha": self.lora_alpha,
            "lora_targets": list(self.lora_targets),
            "trainable_parameters": self.num_trainable_parameters(),
            "image_size": list(self.image_size),
            "latent": self.vae is not None,
            "prediction_type": self.prediction_type,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "attention": self.attention,
            "autocast": self.autocast,
            "gradient_checkpointing": self.gradient_checkpointing,
            "decode_slice_size": self.decode_slice_size,
            "tf32": self.tf32,
        }


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


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
    lora_targets: str | Sequence[str] = "attention",
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
    num_steps=20 and guidance_scale=7.5. ``lora_targets``: where the LoRA adapters go, "attention"
    (every attention projection, the default) or "cross-attention" (only the keys and values that read
    the text) or a list of module-name suffixes. ``device="auto"``: cuda > mps > cpu; ``dtype="auto"``:
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
    """The sampler defaults of a model without loading it: ``num_steps`` and ``guidance_scale`` from
    its folder's ``rlr_studio.json`` ("tiny" and local folders), else 20 and 7.5. Never downloads."""
    defaults: dict[str, Any] = {"num_steps": DEFAULT_NUM_STEPS, "guidance_scale": DEFAULT_GUIDANCE_SCALE}
    name = str(name_or_path or "").strip()
    folder = TINY_MODEL_DIR if name == "tiny" else Path(name).expanduser()
    studio = folder / STUDIO_CONFIG_NAME
    if name and studio.is_file():
        try:
            saved = json.loads(studio.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return defaults
        for key in defaults:
            if isinstance(saved.get(key), (int, float)) and not isinstance(saved.get(key), bool):
                defaults[key] = saved[key]
    return defaults
