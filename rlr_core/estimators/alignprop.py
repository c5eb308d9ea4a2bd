"""alignprop: AlignProp's randomized truncated backpropagation with gradient checkpointing.

Paper: Prabhudesai, Goyal, Pathak, Fragkiadaki, "Aligning Text-to-Image Diffusion Models with
Reward Backpropagation" (arXiv 2310.03739, 2023).

Per estimate a truncation depth K is drawn uniformly from [``k_min``, ``k_max``] (``k_max`` None:
num_steps). Steps 0 .. T-K-1 run without autograd; the last K steps run with autograd from the
detached x[T-K], each step checkpointed (``run_steps(..., checkpointing=True)``), then decode and
reward. The first-order gradient of -mean(r) flows through those K steps only.

Bias: biased. The dependence of the earlier T-K steps on theta is dropped (SPEC-RLR §4); drawing K
at random (the paper's fix for over-optimising the last steps) mixes truncation depths but never
covers the dropped steps. AlignProp's released config draws the detach point in [35, 45] of 50
steps, i.e. K in [5, 15]; here K counts kept steps directly.
Memory: with checkpointing only the K step inputs are stored, plus one step's graph rebuilt at a
time in the backward pass and the decode + reward graph: about O(1) graphs, compute O(K)
(each kept step runs twice). Needs a differentiable reward.
"""

from __future__ import annotations

import torch

from ..chain import Chain
from ..sampling import run_steps
from .base import Estimator, Rollout, random_int


class AlignPropEstimator(Estimator):
    """Backpropagate (checkpointed) through the last K steps, K ~ Uniform{k_min .. k_max} per estimate."""

    name = "alignprop"
    ui_options = ("k_min",)
    requires_differentiable_reward = True

    def __init__(self, k_min: int = 1, k_max: int | None = None, normalize: bool = False) -> None:
        super().__init__(baseline="none", normalize=normalize)
        if isinstance(k_min, bool) or not isinstance(k_min, int) or k_min < 1:
            raise ValueError(f"k_min must be an integer >= 1, got {k_min!r}")
        if k_max is not None and (isinstance(k_max, bool) or not isinstance(k_max, int) or k_max < k_min):
            raise ValueError(f"k_max must be None (num_steps) or an integer >= k_min = {k_min}, got {k_max!r}")
        self.k_min = k_min
        self.k_max = k_max

    def k_range(self, num_steps: int) -> tuple[int, int]:
        """The inclusive range K is drawn from on a chain of ``num_steps`` steps."""
        return self.k_min, num_steps if self.k_max is None else self.k_max

    def _check_setup(self, chain: Chain, differentiable_reward: bool, batch_size: int) -> None:
        T = chain.num_steps
        if self.k_max is not None and self.k_max > T:
            raise ValueError(f"k_max must be None or an integer in [k_min, num_steps = {T}], got {self.k_max}")
        if self.k_min > T:
            raise ValueError(f"k_min must be an integer in [1, num_steps = {T}], got {self.k_min}")
        super()._check_setup(chain, differentiable_reward, batch_size)

    def sample(
        self, chain: Chain, prompts: list[str], generator: torch.Generator, differentiable_reward: bool
    ) -> Rollout:
        T = chain.num_steps
        lo, hi = self.k_range(T)
        k = lo + random_int(generator, hi - lo + 1)
        noise = self.draw_noise(chain, len(prompts), generator)
        cond = chain.condition(list(prompts))
        with torch.no_grad():
            x = run_steps(chain, noise.x0, range(0, T - k), cond, noise)
        with torch.enable_grad():
            x = run_steps(chain, x.detach(), range(T - k, T), cond, noise, checkpointing=True)
            images = chain.decode(x)
        steps = {"fo": list(range(T - k, T))}
        if k < T:
            steps["dropped"] = list(range(0, T - k))
        return Rollout(chain, list(prompts), images, True, steps=steps, data={"k": k})

    def parts(self, rollout: Rollout, rewards: torch.Tensor, info: dict[str, float]) -> dict[str, torch.Tensor]:
        info["k"] = float(rollout.data["k"])
        return {"fo": self.fo_part(rollout, rewards)}
