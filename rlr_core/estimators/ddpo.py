"""ddpo: per-step likelihood ratio on every stochastic step, PPO-clipped (Black et al., DDPO).

At ratio 1 (the first gradient after sampling) the estimate is the plain REINFORCE sum
    grad E[r] ~= mean_i sum_k A_i grad log p_theta(x_i[k+1] | x_i[k]),
unbiased when advantages use a baseline independent of the sample (``normalize`` off). The
Trainer runs ``inner_epochs`` PPO epochs: later calls to ``gradient`` on the same rollout see
the updated theta and clip the ratio to [1 - clip_range, 1 + clip_range].
Deterministic steps (std 0, e.g. the last DDIM step with eta 0) have no likelihood ratio: they
are covered first-order when the reward is differentiable (first epoch only), otherwise
reported as "uncovered" (a small bias).

``advantages="group"`` (as Flow-GRPO / DanceGRPO) replaces the baseline and the batch
normalisation of the likelihood-ratio terms with per-prompt standardisation: sample i's
advantage is (r_i - mean_g) / (std_g + 1e-4) over the rows of the (whole) batch with i's prompt g
(population std, as Flow-GRPO). ``baseline`` and ``normalize`` then do not apply; the first-order
last step (when present) weights row i's reward gradient by 1 / (std_g + 1e-4) to match. It needs
each prompt several times in a batch (the Trainer cycles through the prompts: use fewer prompts
than batch_size); a prompt seen once gets advantage 0. The group mean includes the sample's own
reward (it scales that prompt's term by 1 - 1/|g|) and std_g is computed from the same rewards
(a bias, GRPO's known one); "batch" (the default) keeps the leave-one-out baseline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..chain import Chain
from ..sampling import run_steps, take_step
from .base import Estimator, Rollout, RolloutData, part_gradient
from .memory_pieces import Graph, MemoryPieces, first_order
from .options import EstimatorOptions, baseline_option, choice, integer, normalize_option, number

ADVANTAGES = ("batch", "group")
GROUP_STD_EPS = 1e-4


@dataclass(frozen=True)
class DDPOOptions(EstimatorOptions):
    clip_range: float = number(1e-4, "PPO clip range c: later epochs clip the per-dimension ratio to [1 - c, 1 + c]")
    normalize: bool = normalize_option(True)
    baseline: str = baseline_option()
    inner_epochs: int = integer(2, "PPO epochs (gradients) per sampled batch")
    advantages: str = choice("batch", "batch: the baseline's advantages over the whole batch; group: per-prompt "
                                      "standardised rewards (Flow-GRPO / DanceGRPO)", ADVANTAGES)


class DDPOEstimator(Estimator):
    """Likelihood ratio on all steps with PPO clipping and inner epochs."""

    name = "ddpo"
    Options = DDPOOptions
    ui_options = ("inner_epochs", "clip_range")

    @property
    def advantage_mode(self) -> str:
        """``advantages``: "batch" or "group" (the option's name is taken by the method below)."""
        return self.options.advantages

    def memory_pieces(self, num_steps: int, differentiable_reward: bool) -> MemoryPieces:
        """One likelihood-ratio step per backward, in turn with the first-order last step."""
        return MemoryPieces(in_turn={"fo": first_order(differentiable_reward),
                                     "per_step": Graph(calls=1, log_prob=True)})

    def uses_baseline(self) -> bool:
        return self.advantage_mode == "batch" and super().uses_baseline()

    def reward_scale(self, rewards: torch.Tensor) -> float:
        """As the base class; 1 with group advantages (they are standardised per prompt already)."""
        return 1.0 if self.advantage_mode == "group" else super().reward_scale(rewards)

    def advantages(self, rewards: torch.Tensor, prompts: list[str], noise_groups: int = 1) -> torch.Tensor:
        """The base class's r - b ("batch"), or (r - mean_g) / (std_g + 1e-4) per prompt group ("group")."""
        if self.advantage_mode == "batch":
            return super().advantages(rewards, prompts, noise_groups)
        centred, inverse_std = self.group_statistics(rewards, prompts)
        return centred * inverse_std

    def group_statistics(self, rewards: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(r_i - mean_g, 1 / (std_g + 1e-4)) for this process's rows, the groups taken over the whole batch."""
        every = self.batch_rewards(rewards).double()
        texts = [str(p) for p in prompts]
        every_prompt = self.shard.gather_objects(texts) if self.shard else texts
        centred = torch.zeros_like(every)
        inverse_std = torch.zeros_like(every)
        for prompt in dict.fromkeys(every_prompt):
            rows = torch.tensor([i for i, p in enumerate(every_prompt) if p == prompt], device=every.device)
            group = every[rows]
            centred[rows] = group - group.mean()
            inverse_std[rows] = 1.0 / (group.std(unbiased=False) + GROUP_STD_EPS)
        if self.shard is None:
            return centred, inverse_std
        local = torch.tensor(self.shard.global_rows(), device=every.device)
        return centred[local], inverse_std[local]

    def sample(
        self, chain: Chain, prompts: list[str], generator: torch.Generator, differentiable_reward: bool,
        reward: Any = None,
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
        return Rollout(chain, list(prompts), images, differentiable_reward, steps, data=RolloutData(cond=cond, record=record))

    def parts(self, rollout: Rollout, rewards: torch.Tensor, info: dict[str, float]) -> dict[str, torch.Tensor]:
        """One PPO epoch's gradient; the first call on a rollout is the ratio-1 estimate."""
        parts: dict[str, torch.Tensor] = {}
        if "fo" in rollout.steps and rollout.uses == 0:
            if self.advantage_mode == "group":  # row i's reward scaled by 1 / (std_g + 1e-4), like its advantage
                _, inverse_std = self.group_statistics(rewards, rollout.prompts)
                loss = -(rewards * inverse_std.to(rewards)).sum() / self.batch_size(rewards)
                parts["fo"] = part_gradient(loss, rollout.chain.trainable_parameters())
            else:
                parts["fo"] = self.fo_part(rollout, rewards)
        clip_stats: dict[str, float] = {}
        lr = self.ppo_part(rollout, rewards, self.options.clip_range, clip_stats)
        if lr is not None:
            parts["lr"] = lr
        clipped, ratios = self.sum_numbers([clip_stats.get("clipped", 0.0), clip_stats.get("ratios", 0.0)])
        info["clip_fraction"] = clipped / max(ratios, 1.0)
        return parts
