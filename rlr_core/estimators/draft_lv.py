"""draft-lv: DRaFT-LV, the last step's reward gradient averaged over re-noisings of the sample.

Paper: Clark, Vicol, Swersky, Fleet, "Directly Fine-Tuning Diffusion Models on Differentiable
Rewards" (arXiv 2309.17400, 2023), DRaFT-LV (low variance).

Per estimate: sample the chain without autograd to the final state x[T]. Then, ``n`` times,
re-noise x[T] to the noise level of the last step's input with the forward process
(``chain.renoise(x[T], T-1, generator)``: sqrt(a_t) x[T] + sqrt(1 - a_t) noise at the timestep
of step T-1), run the last step with autograd from that state, decode, score; the first-order
gradient is the mean of the n gradients of -mean(r).

Bias: biased. Only the last step's dependence on theta is differentiated (all earlier steps are
dropped), and the re-noised input is drawn from q(x_{T-1} | x[T]), not from the sampler's own
x[T-1]. Averaging over n re-noisings lowers the variance of that one-step gradient, not its bias.
Memory: one last-step graph + decode + reward at a time (O(1)); compute: T sampling steps plus
n last-step calls with backward.

How it fits the two phases: ``rollout.images`` are the B images of the *first* re-noising (the
ones that carry the graph, are shown and are scored by the caller); the other n - 1 re-noisings
are built, scored and backpropagated one at a time inside ``parts``, with the reward that
``estimate()`` passes to ``rollout`` (kept in ``DraftLVData.reward``). Through ``rollout()`` without the
reward + ``gradient()`` there is no reward to score the extra re-noisings: the estimate then uses
the scored one only (``info["renoisings"]`` says how many were averaged). Rows of an extra
re-noising whose reward is not finite contribute zero to it (``info["renoise_nonfinite"]``).
Needs a differentiable reward and a chain with ``renoise`` (``DiffusersChain``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..chain import Chain
from ..sampling import indexed_seed, run_steps, take_step
from .base import Estimator, Rollout, RolloutData, part_gradient
from .memory_pieces import MemoryPieces, first_order
from .options import EstimatorOptions, integer, normalize_option


@dataclass(frozen=True)
class DraftLVOptions(EstimatorOptions):
    n: int = integer(2, "re-noisings of the final state averaged per estimate", note=" (re-noisings of the final state)")
    normalize: bool = normalize_option(False)


@dataclass
class DraftLVData(RolloutData):
    x_final: torch.Tensor | None = None  # the sampled final state, re-noised by every re-noising
    seeds: list[int] | None = None  # per-row re-noising streams
    reward: Any = None  # scores re-noisings 2 .. n (None: only the scored one is used)


class DraftLVEstimator(Estimator):
    """Last step only, its first-order gradient averaged over ``n`` re-noisings of the final state."""

    name = "draft-lv"
    Options = DraftLVOptions
    ui_options = ("n",)
    requires_differentiable_reward = True

    def _check_setup(self, chain: Chain, differentiable_reward: bool, batch_size: int) -> None:
        if not callable(getattr(chain, "renoise", None)):
            raise ValueError(
                f"draft-lv needs a chain with renoise(x_final, k, generator) (forward diffusion of the sample to "
                f"step k's noise level); {type(chain).__name__} has none: use truncated-bp with k=1 instead"
            )
        super()._check_setup(chain, differentiable_reward, batch_size)

    def memory_pieces(self, num_steps: int, differentiable_reward: bool) -> MemoryPieces:
        return MemoryPieces(held={"fo": first_order()})  # one re-noising's last step at a time

    def sample(
        self, chain: Chain, prompts: list[str], generator: torch.Generator, differentiable_reward: bool,
        reward: Any = None,
    ) -> Rollout:
        T = chain.num_steps
        noise = self.draw_noise(chain, len(prompts), generator)
        seeds = self.noise_set_seeds(generator, len(prompts))  # per-row re-noising streams
        cond = chain.condition(list(prompts))
        with torch.no_grad():
            x_final = run_steps(chain, noise.x0, range(T), cond, noise)
        images = self.redenoise(chain, x_final, cond, seeds, 0)
        scorer = reward if getattr(reward, "differentiable", False) else None
        data = DraftLVData(cond=cond, x_final=x_final, seeds=seeds, reward=scorer)
        steps = {"fo": [T - 1]}
        if T > 1:
            steps["dropped"] = list(range(T - 1))
        return Rollout(chain, list(prompts), images, True, steps=steps, data=data)
    @staticmethod
    def redenoise(chain: Any, x_final: torch.Tensor, cond: Any, seeds: list[int], index: int) -> torch.Tensor:
        """Images of re-noising ``index``: x[T] re-noised to step T-1's input, that step run with autograd,
        decoded. Row i's noises come from (``seeds[i]``, ``index``) alone."""
        T = chain.num_steps
        inputs, step_noise = [], []
        for row, seed in enumerate(seeds):
            generator = torch.Generator().manual_seed(indexed_seed(seed, index))
            inputs.append(chain.renoise(x_final[row : row + 1].detach(), T - 1, generator))
            step_noise.append(torch.randn(x_final[row : row + 1].shape, generator=generator))
        x = torch.cat(inputs)
        eps = torch.cat(step_noise).to(device=x.device, dtype=x.dtype)  # used when final_eta > 0
        with torch.enable_grad():
            x_T, _, _ = take_step(chain, x, T - 1, cond, eps)
            return chain.decode(x_T)

    def parts(self, rollout: Rollout, rewards: torch.Tensor, info: dict[str, float]) -> dict[str, torch.Tensor]:
        chain, data = rollout.chain, rollout.data
        reward = data.reward
        count = self.options.n if reward is not None else 1
        total = self.fo_part(rollout, rewards)  # re-noising 0: the scored rollout images
        scale = self.reward_scale(rewards)
        prompts = [str(p) for p in rollout.prompts]
        nonfinite = 0
        for index in range(1, count):
            images = self.redenoise(chain, data.x_final, data.cond, data.seeds, index)
            values = reward(images, prompts)
            finite = torch.isfinite(values.detach())
            nonfinite += int((~finite).sum())
            values = torch.where(finite, values, torch.zeros_like(values))
            loss = -scale * values.sum() / self.batch_size(rewards)
            total = total + part_gradient(loss, chain.trainable_parameters())
        info["renoisings"] = float(count)
        info["renoise_nonfinite"] = float(sum(self.sum_numbers([float(nonfinite)])))
        return {"fo": total / count}
