"""The PPO-clipped likelihood-ratio gradient of one recorded step, shared by ddpo and rlr-released.

Paper: Black, Janner, Du, Kostrikov, Levine, "Training Diffusion Models with Reinforcement Learning"
(DDPO, arXiv 2305.13301, 2023); the per-dimension ratio follows its released code (ddpo-pytorch).
"""

from __future__ import annotations

from typing import Any

import torch

from ..chain import Chain
from ..sampling import step_log_prob
from .gradients import part_gradient


def ppo_step_gradient(
    chain: Chain,
    cond: Any,
    step_index: int,
    recorded: Any,
    advantages: torch.Tensor,
    clip_range: float,
    weight: float,
    stats: dict[str, float] | None = None,
) -> torch.Tensor:
    """Flat gradient of the PPO-clipped likelihood-ratio loss of one recorded step.

    The ratio is taken per dimension of the state, as ddpo-pytorch does (its log-probability is a
    mean over dimensions): rho_i = exp((log p_theta - log p_old) / D), D = elements of one sample.
    A sum over D = 3,072 dimensions would otherwise leave the clip range after any visible move.

    loss = weight * D * sum_i max(-A_i * rho_i, -A_i * clip(rho_i, 1 - c, 1 + c)).
    At rho = 1 (theta unchanged since sampling) its gradient is exactly the likelihood-ratio
    term -weight * sum_i A_i grad log p (the factor D undoes the 1/D inside rho).
    """
    params = chain.trainable_parameters()
    with torch.enable_grad():
        log_prob = step_log_prob(chain, recorded.x, recorded.x_next, step_index, cond)
        dims = recorded.x_next[0].numel()
        log_ratio = ((log_prob - recorded.log_prob.to(log_prob)) / dims).clamp(-20.0, 20.0)
        ratio = torch.exp(log_ratio)
        adv = advantages.to(log_prob)
        unclipped = -adv * ratio
        clipped = -adv * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
        loss = weight * dims * torch.maximum(unclipped, clipped).sum()
        if stats is not None:  # how many ratios left the clip range (their gradient is cut)
            outside = ((ratio - 1.0).abs() > clip_range).sum().item()
            stats["clipped"] = stats.get("clipped", 0.0) + float(outside)
            stats["ratios"] = stats.get("ratios", 0.0) + float(ratio.numel())
        return part_gradient(loss, params)
