"""RLR: the Recursive Likelihood Ratio estimator (Ren et al., "Recursive Likelihood Ratio", ICLR 2026).

Every step's dependence on theta is estimated exactly once:

- the last step (k = T-1) first order (FO): backprop through the step, decode and reward;
  with a non-differentiable reward it is covered by the zeroth-order term instead (a
  direction shared by several steps carries the mean of their weights);
- one sub-chain of ``h`` steps starting at a random ``j`` half order (HO): from detached x[j]
  the sub-chain runs with autograd (inner noises fixed), and the likelihood ratio is taken at
  its exit step, so the score flows through ``h`` model calls;
- the remaining steps by ``remaining``: "zo" (parameter perturbation with antithetic +/- halves
  of the batch on common noise; ``zo_directions``: see ``rlr_segments.py``), "lr" (per-step
  likelihood ratio on ``lr_samples`` random steps scaled by |remaining| / lr_samples), or "none"
  (dropped: biased; the paper's ablation and what the released code does). With "none" and a non-differentiable reward the last step is dropped
  too (no FO term is possible there), so only the HO sub-chain carries the gradient.

The product's defaults (``rlr_options.py``): ``remaining="none"`` (one ZO estimate over 32k LoRA
parameters is ~130x the true gradient's norm with cosine ~0.01 to it, so the unbiased sum is almost pure
noise at the same cost); ``control_variate="auto"`` and ``ho_weight="auto"``: wherever the reward is
differentiable (and the chain has ``predict_final``) the HO term is replaced by its control variate's
expectation alone (``control_variate.py``), the pathwise gradient of r(decode(predict_final(m))) through
the h-step sub-chain at a random start j (slope 1), the likelihood-ratio residual dropped. That gives every
step of the chain a say at the memory of h steps; it is biased (the stand-in is a coarse guess and the
remaining steps are dropped). With clicks or another non-differentiable reward the plain HO
likelihood-ratio term runs instead. ``rlr-paper`` is the exactly unbiased preset (``remaining="zo"``,
plain HO, weights 1). ``part_weights="auto"``: MSE-aware part weights (``part_weights.py``).

Because each step is covered once whichever ``j`` is drawn, the sum is unbiased for any
distribution of ``j``: uniform over a window, or a softmax of earlier HO gradient norms.

``antithetic=True`` (default) pairs every trajectory with a twin that shares all noise but the HO exit
noise, which is negated. The twins have the same x[j] and the same score direction with opposite sign,
S(-eps) = -S(eps), so for any baseline b shared by the twins

    (r(eps) - b) S(eps) + (r(-eps) - b) S(-eps) = (r(eps) - r(-eps)) S(eps):

b cancels, each term is unbiased with b = 0, and the variance that x[0] and the other steps'
noise put into r cancels too (it is the same in both twins). With ZO halves the batch is then
split in four groups sharing noise: (+xi, eps), (+xi, -eps), (-xi, eps), (-xi, -eps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..chain import Chain, step_std_is_zero
from ..sampling import NoisePlan, RecordedStep, gaussian_log_prob, run_steps, step_log_prob, take_step
from .base import Estimator, Rollout, RolloutData, flatten, part_gradient, random_int
from .control_variate import ControlVariateSlope, stand_in_available, stand_in_direction
from .memory_pieces import Graph, MemoryPieces, first_order
from .part_weights import PartStatistics, weigh_parts
from .rlr_options import J_SAMPLING, PART_WEIGHTS, REMAINING, ZO_DIRECTIONS, RLROptions, check_window
from .rlr_segments import PerturbedSegments, part_steps, zo_part, zo_seed_table

__all__ = ["RLREstimator", "RLROptions", "RLRData", "PartStatistics", "REMAINING", "ZO_DIRECTIONS", "J_SAMPLING",
           "PART_WEIGHTS", "check_window"]  # the options' names re-exported for callers of this module


@dataclass
class RLRData(RolloutData):
    """What an rlr rollout keeps for its gradient."""

    j: int = 0  # the HO start
    groups: list[tuple[float, float]] | None = None  # (ZO sign, exit sign) of each noise group
    log_prob: torch.Tensor | None = None  # the HO exit's log-probability (with the sub-chain's graph)
    ho_replay: tuple | None = None  # (x[j], x_exit, cond, noise): rebuilds the HO graph if it was invalidated
    exit_mean: torch.Tensor | None = None  # the HO exit's mean (with graph: part "cv" backpropagates through it)
    cv_direction: torch.Tensor | None = None  # the control variate's a (None: no control variate this estimate)
    zo_seeds: list[dict[int, int]] | None = None  # zo_seeds[i][k]: direction of noise set i on step k
    conds: list | None = None  # condition of each ZO block
    records: list[dict[int, RecordedStep | None]] | None = None  # recorded LR steps of each ZO block
    num_remaining: int = 0  # steps outside the HO sub-chain and the last step


class RLREstimator(Estimator):
    """FO on the last step + HO on a random sub-chain + ZO / LR / nothing on the rest."""

    name = "rlr"
    Options = RLROptions
    ui_options = ("h", "remaining", "zo_scale", "window")  # the knobs a form shows (the rest: JSON)

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.cv_slope = ControlVariateSlope(self.options.statistics_decay)
        self.ho_grad_norms: dict[int, float] = {}  # start j -> running HO gradient norm
        self.part_statistics: dict[str, PartStatistics] = {}  # for part_weights="auto"

    @property
    def cv_statistics(self) -> dict[int, list[float]]:
        """start j -> EMA of [sum adv * c1, sum c1^2] (the control variate's slope)."""
        return self.cv_slope.statistics

    @cv_statistics.setter
    def cv_statistics(self, value: dict[int, list[float]]) -> None:
        self.cv_slope.statistics = value

    # --- setup ---------------------------------------------------------------------------------
    def has_zo(self, differentiable_reward: bool) -> bool:
        """True when some step is covered by parameter perturbation (+/- halves needed)."""
        remaining = self.options.remaining
        return remaining == "zo" or (not differentiable_reward and remaining != "none")

    def noise_groups(self, differentiable_reward: bool) -> int:
        return (2 if self.has_zo(differentiable_reward) else 1) * (2 if self.options.antithetic else 1)

    def uses_baseline(self) -> bool:
        # with antithetic twins the HO term needs no baseline; per-step LR terms still do
        return self.baseline != "none" and (self.options.remaining == "lr" or not self.options.antithetic)

    def start_window(self, num_steps: int) -> tuple[int, int]:
        """Allowed HO starts (inclusive): the sub-chain must end before the last (FO) step."""
        window, last_start = self.options.window, num_steps - 1 - self.options.h
        if window is None:
            return 0, last_start
        if all(isinstance(v, float) for v in window):  # fractions of the allowed starts
            a, b = (round(v * last_start) for v in window)
            return a, max(a, b)
        return window

    def _check_setup(self, chain: Chain, differentiable_reward: bool, batch_size: int) -> None:
        T, h = chain.num_steps, self.options.h
        if h > T - 1:
            raise ValueError(f"h must be between 1 and num_steps - 1 = {T - 1} (the last step is first order), got {h}")
        last_start = T - 1 - h
        window = self.start_window(T)
        if self.options.window is not None and not (0 <= window[0] <= window[1] <= last_start):
            raise ValueError(
                f"window must lie within [0, {last_start}] (HO starts j with j + h <= T - 1 for T={T}, "
                f"h={h}), got {list(self.options.window)}"
            )
        if self.options.control_variate is True and self.options.ho_weight == 0 and not differentiable_reward:
            raise ValueError(
                "ho_weight: 0 with control_variate needs a differentiable reward: without one (clicks, JPEG size) "
                "there is no control variate and the HO term would be zero; set ho_weight > 0"
            )
        super()._check_setup(chain, differentiable_reward, batch_size)

    def memory_pieces(self, num_steps: int, differentiable_reward: bool) -> MemoryPieces:
        """The HO sub-chain's graph waits for the reward while the FO step is built; with the control variate
        its stand-in's gradient (cv_jumps calls + decode + reward) is taken and freed before the FO graph."""
        T, h = num_steps, self.options.h
        if not 1 <= h <= T - 1:
            raise ValueError(f"h must be between 1 and num_steps - 1 = {T - 1}, got {h}")
        ho = Graph(calls=h, log_prob=True)
        if differentiable_reward and self.options.control_variate:  # True or "auto"
            jumps = max(1, min(self.options.cv_jumps, T - h))  # predict_final: at most one call per remaining step
            stand_in = Graph(calls=jumps, decode=True, reward=True)
            return MemoryPieces(held={"ho": ho}, in_turn={"fo": first_order(), "cv_stand_in": stand_in})
        return MemoryPieces(held={"ho": ho, "fo": first_order(differentiable_reward)})

    def effective_ho_weight(self, with_control_variate: bool) -> float:
        """The HO weight of this estimate: ``ho_weight``, or with "auto" 0 when the control variate runs
        (the residual dropped) and 1 when it does not (the plain likelihood-ratio term)."""
        if self.options.ho_weight == "auto":
            return 0.0 if with_control_variate else 1.0
        return float(self.options.ho_weight)

    def cv_beta(self, j: int, residual_kept: bool = True) -> float:
        """The control variate's slope for start j (:meth:`ControlVariateSlope.beta`)."""
        return self.cv_slope.beta(j, self.options.cv_scale, residual_kept)

    def _choose_start(self, num_steps: int, generator: torch.Generator) -> int:
        a, b = self.start_window(num_steps)
        candidates = list(range(a, b + 1))
        if self.options.j_sampling == "uniform" or not self.ho_grad_norms:
            return candidates[random_int(generator, len(candidates))]
        # softmax of earlier HO gradient norms; unseen starts get the largest seen norm (explore)
        largest = max(self.ho_grad_norms.values())
        logits = torch.tensor([self.ho_grad_norms.get(j, largest) for j in candidates], dtype=torch.float64)
        scale = logits.abs().max().clamp_min(1e-12)
        probs = torch.softmax(logits / scale / self.options.grad_norm_temperature, dim=0).float()
        index = torch.multinomial(probs.to(generator.device), 1, generator=generator).item()
        return candidates[int(index)]

    # --- phase 1: sample and keep what the gradient needs -------------------------------------
    def sample(
        self, chain: Chain, prompts: list[str], generator: torch.Generator, differentiable_reward: bool,
        reward: Any = None,
    ) -> Rollout:
        T, h, remaining = chain.num_steps, self.options.h, self.options.remaining
        with_cv = differentiable_reward and stand_in_available(self.options.control_variate, chain, reward)
        j = self._choose_start(T, generator)
        exit_step = j + h - 1
        others = [k for k in range(T - 1) if not j <= k <= exit_step]
        zo_steps = list(others) if remaining == "zo" else []
        lr_steps: list[int] = []
        if remaining == "lr" and others:
            order = torch.randperm(len(others), generator=generator, device=generator.device).tolist()
            lr_steps = sorted(others[i] for i in order[: min(self.options.lr_samples, len(others))])
        if not differentiable_reward and remaining != "none":
            zo_steps.append(T - 1)
        zo_signs = (1.0, -1.0) if self.has_zo(differentiable_reward) else (0.0,)
        exit_signs = (1.0, -1.0) if self.options.antithetic else (1.0,)
        groups = [(zo, ex) for zo in zo_signs for ex in exit_signs]
        n = len(prompts) // len(groups)
        noise = self.draw_noise(chain, n, generator)
        zo_seeds = zo_seed_table(self.options.zo_directions, n, zo_steps, generator, self.noise_set_seeds)  # zo_seeds[i][k]: direction of sample i, step k

        # Samples that differ only in their exit twin form one "block"; only the ZO sign (a
        # different theta) needs separate model calls.
        twins = len(exit_signs)
        block_noise = NoisePlan(
            x0=torch.cat([noise.x0] * twins),
            eps=[
                torch.cat([sign * e for sign in exit_signs]) if k == exit_step else torch.cat([e] * twins)
                for k, e in enumerate(noise.eps)
            ],
        )
        units = [[i + m * n for m in range(twins)] for i in range(n)]  # rows sharing noise set i
        blocks = len(zo_signs)
        size = twins * n
        conds = [chain.condition(list(prompts[b * size : (b + 1) * size])) for b in range(blocks)]
        segments = [
            PerturbedSegments(chain, list(prompts[b * size : (b + 1) * size]), conds[b], block_noise, units, zo_seeds,
                              zo_sign * self.options.zo_scale)
            for b, zo_sign in enumerate(zo_signs)
        ]
        keep = self.keep_states and blocks == 1  # Rollout.states: every step's input at theta, for the trainer's KL
        records = [{k: None for k in (range(T) if keep else lr_steps)} for _ in range(blocks)]
        # The HO sub-chain and the FO step run at the unperturbed theta: all blocks in one batch.
        whole_cond = conds[0] if blocks == 1 else chain.condition(list(prompts))
        whole_noise = NoisePlan(x0=torch.cat([block_noise.x0] * blocks), eps=[torch.cat([e] * blocks) for e in block_noise.eps])

        with torch.no_grad():
            x = torch.cat([seg.run(block_noise.x0, range(0, j), rec) for seg, rec in zip(segments, records)])
        x_start = x.detach()
        with torch.enable_grad():  # HO: reparameterized inside, likelihood ratio at the exit
            x_inner = run_steps(chain, x_start, range(j, exit_step), whole_cond, whole_noise,
                                record=records[0] if keep else None)
            exit_mean, exit_std = chain.step_mean_std(x_inner, exit_step, whole_cond)
            if step_std_is_zero(exit_std):
                raise ValueError(f"eta must be > 0 for rlr: step {exit_step} (the HO exit) is deterministic")
            x_exit = (exit_mean + exit_std * whole_noise.eps[exit_step]).detach()
            log_prob = gaussian_log_prob(x_exit, exit_mean, exit_std)
        cv_direction = None
        if with_cv:
            cv_direction = stand_in_direction(chain, reward, exit_mean.detach(), exit_step + 1, whole_cond, list(prompts),
                                              self.options.cv_jumps, self.require_reward_graph)
        with torch.no_grad():
            x = torch.cat([
                seg.run(x_block, range(exit_step + 1, T - 1), rec)
                for seg, rec, x_block in zip(segments, records, x_exit.split(size))
            ])
        if differentiable_reward:
            with torch.enable_grad():
                x_T, _, _ = take_step(chain, x.detach(), T - 1, whole_cond, whole_noise.eps[T - 1])
                images = chain.decode(x_T)
        else:  # the last step is a ZO step: per block
            with torch.no_grad():
                images = torch.cat([chain.decode(seg.run(x_block, [T - 1])) for seg, x_block in zip(segments, x.split(size))])

        states = None
        if keep:
            states = {k: step.x for k, step in records[0].items() if step is not None}
            states.update({exit_step: x_inner.detach(), T - 1: x.detach()})
        steps = part_steps(j, exit_step, T, differentiable_reward, zo_steps, lr_steps, others, remaining)
        kept = RLRData(
            j=j, groups=groups, log_prob=log_prob, ho_replay=(x_start, x_exit, whole_cond, whole_noise),
            exit_mean=exit_mean, cv_direction=cv_direction,
            zo_seeds=zo_seeds, conds=conds, records=records, num_remaining=len(others),
        )
        return Rollout(chain, list(prompts), images, differentiable_reward, steps, data=kept, states=states)

    # --- phase 2: rewards -> p.grad ------------------------------------------------------------
    def parts(self, rollout: Rollout, rewards: torch.Tensor, info: dict[str, float]) -> dict[str, torch.Tensor]:
        chain, data = rollout.chain, rollout.data
        params = chain.trainable_parameters()
        groups = data.groups
        scale = self.reward_scale(rewards)
        batch = self.batch_size(rewards)  # the whole batch: this process's rows are part of it
        n = rewards.shape[0] // len(groups)
        r = rewards.detach().double().view(len(groups), n)  # row g = group g
        parts: dict[str, torch.Tensor] = {}

        if rollout.differentiable_reward:
            parts["fo"] = self.fo_part(rollout, rewards, self.options.fo_weight)

        log_prob = data.log_prob
        if self.options.antithetic:  # twins are consecutive groups (same ZO sign, exit noise +/-)
            twin = torch.stack([r[g ^ 1] for g in range(len(groups))])
            ho_advantages = ((r - twin) / 2).reshape(-1)
        else:
            ho_advantages = self.advantages(rewards, rollout.prompts, len(groups))
        cv_direction = data.cv_direction
        if cv_direction is not None:  # residual advantage: minus beta * a . (x_exit - m)
            x_exit = data.ho_replay[1]
            unit_cv = (cv_direction * (x_exit - data.exit_mean.detach())).flatten(1).sum(1).double()
            beta = self.cv_beta(data.j, residual_kept=self.effective_ho_weight(True) > 0)
            info["cv_beta"] = beta
            self.cv_slope.remember(data.j, ho_advantages, unit_cv, self.shard)
            ho_advantages = ho_advantages - beta * unit_cv.to(ho_advantages)

        ho_weight = self.effective_ho_weight(cv_direction is not None)
        info["weight_ho_residual" if cv_direction is not None else "weight_ho"] = ho_weight

        def ho_gradient(log_prob: torch.Tensor, exit_mean: torch.Tensor) -> None:
            ho_loss = -ho_weight * scale * (ho_advantages.to(log_prob) * log_prob).sum() / batch
            if cv_direction is None:
                parts["ho"] = part_gradient(ho_loss, params)
                return
            if ho_weight == 0:  # the residual dropped: skip its backward
                parts["ho"] = flatten([None] * len(params), params)
            else:
                parts["ho"] = part_gradient(ho_loss, params, retain_graph=True)
            cv_loss = -self.options.cv_weight * scale * beta * (cv_direction.to(exit_mean) * exit_mean).sum() / batch
            parts["cv"] = part_gradient(cv_loss, params)

        try:
            ho_gradient(log_prob, data.exit_mean)
        except RuntimeError as error:
            if "inplace" not in str(error):
                raise
            # The chain's perturbed() changed theta in place after the HO graph was recorded
            # (our chains swap tensors instead). theta is restored exactly, so recomputing the
            # sub-chain from the stored x[j] gives the same log-probability with a valid graph.
            ho_gradient(*self._recompute_ho_log_prob(rollout))

        lr_steps = rollout.steps.get("lr", [])
        if lr_steps:
            advantages = self.advantages(rewards, rollout.prompts, len(groups))
            weight = self.options.remaining_weight * scale * data.num_remaining / len(lr_steps)
            parts["lr"] = self._lr_part(rollout, advantages, lr_steps, weight / batch)

        zo_steps = rollout.steps.get("zo", [])
        if zo_steps:
            # slope_i: antithetic difference quotient of noise set i (averaged over exit twins)
            plus = [g for g, (zo_sign, _) in enumerate(groups) if zo_sign > 0]
            minus = [g for g, (zo_sign, _) in enumerate(groups) if zo_sign < 0]
            slopes = (r[plus] - r[minus]).mean(0) / (2 * self.options.zo_scale)
            step_weights = {k: self.options.fo_weight if k == chain.num_steps - 1 else self.options.remaining_weight
                            for k in zo_steps}
            zo = zo_part(params, data.zo_seeds, zo_steps, step_weights, slopes, scale, batch // len(groups))
            parts["zo"] = zo.to(parts["ho"].device)
        return parts

    def combine(self, rollout: Rollout, parts: dict[str, torch.Tensor], info: dict[str, float]) -> dict[str, torch.Tensor]:
        """Remember the whole batch's HO norm (``j_sampling="grad-norm"``) and apply the part weights."""
        self._remember_ho_norm(rollout.data.j, float(parts["ho"].norm()))
        weights = {} if self.options.part_weights == "fixed" else weigh_parts(
            parts, self.part_statistics, self.options.statistics_decay)
        info.update({f"weight_{name}": w for name, w in weights.items()})
        return parts

    def _recompute_ho_log_prob(self, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        """The HO exit log-probability (and exit mean) rebuilt from the stored x[j], noises and exit sample."""
        chain, data = rollout.chain, rollout.data
        x_start, x_exit, cond, noise = data.ho_replay
        j, exit_step = data.j, data.j + self.options.h - 1
        with torch.enable_grad():
            x_inner = run_steps(chain, x_start, range(j, exit_step), cond, noise)
            exit_mean, exit_std = chain.step_mean_std(x_inner, exit_step, cond)
            return gaussian_log_prob(x_exit, exit_mean, exit_std), exit_mean

    def _lr_part(self, rollout: Rollout, advantages: torch.Tensor, lr_steps: list[int], weight: float) -> torch.Tensor:
        """Per-step likelihood-ratio terms on the sampled remaining steps, one backward each."""
        chain, data = rollout.chain, rollout.data
        params = chain.trainable_parameters()
        total = None
        n = advantages.shape[0] // len(data.conds)  # rows per block
        for index, (cond, record) in enumerate(zip(data.conds, data.records)):
            block_advantages = advantages[index * n : (index + 1) * n]
            for k in lr_steps:
                step = record[k]
                with torch.enable_grad():
                    log_prob = step_log_prob(chain, step.x, step.x_next, k, cond)
                    loss = -weight * (block_advantages.to(log_prob) * log_prob).sum()
                    grad = part_gradient(loss, params)
                total = grad if total is None else total + grad
        return total

    def _remember_ho_norm(self, j: int, norm: float) -> None:
        if math.isfinite(norm):
            previous = self.ho_grad_norms.get(j)
            self.ho_grad_norms[j] = norm if previous is None else 0.7 * previous + 0.3 * norm

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["ho_grad_norms"] = dict(self.ho_grad_norms)
        state["cv_statistics"] = self.cv_slope.state_dict()
        state["part_statistics"] = {name: s.state_dict() for name, s in self.part_statistics.items()}
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.ho_grad_norms = {int(k): float(v) for k, v in state.get("ho_grad_norms", {}).items()}
        self.cv_slope.load_state_dict(state.get("cv_statistics", {}))
        self.part_statistics = {}
        for name, saved in state.get("part_statistics", {}).items():
            self.part_statistics[name] = PartStatistics(self.options.statistics_decay)
            self.part_statistics[name].load_state_dict(saved)
