"""ddpo: per-step likelihood ratio on every stochastic step, PPO-clipped (Black et al., DDPO).

At ratio 1 (the first gradient after sampling) the estimate is the plain REINFORCE sum
    grad E[r] ~= mean_i sum_k A_i grad log p_theta(x_i[k+1] | x_i[k]),
unbiased when advantages use a baseline independent of the sample (``normalize`` off). The
Trainer runs ``inner_epochs`` PPO epochs: later calls to ``gradient`` on the same rollout see
the updated theta and clip the ratio to [1 - clip_range, 1 + clip_range].
Deterministic steps (std 0, e.g. the last DDIM step with eta 0) have no likelihood ratio: they
are covered first-order when the reward is differentiable (first epoch only), otherwise
reported as "uncovered" (a small bias).
"""

from __future__ import annotations

import torch

from ..chain import Chain
from ..sampling import run_steps, take_step
from .base import Estimator, Rollout, check_positive


class DDPOEstimator(Estimator):
    """Likelihood ratio on all steps with PPO clipping and inner epochs."""

    name = "ddpo"
    ui_options = ("inner_epochs", "clip_range")

    def __init__(
        self,
        clip_range: float = 1e-4,
        normalize: bool = True,
        baseline: str = "loo",
        inner_epochs: int = 2,
    ) -> None:
        super().__init__(baseline=baseline, normalize=normalize)
        check_positive("clip_range", clip_range)
        if not isinstance(inner_epochs, int) or inner_epochs < 1:
            raise ValueError(f"inner_epochs must be an integer >= 1, got {inner_epochs!r}")
        self.clip_range = float(clip_range)
        self.inner_epochs = inner_epochs

    def sample(
        self, chain: Chain, prompts: list[str], generator: torch.Generator, differentiable_reward: bool
    ) -> Rollout:
        T = chain.num_steps
        noise = self.draw_noise(chain, len(prompts), generator)
        cond = chain.condition(list(prompts))
        record = {k: None for k in range(T)}
        with torch.no_grad():
            x = run_steps(chain, noise.x0, range(T - 1), cond, noise, record=record)
            last = run_steps(chain, x, [T - 1], cond, noise, record=record)
        lr_steps = [k for k in range(T) if record[k].log_prob is not None]
        deterministic = [k for k in range(T) if record[k].log_prob is None]
        steps = {"lr": lr_steps}
        fo_last = differentiable_reward and deterministic == [T - 1]
        if fo_last:
            with torch.enable_grad():
                x_T, _, _ = take_step(chain, record[T - 1].x, T - 1, cond, noise.eps[T - 1])
                images = chain.decode(x_T)
            steps["fo"] = [T - 1]
        else:
            with torch.no_grad():
                images = chain.decode(last)
            if deterministic:
                steps["uncovered"] = deterministic
        return Rollout(chain, list(prompts), images, differentiable_reward, steps, data={"cond": cond, "record": record})

    def parts(self, rollout: Rollout, rewards: torch.Tensor, info: dict[str, float]) -> dict[str, torch.Tensor]:
        """One PPO epoch's gradient; the first call on a rollout is the ratio-1 estimate."""
        parts: dict[str, torch.Tensor] = {}
        if "fo" in rollout.steps and rollout.uses == 0:
            parts["fo"] = self.fo_part(rollout, rewards)
        clip_stats: dict[str, float] = {}
        lr = self.ppo_part(rollout, rewards, self.clip_range, clip_stats)
        if lr is not None:
            parts["lr"] = lr
        clipped, ratios = self.sum_numbers([clip_stats.get("clipped", 0.0), clip_stats.get("ratios", 0.0)])
        info["clip_fraction"] = clipped / max(ratios, 1.0)
        return parts
