"""What every gradient estimator shares: options, baselines, bookkeeping, writing p.grad (docs/estimators.md).

Sign convention: an estimator sets ``p.grad`` to an estimate of the gradient of ``-E[r]``
(ready for a torch optimizer that minimises), and every entry of ``GradientEstimate.parts``
uses the same sign. ``sum(parts.values())`` equals the flattened ``p.grad``.

Each estimator works in two phases: ``rollout(chain, prompts, generator, differentiable_reward)``
samples the batch and keeps only what its gradient needs, ``gradient(rollout, rewards)`` turns
rewards into ``p.grad``. ``estimate()`` is the two with the reward called in between (and passes the
reward object to ``rollout``, for estimators that score more than the batch: rlr's control variate,
draft-lv's re-noisings); a human preference round calls them separately with the clicks as rewards.

Options: each estimator declares a dataclass of its options (``Options``, see ``options.py``);
``estimator.options`` holds the checked values, also readable as attributes (``estimator.h``).

Randomness: everything shared by the batch (the HO start j, sampled steps, a per-batch ZO
direction) is drawn from the generator passed in; the noise of noise set i (and its own ZO
direction) comes from a generator of its own, seeded from one draw of that generator and i
(``noise_set_seeds``). Under data parallelism (``shard`` set by the Trainer) i is the set's
index in the *global* batch and every mean, baseline and normalisation is over the global
batch, so each process's ``parts`` are its rows' contributions to the whole batch's estimate;
``gradient`` sums them over the processes before writing ``p.grad``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from ..chain import Chain
from ..distributed import BatchShard, sum_over_processes
from ..memory.meter import MemoryMeter
from ..sampling import NoisePlan, draw_noise_per_seed, indexed_seed
from .baselines import PromptBaseline
from .gradients import flatten, grouped_prompts, part_gradient, random_int, write_grads
from .memory_pieces import MemoryPieces
from .options import BASELINES, EstimatorOptions, baseline_option, choices_of, normalize_option
from .ppo import ppo_step_gradient
from .rollout import GradientEstimate, Rollout, RolloutData

__all__ = [
    "BASELINES", "Estimator", "EstimatorOptions", "GradientEstimate", "PromptBaseline", "Rollout", "RolloutData",
    "flatten", "grouped_prompts", "part_gradient", "ppo_step_gradient", "random_int", "write_grads",
]


@dataclass(frozen=True)
class BaseOptions(EstimatorOptions):
    """The options every likelihood-ratio estimator takes."""

    baseline: str = baseline_option()
    normalize: bool = normalize_option(False)


class Estimator:
    """Base class: options, baselines, timing, memory and writing p.grad.

    Subclasses declare ``Options`` (a dataclass of :mod:`options`), implement ``sample`` and ``parts``,
    declare ``memory_pieces``, and may override ``noise_groups``.
    """

    name: str = "base"
    Options: type[EstimatorOptions] = BaseOptions
    requires_differentiable_reward: bool = False
    ui_options: tuple[str, ...] = ()  # options a form shows as their own fields (the others go in JSON)
    option_choices: dict[str, tuple] = {}  # allowed values of string options, for dropdowns (from Options)
    shard: BatchShard | None = None  # this process's rows of the global batch (data parallelism); None = all
    keep_states: bool = False  # set by the Trainer when its KL reads Rollout.states (estimators that can fill it)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.option_choices = choices_of(cls.Options)

    def __init__(self, **options: Any) -> None:
        self.options = self.Options(**options)  # checks every value (ValueError naming the option)
        self.prompt_baseline = PromptBaseline()

    def __getattr__(self, name: str) -> Any:
        """Options read as attributes (``estimator.h``), for callers outside the estimator."""
        options = self.__dict__.get("options")
        if options is not None and name in options.__dataclass_fields__:
            return getattr(options, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def baseline(self) -> str:
        """The advantages' baseline ("none" for estimators without likelihood-ratio terms)."""
        return getattr(self.options, "baseline", "none")

    @property
    def normalize(self) -> bool:
        return bool(getattr(self.options, "normalize", False))

    @property
    def inner_epochs(self) -> int:
        """PPO epochs per rollout (1 unless the estimator has the option)."""
        return int(getattr(self.options, "inner_epochs", 1))

    def memory_pieces(self, num_steps: int, differentiable_reward: bool) -> MemoryPieces:
        """Subclasses: the graphs one estimate keeps at its peak on a chain of ``num_steps`` steps
        (ValueError when an option does not fit that chain); read by ``rlr_core.memory.prediction``."""
        raise NotImplementedError(f"{type(self).__name__} declares no memory pieces")

    # --- what the Trainer needs to know -----------------------------------------------------
    def noise_groups(self, differentiable_reward: bool) -> int:
        """How many groups the batch is split into, samples i, i + n, i + 2n, ... sharing noise.

        1: independent samples. 2: antithetic +/- halves (ZO). 4: +/- ZO halves times
        +/- antithetic exit noise (RLR). The batch size must be a multiple of it; the Trainer
        repeats the same n prompts in every group.
        """
        return 1

    def needs_pairs(self, differentiable_reward: bool) -> bool:
        """True when samples of the batch share noise (see ``noise_groups``)."""
        return self.noise_groups(differentiable_reward) > 1

    def check(self, chain: Chain, reward: Any, batch_size: int) -> None:
        """Raise ValueError if this estimator cannot run on ``chain`` / ``reward`` / ``batch_size``."""
        differentiable = bool(getattr(reward, "differentiable", False))
        self._check_setup(chain, differentiable, batch_size)

    def _check_setup(self, chain: Chain, differentiable_reward: bool, batch_size: int) -> None:
        if self.requires_differentiable_reward and not differentiable_reward:
            raise ValueError(
                f"estimator {self.name!r} needs a differentiable reward (it backpropagates through it); "
                "use rlr, ddpo or zo with this reward"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        groups = self.noise_groups(differentiable_reward)
        if batch_size % groups:
            raise ValueError(
                f"batch_size must be a multiple of {groups} for {self.name!r} here (the batch is split in "
                f"{groups} groups sharing noise), got {batch_size}"
            )
        minimum = 2 * groups if (self.baseline == "loo" and self.uses_baseline()) else groups
        if batch_size < minimum:
            raise ValueError(
                f"batch_size must be >= {minimum} for {self.name!r} with baseline={self.baseline!r} "
                f"(leave-one-out needs samples that share no noise with the one it scores), got {batch_size}"
            )

    def set_shard(self, shard: BatchShard | None) -> None:
        """Estimate from this process's rows of a global batch (``Trainer`` under data parallelism).

        ``estimate`` then takes this process's prompts (``shard.select`` of the batch), and the
        gradient written to ``p.grad`` is that of the whole global batch, the same on every process.
        """
        self.shard = shard if shard is not None and shard.world_size > 1 else None

    def uses_baseline(self) -> bool:
        """Whether the advantages use ``baseline`` (the leave-one-out minimum batch applies)."""
        return self.baseline != "none"

    def check_rollout(self, chain: Chain, prompts: list[Any], differentiable_reward: bool) -> None:
        """The checks every ``rollout`` starts with: set-up (chain, reward, batch size) and prompt groups."""
        self._check_setup(chain, differentiable_reward, self.shard.global_size if self.shard else len(prompts))
        self.check_prompt_groups(prompts, differentiable_reward)

    def check_prompt_groups(self, prompts: list[Any], differentiable_reward: bool) -> None:
        """ValueError unless rows that share noise (i, i + n, i + 2n, ...) share their prompt.

        Antithetic twins and ZO +/- pairs estimate a difference of rewards under the same noise;
        with different prompts in a pair that difference also carries the prompt's effect (bias).
        """
        groups = self.noise_groups(differentiable_reward)
        if groups <= 1:
            return
        n = len(prompts) // groups
        for i in range(n):
            row = [str(prompts[i + g * n]) for g in range(groups)]
            if any(p != row[0] for p in row):
                raise ValueError(
                    f"prompts: rows that share noise must share their prompt for {self.name!r} (the batch is "
                    f"{groups} groups of {n}; rows {[i + g * n for g in range(groups)]} have prompts {row}); "
                    f"build the batch with grouped_prompts(prompts, batch_size, {groups})"
                )

    def check_reward_graph(self, rollout: "Rollout", rewards: torch.Tensor) -> None:
        """ValueError when a reward declared differentiable returned values without a graph."""
        if rollout.differentiable_reward:
            self.require_reward_graph(rewards)

    def require_reward_graph(self, rewards: torch.Tensor) -> None:
        """ValueError unless ``rewards`` carry an autograd graph (the estimator backpropagates through them)."""
        if not rewards.requires_grad:
            raise ValueError(
                f"reward: declared differentiable but its values carry no autograd graph to the images "
                f"({self.name!r} backpropagates through it); compute it from rollout.images with grad "
                f"enabled, or declare the reward differentiable = False"
            )

    # --- the two phases ----------------------------------------------------------------------
    def rollout(
        self, chain: Chain, prompts: list[Any], generator: torch.Generator, differentiable_reward: bool,
        reward: Any = None,
    ) -> Rollout:
        """Check the set-up once, then sample the batch (``sample``) and time it. ``reward``: the reward
        object when the caller has it (``estimate`` passes it), for estimators that score more than the
        batch's images; without it they do without (see each estimator)."""
        start = time.perf_counter()
        prompts = list(prompts)
        self.check_rollout(chain, prompts, differentiable_reward)
        result = self.sample(chain, prompts, generator, differentiable_reward, reward)
        result.seconds = time.perf_counter() - start
        return result

    def gradient(self, rollout: Rollout, rewards: torch.Tensor) -> GradientEstimate:
        """Rewards of the rollout's images -> ``p.grad``: the non-finite skip, the reward-graph
        check of a first-order part, the subclass's ``parts``, then ``finish``."""
        start = time.perf_counter()
        skipped = self.skipped_if_not_finite(rollout, rewards)
        if skipped is not None:
            return skipped
        if "fo" in rollout.steps and rollout.uses == 0:  # later PPO epochs reuse it without the FO part
            self.check_reward_graph(rollout, rewards)
        info: dict[str, float] = {}
        parts = self.parts(rollout, rewards, info)
        if self.shard is not None:  # every process's rows' contributions -> the whole batch's estimate
            parts = {name: sum_over_processes(value) for name, value in parts.items()}
        parts = self.combine(rollout, parts, info)
        result = self.finish(rollout, rewards, parts, first_use=rollout.uses == 0)
        rollout.uses += 1
        result.info.update(info)
        result.seconds = rollout.seconds + (time.perf_counter() - start)
        return result

    def sample(
        self, chain: Chain, prompts: list[Any], generator: torch.Generator, differentiable_reward: bool,
        reward: Any = None,
    ) -> Rollout:
        """Subclasses: sample the batch and keep what ``parts`` needs (checks are done; ``reward``: see
        ``rollout``)."""
        raise NotImplementedError

    def parts(self, rollout: Rollout, rewards: torch.Tensor, info: dict[str, float]) -> dict[str, torch.Tensor]:
        """Subclasses: the flat gradient of -E[r] per part (rewards are finite); may fill ``info``."""
        raise NotImplementedError

    def combine(self, rollout: Rollout, parts: dict[str, torch.Tensor], info: dict[str, float]) -> dict[str, torch.Tensor]:
        """Subclasses: post-process the whole batch's parts (summed over processes) and update
        statistics kept across iterations (the same on every process); the base keeps them."""
        return parts

    def estimate(
        self, chain: Chain, reward: Any, prompts: list[str], generator: torch.Generator
    ) -> GradientEstimate:
        """Sample, score with ``reward``, and write the gradient estimate of -E[r] into p.grad."""
        prompts = list(prompts)
        device = chain.trainable_parameters()[0].device
        start = time.perf_counter()
        with MemoryMeter(device) as meter:
            rollout = self.rollout(chain, prompts, generator, bool(getattr(reward, "differentiable", False)), reward)
            rewards = reward(rollout.images, [str(p) for p in prompts])
            result = self.gradient(rollout, rewards)
        result.seconds = time.perf_counter() - start
        result.peak_memory_mb = meter.peak_memory_mb
        result.graph_memory_mb = meter.graph_memory_mb
        return result

    def state_dict(self) -> dict[str, Any]:
        """State carried across iterations (baselines), for checkpoints."""
        return {"prompt_baseline": self.prompt_baseline.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.prompt_baseline.load_state_dict(state.get("prompt_baseline", {}))

    # --- helpers for subclasses ------------------------------------------------------------
    def noise_set_seeds(self, generator: torch.Generator, count: int) -> list[int]:
        """One seed per local noise set: from one draw of ``generator`` and the set's global index.

        Every process draws the same value from its (identically seeded) generator, so noise set
        i gets the same seed whichever process samples it.
        """
        base = random_int(generator, 2**62)
        start = self.shard.start if self.shard else 0
        return [indexed_seed(base, start + i) for i in range(count)]

    def draw_noise(self, chain: Chain, count: int, generator: torch.Generator) -> NoisePlan:
        """x[0] and the step noises of ``count`` noise sets, each set from its own seeded generator."""
        return draw_noise_per_seed(chain, self.noise_set_seeds(generator, count))

    def batch_size(self, rewards: torch.Tensor) -> int:
        """Rows of the whole batch (all processes): what means over the batch divide by."""
        return self.shard.global_size if self.shard else int(rewards.shape[0])

    def batch_rewards(self, rewards: torch.Tensor) -> torch.Tensor:
        """The detached rewards of the whole batch (gathered from every process under data parallelism)."""
        return self.shard.gather(rewards) if self.shard else rewards.detach()

    def sum_numbers(self, values: list[float]) -> list[float]:
        """``values`` summed over the processes (counts, e.g. PPO clip statistics)."""
        if self.shard is None:
            return list(values)
        return sum_over_processes(torch.tensor(values, dtype=torch.float64)).tolist()

    def advantages(self, rewards: torch.Tensor, prompts: list[str], noise_groups: int = 1) -> torch.Tensor:
        """r - b per sample, with b independent of the sample's own noise (keeps the sum unbiased).

        Samples i, i + n, i + 2n, ... (n = B / noise_groups) share noise, so the leave-one-out
        baseline of sample i leaves all of them out.
        """
        if self.baseline == "none":
            return rewards.detach().double()
        every = self.batch_rewards(rewards).double()  # leave-one-out over the whole batch
        rows = torch.tensor(self.shard.global_rows(), device=every.device) if self.shard else torch.arange(every.shape[0], device=every.device)
        r = every[rows]
        batch = every.shape[0]
        n = batch // noise_groups
        group_sums = every.view(noise_groups, n).sum(0).repeat(noise_groups)[rows]  # sum over i's noise set
        others = batch - noise_groups
        loo = (every.sum() - group_sums) / others if others > 0 else torch.zeros_like(r)
        if self.baseline == "loo":
            return r - loo
        # "prompt": running mean from earlier iterations, leave-one-out for unseen prompts
        previous = [self.prompt_baseline.value(p) for p in prompts]
        b = torch.tensor([loo[i].item() if v is None else v for i, v in enumerate(previous)], dtype=r.dtype)
        return r - b.to(r.device)

    def fo_part(self, rollout: Rollout, rewards: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
        """First-order part: backprop of -weight * mean(r) (times ``reward_scale``) through the graph
        the rollout kept (reward, decode and the reparameterized steps)."""
        loss = -weight * self.reward_scale(rewards) * rewards.sum() / self.batch_size(rewards)
        return part_gradient(loss, rollout.chain.trainable_parameters())

    def ppo_part(
        self, rollout: Rollout, rewards: torch.Tensor, clip_range: float, stats: dict[str, float] | None = None
    ) -> torch.Tensor | None:
        """Sum over the rollout's recorded "lr" steps of the PPO-clipped likelihood-ratio gradients
        (advantages from this estimator's baseline; None when no step is recorded)."""
        chain, data = rollout.chain, rollout.data
        advantages = self.advantages(rewards, rollout.prompts)
        weight = self.reward_scale(rewards) / self.batch_size(rewards)
        total = None
        for k in rollout.steps.get("lr", []):
            grad = ppo_step_gradient(chain, data.cond, k, data.record[k], advantages, clip_range, weight, stats)
            total = grad if total is None else total + grad
        return total

    def reward_scale(self, rewards: torch.Tensor) -> float:
        """1 / batch std when ``normalize`` is on (rescales the whole gradient), else 1."""
        every = self.batch_rewards(rewards) if self.normalize else rewards
        if not self.normalize or every.numel() < 2:
            return 1.0
        return 1.0 / (float(every.double().std()) + 1e-8)

    def skipped_if_not_finite(self, rollout: Rollout, rewards: torch.Tensor) -> GradientEstimate | None:
        """A zero-gradient, ``skipped`` result when some reward is NaN or infinite, else None."""
        finite = torch.isfinite(self.batch_rewards(rewards))  # one decision for every process
        if bool(finite.all()):
            return None
        bad = [i for i, ok in enumerate(finite.tolist()) if not ok]
        params = rollout.chain.trainable_parameters()
        write_grads(params, torch.zeros(sum(p.numel() for p in params)))
        return GradientEstimate(
            rewards=rewards.detach().float().cpu(),
            images=rollout.display_images(),
            prompts=[str(p) for p in rollout.prompts],
            parts={},
            grad_norms={"total": 0.0},
            steps=rollout.steps,
            skipped=f"non-finite rewards at batch indices {bad}: update skipped, LoRA kept",
            rollout=rollout,
        )

    def finish(
        self, rollout: Rollout, rewards: torch.Tensor, parts: dict[str, torch.Tensor], first_use: bool = True
    ) -> GradientEstimate:
        """Write the sum of ``parts`` into p.grad and package the result.

        ``first_use=False`` (later PPO epochs on the same rollout) keeps the per-prompt
        baseline from counting the same rewards twice.
        """
        params = rollout.chain.trainable_parameters()
        total = sum(parts.values()) if parts else torch.zeros(sum(p.numel() for p in params))
        write_grads(params, total)
        covered = [k for name, ks in rollout.steps.items() if name not in ("dropped", "uncovered") for k in ks]
        norms = {name: float(v.norm()) for name, v in parts.items()}
        norms["total"] = float(total.norm())
        if self.baseline == "prompt" and first_use:  # the whole batch's rows, in order, on every process
            prompts = self.shard.gather_objects([str(p) for p in rollout.prompts]) if self.shard else rollout.prompts
            self.prompt_baseline.update([str(p) for p in prompts], self.batch_rewards(rewards).cpu())
        return GradientEstimate(
            rewards=rewards.detach().float().cpu(),
            images=rollout.display_images(),
            prompts=[str(p) for p in rollout.prompts],
            parts=parts,
            grad_norms=norms,
            steps=rollout.steps,
            seconds=rollout.seconds,
            skipped=None if (parts and covered) else "no chain step is covered by this estimate (e.g. ddpo with eta 0): update skipped, LoRA kept",
            rollout=rollout,
        )
