"""truncated-bp (AlignProp / DRaFT-K): first order through the last K steps only.

Steps before the last K run without autograd and their dependence on theta is dropped, so the
estimate is biased; memory is O(K). ``k_range=(lo, hi)`` draws K uniformly per estimate.
"""

from __future__ import annotations

import torch

from ..chain import Chain
from ..sampling import run_steps
from .base import Estimator, Rollout, random_int


class TruncatedBackpropEstimator(Estimator):
    """Backpropagate through the last ``k`` steps; earlier steps are detached."""

    name = "truncated-bp"
    ui_options = ("k",)
    requires_differentiable_reward = True

    def __init__(self, k: int = 1, k_range: tuple[int, int] | list[int] | None = None, normalize: bool = False) -> None:
        super().__init__(baseline="none", normalize=normalize)
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        if k_range is not None:
            if len(k_range) != 2 or not all(isinstance(v, int) for v in k_range) or not 1 <= k_range[0] <= k_range[1]:
                raise ValueError(f"k_range must be two integers 1 <= lo <= hi, got {k_range!r}")
            k_range = (int(k_range[0]), int(k_range[1]))
        self.k = k
        self.k_range = k_range

    def _check_setup(self, chain: Chain, differentiable_reward: bool, batch_size: int) -> None:
        largest = self.k_range[1] if self.k_range else self.k
        if largest > chain.num_steps:
            field_name = "k_range" if self.k_range else "k"
            raise ValueError(f"{field_name} must be <= num_steps = {chain.num_steps}, got {largest}")
        super()._check_setup(chain, differentiable_reward, batch_size)

    def sample(
        self, chain: Chain, prompts: list[str], generator: torch.Generator, differentiable_reward: bool
    ) -> Rollout:
        T = chain.num_steps
        k = self.k
        if self.k_range is not None:
            k = self.k_range[0] + random_int(generator, self.k_range[1] - self.k_range[0] + 1)
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
