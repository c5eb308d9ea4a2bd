"""full-bp: first order through every step (reparameterized), the exact pathwise gradient.

Unbiased, but the autograd graph of all T steps is kept (memory O(T)); optional gradient
checkpointing recomputes each step in the backward pass instead. Needs a differentiable reward.
"""

from __future__ import annotations

import time

import torch
from torch.utils.checkpoint import checkpoint

from ..chain import Chain
from ..sampling import draw_noise
from .base import Estimator, GradientEstimate, Rollout, part_gradient


class FullBackpropEstimator(Estimator):
    """Backpropagate the reward through the whole sampling chain."""

    name = "full-bp"
    requires_differentiable_reward = True

    def __init__(self, checkpointing: bool = False, normalize: bool = False) -> None:
        super().__init__(baseline="none", normalize=normalize)
        if not isinstance(checkpointing, bool):
            raise ValueError(f"checkpointing must be true or false, got {checkpointing!r}")
        self.checkpointing = checkpointing

    def _uses_baseline(self) -> bool:
        return False

    def rollout(
        self, chain: Chain, prompts: list[str], generator: torch.Generator, differentiable_reward: bool
    ) -> Rollout:
        start_time = time.perf_counter()
        self.check_rollout(chain, prompts, differentiable_reward)
        noise = draw_noise(chain, len(prompts), generator)
        cond = chain.condition(list(prompts))
        with torch.enable_grad():
            x = noise.x0
            for k in range(chain.num_steps):
                x = self._step(chain, x, k, cond, noise.eps[k])
            images = chain.decode(x)
        return Rollout(
            chain=chain,
            prompts=list(prompts),
            images=images,
            differentiable_reward=True,
            steps={"fo": list(range(chain.num_steps))},
            seconds=time.perf_counter() - start_time,
        )

    def _step(self, chain: Chain, x: torch.Tensor, k: int, cond, eps: torch.Tensor) -> torch.Tensor:
        def step(state: torch.Tensor) -> torch.Tensor:
            mean, std = chain.step_mean_std(state, k, cond)
            return mean + std * eps

        if self.checkpointing:
            return checkpoint(step, x, use_reentrant=False)
        return step(x)

    def gradient(self, rollout: Rollout, rewards: torch.Tensor) -> GradientEstimate:
        start_time = time.perf_counter()
        skipped = self.skipped_if_not_finite(rollout, rewards)
        if skipped is not None:
            return skipped
        self.check_reward_graph(rollout, rewards)
        params = rollout.chain.trainable_parameters()
        parts = {"fo": part_gradient(-self.reward_scale(rewards) * rewards.mean(), params)}
        result = self.finish(rollout, rewards, parts)
        result.seconds = rollout.seconds + (time.perf_counter() - start_time)
        return result
