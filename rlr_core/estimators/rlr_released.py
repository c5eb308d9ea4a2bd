"""rlr-released: what the authors' released code does (docs/estimators.md), for comparison.

First order on the last step, plus ``chain_len`` single-step PPO-clipped likelihood-ratio
terms at uniformly random earlier steps, with batch-normalized advantages and no zeroth-order
part. The remaining steps are dropped and the sampled terms are not rescaled, so the estimate
is biased. Needs a differentiable reward (its first-order step backpropagates through it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..chain import Chain
from ..sampling import run_steps, take_step
from .base import Estimator, Rollout, RolloutData, part_gradient
from .memory_pieces import Graph, MemoryPieces, first_order
from .options import EstimatorOptions, baseline_option, integer, normalize_option, number


@dataclass(frozen=True)
class RLRReleasedOptions(EstimatorOptions):
    chain_len: int = integer(2, "random earlier steps given a single-step PPO likelihood-ratio term")
    clip_range: float = number(1e-4, "PPO clip range of those terms")
    normalize: bool = normalize_option(True)
    baseline: str = baseline_option()


class RLRReleasedEstimator(Estimator):
    """FO last step + ``chain_len`` random single-step PPO likelihood-ratio terms, no ZO."""

    name = "rlr-released"
    Options = RLRReleasedOptions
    ui_options = ("chain_len",)
    requires_differentiable_reward = True

    def memory_pieces(self, num_steps: int, differentiable_reward: bool) -> MemoryPieces:
        """One likelihood-ratio step per backward, in turn with the first-order last step."""
        return MemoryPieces(in_turn={"fo": first_order(differentiable_reward),
                                     "per_step": Graph(calls=1, log_prob=True)})

    def _check_setup(self, chain: Chain, differentiable_reward: bool, batch_size: int) -> None:
        if self.options.chain_len > chain.num_steps - 1:
            raise ValueError(f"chain_len must be <= num_steps - 1 = {chain.num_steps - 1}, got {self.options.chain_len}")
        super()._check_setup(chain, differentiable_reward, batch_size)

    def sample(
        self, chain: Chain, prompts: list[str], generator: torch.Generator, differentiable_reward: bool,
        reward: Any = None,
    ) -> Rollout:
        T = chain.num_steps
        order = torch.randperm(T - 1, generator=generator, device=generator.device).tolist()
        lr_steps = sorted(order[: self.options.chain_len])
        noise = self.draw_noise(chain, len(prompts), generator)
        cond = chain.condition(list(prompts))
        record = {k: None for k in lr_steps}
        with torch.no_grad():
            x = run_steps(chain, noise.x0, range(T - 1), cond, noise, record=record)
        with torch.enable_grad():
            x_T, _, _ = take_step(chain, x.detach(), T - 1, cond, noise.eps[T - 1])
            images = chain.decode(x_T)
        dropped = [k for k in range(T - 1) if k not in lr_steps]
        return Rollout(chain, list(prompts), images, True, steps={"fo": [T - 1], "lr": lr_steps, "dropped": dropped},
                       data=RolloutData(cond=cond, record=record))

    def parts(self, rollout: Rollout, rewards: torch.Tensor, info: dict[str, float]) -> dict[str, torch.Tensor]:
        # the released code does not normalise its first-order term, only the advantages
        fo = part_gradient(-rewards.sum() / self.batch_size(rewards), rollout.chain.trainable_parameters())
        return {"fo": fo, "lr": self.ppo_part(rollout, rewards, self.options.clip_range)}
