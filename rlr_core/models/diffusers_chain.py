"""``DiffusersChain``: the Chain protocol for diffusers ``UNet2DConditionModel`` models.

Supports Stable Diffusion 1.x / 2.x style models (AutoencoderKL latents) and pixel-space models
without a VAE (x is the image in [-1, 1]). Sampling is DDIM with eta (the maths: :mod:`.ddim`) with
classifier-free guidance inside, and the last step using ``final_eta`` (0 = deterministic, the first-order
step; see docs/models.md). theta = LoRA weights on the UNet attention projections (peft, :mod:`.lora`),
kept in float32 even when the base model is float16 / bfloat16. Devices and dtypes: :mod:`.devices`;
``load_model``: :mod:`.loading`.
"""

from __future__ import annotations

import copy
from typing import Any, ContextManager, Sequence

import torch

from ..config import resolve_lora_targets
from ..prompts import resolve_boundaries
from .checks import check_number
from .condition import DiffusersCondition, encode_prompts, encode_texts
from .ddim import DEFAULT_GUIDANCE_SCALE, DEFAULT_NUM_STEPS, ddim_schedule, forward_noise, jump, jump_stops, step_mean, x0_and_eps
from .devices import ATTENTION_BACKENDS, autocast_context, enable_tf32, freeze_to, resolve_device, resolve_dtype, set_attention
from .lora import LORA_TARGET_MODULES, LoraAdapters, attach_lora


class DiffusersChain(LoraAdapters):
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

    set_attention = staticmethod(set_attention)
    enable_tf32 = staticmethod(enable_tf32)

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
        check_number("num_steps", num_steps, 1, 1000, integer=True)
        check_number("guidance_scale", guidance_scale, 0.0, 100.0)
        check_number("eta", eta, 0.0, 1.0)
        check_number("final_eta", final_eta, 0.0, 1.0)
        check_number("lora_rank", lora_rank, 1, 1024, integer=True)
        if lora_alpha is None:
            lora_alpha = lora_rank
        check_number("lora_alpha", lora_alpha, 1e-8, 1e6)
        targets = resolve_lora_targets(lora_targets)
        if attention not in ATTENTION_BACKENDS:
            raise ValueError(f"attention must be one of {list(ATTENTION_BACKENDS)}, got {attention!r}")
        for flag_name, flag in (("autocast", autocast), ("tf32", tf32)):
            if not isinstance(flag, bool):
                raise ValueError(f"{flag_name} must be true or false, got {flag!r}")
        if decode_slice_size is not None:
            check_number("decode_slice_size", decode_slice_size, 1, 1e9, integer=True)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        if autocast and self.dtype == torch.float32:
            raise ValueError("autocast needs dtype float16 or bfloat16 base weights (got float32); use autocast=false")
        self.attention = attention
        self.autocast = autocast
        self.decode_slice_size = None if decode_slice_size is None else int(decode_slice_size)
        self.tf32 = enable_tf32(self.device) if tf32 else False
        self.final_eta = float(final_eta)
        self.lora_rank = int(lora_rank)
        self.lora_alpha = float(lora_alpha) if float(lora_alpha) != int(lora_alpha) else int(lora_alpha)
        self.lora_targets = targets
        self.gradient_checkpointing = bool(gradient_checkpointing)
        self.model_name = str(model_name)
        self._set_schedule(scheduler.config, num_steps, guidance_scale, eta, prompt_boundaries)

        # model components: frozen, in the model dtype, eval mode; LoRA (float32) on the UNet
        self.unet, self.text_encoder, self.tokenizer, self.vae = unet, text_encoder, tokenizer, vae
        freeze_to((unet, text_encoder, vae), self.device, self.dtype)
        set_attention(unet, attention)
        if vae is not None:
            set_attention(vae, attention)
        self._lora_named = attach_lora(self.unet, self.lora_rank, self.lora_alpha, targets)
        self._set_shapes()

    def _set_shapes(self) -> None:
        """Latent channels and size, VAE scale and scaling factor, image size."""
        ucfg = self.unet.config
        self.latent_channels = int(ucfg.in_channels)
        sample_size = ucfg.sample_size
        self.latent_size = (int(sample_size), int(sample_size)) if isinstance(sample_size, int) else tuple(int(s) for s in sample_size)
        if self.vae is not None:
            self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
            self.scaling_factor = float(getattr(self.vae.config, "scaling_factor", 0.18215) or 0.18215)
        else:
            if self.latent_channels != 3:
                raise ValueError(f"a model without a VAE must have unet in_channels=3 (pixels), got {self.latent_channels}")
            self.vae_scale_factor = 1
            self.scaling_factor = 1.0
        self.image_size = (self.latent_size[0] * self.vae_scale_factor, self.latent_size[1] * self.vae_scale_factor)

    def _set_schedule(self, scheduler_config: Any, num_steps: int, guidance_scale: float, eta: float,
                      prompt_boundaries: Sequence[int | float] | None) -> None:
        """The sampler settings: DDIM timesteps, per-step alphas and stds, guidance, prompt phases."""
        self.num_steps = int(num_steps)
        self.guidance_scale = float(guidance_scale)
        self.eta = float(eta)
        self.boundaries = resolve_boundaries(self.num_steps, prompt_boundaries)
        self.prompt_boundaries = prompt_boundaries
        schedule = ddim_schedule(scheduler_config, self.num_steps, self.eta, self.final_eta)
        self.scheduler = schedule.scheduler
        self.prediction_type = schedule.prediction_type
        self._timesteps = schedule.timesteps
        self._alpha_t = schedule.alpha_t
        self._alpha_prev = schedule.alpha_prev
        self._stds = schedule.stds
        self._clip_sample = schedule.clip_sample
        self._clip_range = schedule.clip_range

    def with_sampler_settings(self, num_steps: int, guidance_scale: float, eta: float,
                              prompt_boundaries: Sequence[int | float] | None = None) -> "DiffusersChain":
        """A chain with other sampler settings that shares this one's modules and LoRA parameters
        (no second copy of the weights). Both hold the same LoRA; ``gradient_checkpointing`` and the
        other plain settings are per chain."""
        check_number("num_steps", num_steps, 1, 1000, integer=True)
        check_number("guidance_scale", guidance_scale, 0.0, 100.0)
        check_number("eta", eta, 0.0, 1.0)
        variant = copy.copy(self)
        variant._set_schedule(self.scheduler.config, num_steps, guidance_scale, eta, prompt_boundaries)
        return variant

    # --- Chain protocol (trainable_parameters, perturbed: LoraAdapters) --------------------
    def _encode(self, texts: list[str]) -> torch.Tensor:
        return encode_texts(self.tokenizer, self.text_encoder, texts, self.device, self.dtype)

    def condition(self, prompts: list[str]) -> DiffusersCondition:
        """Encode prompts (plain str: same text in all phases; ``ScheduledPrompt``: coarse/mid/fine) and ""."""
        return encode_prompts(self.tokenizer, self.text_encoder, prompts, self.boundaries, self.device, self.dtype)

    def initial(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """x[0] ~ N(0, I) of shape [B, C, h, w] (float32), drawn on the generator's device."""
        check_number("batch_size", batch_size, 1, 1e9, integer=True)
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
        return autocast_context(self.autocast, self.device, self.dtype)

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
        std = self._stds[k]
        return step_mean(x0, eps, self._alpha_prev[k], std), std

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
        stops = jump_stops(k, last, jumps)
        x = x.to(device=self.device, dtype=torch.float32)
        for index, stop in enumerate(stops):
            x0, eps = self._predict_x0_eps(x, stop, cond)
            a_next = self._alpha_t[stops[index + 1]] if index + 1 < len(stops) else self._alpha_prev[last]
            x = jump(x0, eps, a_next)
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
        gen_device = generator.device if generator is not None else torch.device("cpu")
        noise = torch.randn(x_final.shape, generator=generator, device=gen_device, dtype=torch.float32)
        x0 = x_final.to(device=self.device, dtype=torch.float32)
        return forward_noise(x0, self._alpha_t[k], noise.to(self.device))

    def _predict_x0_eps(self, x: torch.Tensor, k: int, cond: DiffusersCondition) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's clean-sample and noise predictions at step k (float32)."""
        out = self.model_output(x, k, cond)
        x = x.to(device=self.device, dtype=torch.float32)
        return x0_and_eps(out, x, self._alpha_t[k], self.prediction_type, self._clip_sample, self._clip_range)

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
