"""DDIM(eta) maths as plain functions (DDPO's ``ddim_step_with_logprob``).

Step k (sampling order, k = 0 .. T-1) goes from timestep t = ``timesteps[k]`` with alpha-bar ``a_t`` to
``a_prev`` (the alpha-bar one step gap earlier, or the scheduler's final alpha), with

    std  = eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev)
    mean = sqrt(a_prev) * x0_pred + sqrt(1 - a_prev - std^2) * eps_pred

and the last step using ``final_eta`` (0 = deterministic). See docs/models.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

DEFAULT_NUM_STEPS = 20
DEFAULT_GUIDANCE_SCALE = 7.5
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


@dataclass(frozen=True)
class DDIMSchedule:
    """The per-step numbers of a DDIM(eta) sampler with ``num_steps`` steps (python floats)."""

    scheduler: Any  # the diffusers DDIMScheduler, timesteps set
    timesteps: list[int]
    alpha_t: list[float]
    alpha_prev: list[float]
    stds: list[float]
    prediction_type: str
    clip_sample: bool
    clip_range: float


def ddim_schedule(scheduler_config: Any, num_steps: int, eta: float, final_eta: float) -> DDIMSchedule:
    """The DDIM timesteps, alphas and stds of ``num_steps`` steps on the noise schedule ``scheduler_config``."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(scheduler_config)
    num_train = int(scheduler.config.num_train_timesteps)
    if num_steps > num_train:
        raise ValueError(f"num_steps must be in [1, {num_train}] for this scheduler, got {num_steps}")
    prediction_type = str(scheduler.config.prediction_type)
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"scheduler prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    scheduler.set_timesteps(num_steps)
    timesteps = [int(t) for t in scheduler.timesteps]
    alphas = scheduler.alphas_cumprod.to(torch.float64)
    final_alpha = float(scheduler.final_alpha_cumprod)
    step_gap = num_train // num_steps
    alpha_t: list[float] = []
    alpha_prev: list[float] = []
    stds: list[float] = []
    for k, t in enumerate(timesteps):
        prev_t = t - step_gap
        a_t = float(alphas[t])
        a_prev = float(alphas[prev_t]) if prev_t >= 0 else final_alpha
        step_eta = final_eta if k == num_steps - 1 else eta
        variance = (1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)
        alpha_t.append(a_t)
        alpha_prev.append(a_prev)
        stds.append(float(step_eta * math.sqrt(max(variance, 0.0))))
    cfg = scheduler.config
    return DDIMSchedule(scheduler, timesteps, alpha_t, alpha_prev, stds, prediction_type,
                        bool(cfg.get("clip_sample", False)), float(cfg.get("clip_sample_range", 1.0)))


def x0_and_eps(out: torch.Tensor, x: torch.Tensor, a_t: float, prediction_type: str,
               clip_sample: bool = False, clip_range: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The clean-sample and noise predictions from a model output ``out`` (epsilon / v / sample) at alpha-bar ``a_t``."""
    sa, sb = math.sqrt(a_t), math.sqrt(1.0 - a_t)
    if prediction_type == "epsilon":
        eps = out
        x0 = (x - sb * eps) / sa
    elif prediction_type == "v_prediction":
        x0 = sa * x - sb * out
        eps = sa * out + sb * x
    else:  # "sample"
        x0 = out
        eps = (x - sa * x0) / sb
    if clip_sample:
        x0 = x0.clamp(-clip_range, clip_range)
    return x0, eps


def step_mean(x0: torch.Tensor, eps: torch.Tensor, a_prev: float, std: float) -> torch.Tensor:
    """The mean of the next state of a DDIM(eta) step with std ``std``."""
    direction = math.sqrt(max(1.0 - a_prev - std**2, 0.0))
    return math.sqrt(a_prev) * x0 + direction * eps


def jump(x0: torch.Tensor, eps: torch.Tensor, a_next: float) -> torch.Tensor:
    """The deterministic (eta 0) DDIM jump to alpha-bar ``a_next``."""
    return math.sqrt(a_next) * x0 + math.sqrt(max(1.0 - a_next, 0.0)) * eps


def jump_stops(k: int, last: int, jumps: int) -> list[int]:
    """The steps a ``jumps``-call DDIM guess of x[T] from step k evaluates the model at (every step when
    ``jumps`` >= last - k + 1)."""
    return sorted({k + (last - k + 1) * i // jumps for i in range(jumps)})


def forward_noise(x0: torch.Tensor, a_t: float, noise: torch.Tensor) -> torch.Tensor:
    """q(x_t | x_0): ``sqrt(a_t) x0 + sqrt(1 - a_t) noise``."""
    return math.sqrt(a_t) * x0 + math.sqrt(1.0 - a_t) * noise
