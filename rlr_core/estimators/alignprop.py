"""alignprop: AlignProp's randomized truncated backpropagation with gradient checkpointing.

Paper: Prabhudesai, Goyal, Pathak, Fragkiadaki, "Aligning Text-to-Image Diffusion Models with
Reward Backpropagation" (arXiv 2310.03739, 2023).

Per estimate a truncation depth K is drawn uniformly from [``k_min``, ``k_max``] (``k_max`` None:
num_steps). Steps 0 .. T-K-1 run without autograd; the last K steps run with autograd from the
detached x[T-K], each step checkpointed (``run_steps(..., checkpointing=True)``), then decode and
reward. The first-order gradient of -mean(r) flows through those K steps only.

Bias: biased. The dependence of the earlier T-K steps on theta is dropped (docs/estimators.md); drawing K
at random (the paper's fix for over-optimising the last steps) mixes truncation depths but never
covers the dropped steps. AlignProp's released config draws the detach point in [35, 45] of 50
steps, i.e. K in [5, 15]; here K counts kept steps directly.
Memory: with checkpointing only the K step inputs are stored, plus one step's graph rebuilt at a
time in the backward pass and the decode + reward graph: about O(1) graphs, compute O(K)
(each kept step runs twice). Needs a differentiable reward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..chain import Chain
from ..sampling import run_steps
from .base import Estimator, Rollout, RolloutData, random_int
from .memory_pieces import DECODE, REWARD, Graph, MemoryPieces
from .options import EstimatorOptions, integer, normalize_option


@dataclass(frozen=True)
class AlignPropOptions(EstimatorOptions):
    k_min: int = integer(1, "fewest steps at the end of the chain backpropagated through")
    k_max: int | None = integer(None, "most steps backpropagated through (None: num_steps)", none=True)
    normalize: bool = normalize_option(False)

    def check_together(self) -> None:
        if self.k_max is not None and self.k_max < self.k_min:
            raise ValueError(f"k_max must be None (num_steps) or an integer >= k_min = {self.k_min}, got {self.k_max!r}")


@dataclass
class AlignPropData(RolloutData):
    k: int = 0  # the truncation depth drawn


class AlignPropEstimator(Estimator):
    """Backpropagate (checkpointed) through the last K steps, K ~ Uniform{k_min .. k_max} per estimate."""

    name = "alignprop"
    Options = AlignPropOptions
    ui_options = ("k_min",)
    requires_differentiable_reward = True

    def k_range(self, num_steps: int) -> tuple[int, int]:
        """The inclusive range K is drawn from on a chain of ``num_steps`` steps."""
        return self.options.k_min, num_steps if self.options.k_max is None else self.options.k_max

    def _check_setup(self, chain: Chain, differentiable_reward: bool, batch_size: int) -> None:
        T = chain.num_steps
        if self.options.k_max is not None and self.options.k_max > T:
            raise ValueError(f"k_max must be None or an integer in [k_min, num_steps = {T}], got {self.options.k_max}")
        if self.options.k_min > T:
            raise ValueError(f"k_min must be an integer in [1, num_steps = {T}], got {self.options.k_min}")
        super()._check_setup(chain, differentiable_reward, batch_size)

    def memory_pieces(self, num_steps: int, differentiable_reward: bool) -> MemoryPieces:
        """The largest K may be drawn: its checkpointed steps keep only their inputs (one state each);
        their graphs are rebuilt one at a time in backward."""
        k = self.k_range(num_steps)[1]
        if not 1 <= k <= num_steps:
            raise ValueError(f"k_max must be between 1 and num_steps = {num_steps}, got {k}")
        return MemoryPieces(held={"step_inputs": Graph(checkpointed=k), "decode": DECODE, "reward": REWARD})

    def sample(
        self, chain: Chain, prompts: list[str], generator: torch.Generator, differentiable_reward: bool,
        reward: Any = None,
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
        return Rollout(chain, list(prompts), images, True, steps=steps, data=AlignPropData(k=k))

    def parts(self, rollout: Rollout, rewards: torch.Tensor, info: dict[str, float]) -> dict[str, torch.Tensor]:
        info["k"] = float(rollout.data.k)
        return {"fo": self.fo_part(rollout, rewards)}
