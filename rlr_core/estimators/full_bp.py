"""full-bp: first order through every step (reparameterized), the exact pathwise gradient.

Unbiased, but the autograd graph of all T steps is kept (memory O(T)); optional gradient
checkpointing recomputes each step in the backward pass instead. Needs a differentiable reward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..chain import Chain
from ..sampling import run_steps
from .base import Estimator, Rollout
from .memory_pieces import DECODE, REWARD, Graph, MemoryPieces
from .options import EstimatorOptions, flag, normalize_option


@dataclass(frozen=True)
class FullBackpropOptions(EstimatorOptions):
    checkpointing: bool = flag(False, "checkpoint every step: keep only the step inputs and rebuild each step's "
                                      "graph in the backward pass (memory O(1) graphs, each step runs twice)")
    normalize: bool = normalize_option(False)


class FullBackpropEstimator(Estimator):
    """Backpropagate the reward through the whole sampling chain."""

    name = "full-bp"
    Options = FullBackpropOptions
    requires_differentiable_reward = True

    def memory_pieces(self, num_steps: int, differentiable_reward: bool) -> MemoryPieces:
        chain = Graph(checkpointed=num_steps) if self.options.checkpointing else Graph(calls=num_steps)
        return MemoryPieces(held={"fo_chain": chain, "decode": DECODE, "reward": REWARD})

    def sample(
        self, chain: Chain, prompts: list[str], generator: torch.Generator, differentiable_reward: bool,
        reward: Any = None,
    ) -> Rollout:
        noise = self.draw_noise(chain, len(prompts), generator)
        cond = chain.condition(list(prompts))
        with torch.enable_grad():
            x = run_steps(chain, noise.x0, range(chain.num_steps), cond, noise, checkpointing=self.options.checkpointing)
            images = chain.decode(x)
        return Rollout(chain, list(prompts), images, True, steps={"fo": list(range(chain.num_steps))})

    def parts(self, rollout: Rollout, rewards: torch.Tensor, info: dict[str, float]) -> dict[str, torch.Tensor]:
        return {"fo": self.fo_part(rollout, rewards)}
