"""zo: two-point parameter perturbation (SPSA / antithetic ES) over the whole chain.

The batch is split in halves that share every noise (common random numbers): the first half
samples with theta + scale * xi, the second with theta - scale * xi, and

    grad E[r]  ~=  mean_pairs(r_plus - r_minus) / (2 * scale) * xi.

Unbiased for the Gaussian-smoothed objective (exactly unbiased when r is quadratic in theta);
inference only, no autograd, works with any reward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..chain import Chain, perturbation_direction
from ..sampling import run_steps
from .base import Estimator, Rollout, RolloutData, flatten, random_int
from .memory_pieces import MemoryPieces
from .options import EstimatorOptions, normalize_option, number


@dataclass(frozen=True)
class ZerothOrderOptions(EstimatorOptions):
    scale: float = number(1e-2, "size of the parameter perturbation theta +/- scale * xi")
    normalize: bool = normalize_option(False)


@dataclass
class ZOData(RolloutData):
    seed: int = 0  # the perturbation direction's seed


class ZerothOrderEstimator(Estimator):
    """Antithetic parameter-perturbation estimate with common random numbers."""

    name = "zo"
    Options = ZerothOrderOptions
    ui_options = ("scale",)

    def noise_groups(self, differentiable_reward: bool) -> int:
        return 2

    def memory_pieces(self, num_steps: int, differentiable_reward: bool) -> MemoryPieces:
        return MemoryPieces()  # inference only: no graph

    def sample(
        self, chain: Chain, prompts: list[str], generator: torch.Generator, differentiable_reward: bool,
        reward: Any = None,
    ) -> Rollout:
        n = len(prompts) // 2
        noise = self.draw_noise(chain, n, generator)
        seed = random_int(generator, 2**31 - 1)
        images = []
        with torch.no_grad():
            for group_prompts, sign in ((prompts[:n], 1.0), (prompts[n:], -1.0)):
                cond = chain.condition(list(group_prompts))
                perturb = {k: (seed, sign * self.options.scale) for k in range(chain.num_steps)}
                x = run_steps(chain, noise.x0, range(chain.num_steps), cond, noise, perturb)
                images.append(chain.decode(x))
        return Rollout(chain, list(prompts), torch.cat(images), differentiable_reward,
                       steps={"zo": list(range(chain.num_steps))}, data=ZOData(seed=seed))

    def parts(self, rollout: Rollout, rewards: torch.Tensor, info: dict[str, float]) -> dict[str, torch.Tensor]:
        params = rollout.chain.trainable_parameters()
        r = rewards.detach().double()
        half = r.shape[0] // 2
        pairs = self.batch_size(rewards) // 2  # +/- pairs of the whole batch
        slope = float((r[:half] - r[half:]).sum()) / pairs / (2 * self.options.scale)
        xi = flatten(perturbation_direction(params, rollout.data.seed), params)
        return {"zo": -(self.reward_scale(rewards) * slope) * xi}
