"""full-bp: first order through every step (reparameterized), the exact pathwise gradient.

Unbiased, but the autograd graph of all T steps is kept (memory O(T)); optional gradient
checkpointing recomputes each step in the backward pass instead. Needs a differentiable reward.
"""

from __future__ import annotations

import torch

from ..chain import Chain
from ..sampling import run_steps
from .base import Estimator, Rollout


class FullBackpropEstimator(Estimator):
    """Backpropagate the reward through the whole sampling chain."""

    name = "full-bp"
    requires_differentiable_reward = True

    def __init__(self, checkpointing: bool = False, normalize: bool = False) -> None:
        super().__init__(baseline="none", normalize=normalize)
        if not isinstance(checkpointing, bool):
            raise ValueError(f"checkpointing must be true or false, got {checkpointing!r}")
        self.checkpointing = checkpointing

    def sample(
        self, chain: Chain, prompts: list[str], generator: torch.Generator, differentiable_reward: bool
    ) -> Rollout:
        noise = self.draw_noise(chain, len(prompts), generator)
        cond = chain.condition(list(prompts))
        with torch.enable_grad():
            x = run_steps(chain, noise.x0, range(chain.num_steps), cond, noise, checkpointing=self.checkpointing)
            images = chain.decode(x)
        return Rollout(chain, list(prompts), images, True, steps={"fo": list(range(chain.num_steps))})

    def parts(self, rollout: Rollout, rewards: torch.Tensor, info: dict[str, float]) -> dict[str, torch.Tensor]:
        return {"fo": self.fo_part(rollout, rewards)}
