"""truncated-bp (AlignProp / DRaFT-K): first order through the last K steps only.

Steps before the last K run without autograd and their dependence on theta is dropped, so the
estimate is biased; memory is O(K). ``k_range=(lo, hi)`` draws K uniformly per estimate.
Papers: Clark, Vicol, Swersky, Fleet, "Directly Fine-Tuning Diffusion Models on Differentiable
Rewards" (DRaFT, arXiv 2309.17400, 2023); Prabhudesai et al., AlignProp (arXiv 2310.03739, 2023).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..chain import Chain
from ..sampling import run_steps
from .base import Estimator, Rollout, random_int
from .memory_pieces import DECODE, REWARD, Graph, MemoryPieces
from .options import EstimatorOptions, custom, integer, normalize_option


def _check_k_range(name: str, value: Any) -> tuple[int, int]:
    if (isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2
            or not all(isinstance(v, int) for v in value) or not 1 <= value[0] <= value[1]):
        raise ValueError(f"{name} must be two integers 1 <= lo <= hi, got {value!r}")
    return int(value[0]), int(value[1])


@dataclass(frozen=True)
class TruncatedBackpropOptions(EstimatorOptions):
    k: int = integer(1, "steps at the end of the chain backpropagated through (K)")
    k_range: tuple[int, int] | None = custom(None, "draw K uniformly from [lo, hi] per estimate instead of k "
                                                   "(None: always k)", _check_k_range, none=True)
    normalize: bool = normalize_option(False)


class TruncatedBackpropEstimator(Estimator):
    """Backpropagate through the last ``k`` steps; earlier steps are detached."""

    name = "truncated-bp"
    Options = TruncatedBackpropOptions
    ui_options = ("k",)
    requires_differentiable_reward = True

    def _check_setup(self, chain: Chain, differentiable_reward: bool, batch_size: int) -> None:
        largest = self.largest_k()
        if largest > chain.num_steps:
            field_name = "k_range" if self.options.k_range else "k"
            raise ValueError(f"{field_name} must be <= num_steps = {chain.num_steps}, got {largest}")
        super()._check_setup(chain, differentiable_reward, batch_size)

    def largest_k(self) -> int:
        """The most steps one estimate backpropagates through."""
        return self.options.k_range[1] if self.options.k_range else self.options.k

    def memory_pieces(self, num_steps: int, differentiable_reward: bool) -> MemoryPieces:
        k = self.largest_k()
        if not 1 <= k <= num_steps:
            raise ValueError(f"k must be between 1 and num_steps = {num_steps}, got {k}")
        return MemoryPieces(held={"fo_chain": Graph(calls=k), "decode": DECODE, "reward": REWARD})

    def sample(
        self, chain: Chain, prompts: list[str], generator: torch.Generator, differentiable_reward: bool,
        reward: Any = None,
    ) -> Rollout:
        T = chain.num_steps
        k, k_range = self.options.k, self.options.k_range
        if k_range is not None:
            k = k_range[0] + random_int(generator, k_range[1] - k_range[0] + 1)
        noise = self.draw_noise(chain, len(prompts), generator)
        cond = chain.condition(list(prompts))
        with torch.no_grad():
            x = run_steps(chain, noise.x0, range(0, T - k), cond, noise)
        with torch.enable_grad():
            x = run_steps(chain, x.detach(), range(T - k, T), cond, noise)
            images = chain.decode(x)
        return Rollout(chain, list(prompts), images, True,
                       steps={"fo": list(range(T - k, T)), "dropped": list(range(0, T - k))})

    def parts(self, rollout: Rollout, rewards: torch.Tensor, info: dict[str, float]) -> dict[str, torch.Tensor]:
        return {"fo": self.fo_part(rollout, rewards)}
