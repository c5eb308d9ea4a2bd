"""RLR: the Recursive Likelihood Ratio estimator (SPEC-RLR.md §3).

Every step's dependence on theta is estimated exactly once:

- the last step (k = T-1) first order (FO): backprop through the step, decode and reward;
  with a non-differentiable reward it is covered by the zeroth-order term instead (a
  direction shared by several steps carries the mean of their weights);
- one sub-chain of ``h`` steps starting at a random ``j`` half order (HO): from detached x[j]
  the sub-chain runs with autograd (inner noises fixed), and the likelihood ratio is taken at
  its exit step, so the score flows through ``h`` model calls;
- the remaining steps by ``remaining``: "zo" (parameter perturbation with antithetic +/- halves
  of the batch on common noise; ``zo_directions``: "per-sample" gives every noise set of the
  batch its own direction xi_i, used on all its ZO steps; "per-batch" one xi for the whole
  batch (fewest model calls); "per-step" one xi[k] per step as the paper writes it. All are
  unbiased; one direction per sample averages B/4 independent directions, and a direction
  shared across steps avoids the cross terms sum_{k != k'} (g_k' . xi_k') xi_k that per-step
  directions add), "lr" (per-step likelihood ratio on ``lr_samples`` random steps scaled by
  |remaining| / lr_samples), or "none" (dropped: biased; the paper's ablation and what the
  released code does). With "none" and a non-differentiable reward the last step is dropped
  too (no FO term is possible there), so only the HO sub-chain carries the gradient.

The product's default (since 2026-12-04, chosen on the task suite of benchmarks/compare.py; the
numbers are in benchmarks/results/compare-suite/):

- ``remaining="none"``: one ZO estimate over 32k LoRA parameters is ~130x the true gradient's norm
  with cosine ~0.01 to it, so the unbiased sum is almost pure noise at the same cost;
- ``control_variate="auto"`` and ``ho_weight="auto"``: wherever the reward is differentiable (and the
  chain has ``predict_final``) the HO term is replaced by its control variate's expectation alone, the
  pathwise gradient of r(decode(predict_final(m))) through the h-step sub-chain at a random start j
  (slope 1), the likelihood-ratio residual dropped. That is what gives every step of the chain a say
  (where a shape sits and which shape it is are decided early) at the memory of h steps; it is biased
  (the stand-in is a coarse guess and the remaining steps are dropped). With clicks or another
  non-differentiable reward the plain HO likelihood-ratio term runs instead;
- FO on the last step at weight 1; j uniform over the first 40% of the allowed starts (``window=(0.0, 0.4)``),
  where composition is decided.

``rlr-paper`` is the exactly unbiased preset (``remaining="zo"``, plain HO, weights 1).

``part_weights="auto"`` [decision] multiplies each part g_p by an MSE-aware weight
w_p = S_p / (S_p + V_p), S_p = |E g_p|^2 and V_p = E|g_p - E g_p|^2 estimated from an exponential
moving average (decay ``statistics_decay``) of the earlier estimates of that part (never the
current one, so w_p is independent of its noise). That adds the bias -(1 - w_p) E g_p per part
and cuts its variance by w_p^2; until 3 estimates of a part are seen its weight is 1.

[decision] ``control_variate=True`` subtracts from the HO exit's likelihood-ratio term a control
variate built from a cheap stand-in for the rest of the chain. At the exit mean m (before the exit
noise) the chain's ``predict_final`` guesses x[T] in ``cv_jumps`` deterministic model calls; the
reward's gradient there, a = d r(decode(predict_final(m))) / dm, is detached and does not depend
on the exit noise eps. With c = beta a . (x_exit - m) = beta a . s eps,

    (r - b) S(eps) = (r - b - c) S(eps)  +  c S(eps),   E[c S(eps)] = beta d(a . m_theta)/d theta,

so the HO part becomes the residual (advantage minus c, times the score: part "ho") plus the exact
expectation of the control variate (a pathwise gradient through the sub-chain: part "cv"). The sum
is unbiased for any beta that is independent of eps; beta is the least-squares slope of the
advantage on a . s eps from earlier iterations (per start j, decay ``statistics_decay``; pooled over
the starts for an unseen j, 1 before any statistics; 1 when the residual is dropped) or the number
``cv_scale``. The residual's variance is the plain term's times
about 1 - rho^2, rho the correlation of the advantage with a . s eps (README: measured on the tiny
model). ``cv_weight`` scales part "cv" like the other part weights. It needs a differentiable
reward and a chain with ``predict_final``; ``estimate()`` passes the reward in (the two-phase
path without it runs the plain HO term).

Because each step is covered once whichever ``j`` is drawn, the sum is unbiased for any
distribution of ``j``: uniform over a window, or a softmax of earlier HO gradient norms.

[decision] ``antithetic=True`` (default) pairs every trajectory with a twin that shares all
noise but the HO exit noise, which is negated. The twins have the same x[j] and the same score
direction with opposite sign, S(-eps) = -S(eps), so for any baseline b shared by the twins

    (r(eps) - b) S(eps) + (r(-eps) - b) S(-eps) = (r(eps) - r(-eps)) S(eps):

b cancels, each term is unbiased with b = 0, and the variance that x[0] and the other steps'
noise put into r cancels too (it is the same in both twins). With ZO halves the batch is then
split in four groups sharing noise: (+xi, eps), (+xi, -eps), (-xi, eps), (-xi, -eps).
"""

from __future__ import annotations

import math

import torch

from ..chain import Chain, perturbation_direction, step_std_is_zero
from ..sampling import NoisePlan, RecordedStep, gaussian_log_prob, run_steps, step_log_prob, take_step
from ..distributed import sum_over_processes
from .base import (
    Estimator,
    Rollout,
    check_choice,
    check_positive,
    flatten,
    part_gradient,
    random_int,
)

REMAINING = ("zo", "lr", "none")
ZO_DIRECTIONS = ("per-sample", "per-batch", "per-step")
J_SAMPLING = ("uniform", "grad-norm")
PART_WEIGHTS = ("fixed", "auto")


class RLREstimator(Estimator):
    """FO on the last step + HO on a random sub-chain + ZO / LR / nothing on the rest."""

    name = "rlr"
    ui_options = ("h", "remaining", "zo_scale", "window")  # the knobs a form shows (the rest: JSON)
    option_choices = {"remaining": REMAINING}

    def __init__(
        self,
        h: int = 2,
        remaining: str = "none",
        zo_scale: float = 1e-2,
        zo_directions: str = "per-sample",
        lr_samples: int = 2,
        window: tuple | list | None = (0.0, 0.4),
        j_sampling: str = "uniform",
        grad_norm_temperature: float = 1.0,
        baseline: str = "loo",
        normalize: bool = False,
        fo_weight: float = 1.0,
        ho_weight: float | str = "auto",
        remaining_weight: float = 1.0,
        antithetic: bool = True,
        part_weights: str = "fixed",
        statistics_decay: float = 0.9,
        control_variate: bool | str = "auto",
        cv_jumps: int = 3,
        cv_scale: str | float = "auto",
        cv_weight: float = 1.0,
    ) -> None:
        super().__init__(baseline=baseline, normalize=normalize)
        if not (isinstance(control_variate, bool) or control_variate == "auto"):
            raise ValueError(f"control_variate must be true, false or 'auto', got {control_variate!r}")
        if not isinstance(cv_jumps, int) or isinstance(cv_jumps, bool) or cv_jumps < 1:
            raise ValueError(f"cv_jumps must be an integer >= 1, got {cv_jumps!r}")
        if cv_scale != "auto" and not (isinstance(cv_scale, (int, float)) and not isinstance(cv_scale, bool)
                                       and math.isfinite(cv_scale)):
            raise ValueError(f"cv_scale must be 'auto' or a number, got {cv_scale!r}")
        check_positive("cv_weight", cv_weight, allow_zero=True)
        check_choice("part_weights", part_weights, PART_WEIGHTS)
        if not (isinstance(statistics_decay, (int, float)) and 0.0 < float(statistics_decay) < 1.0):
            raise ValueError(f"statistics_decay must be a number in (0, 1), got {statistics_decay!r}")
        if not isinstance(h, int) or isinstance(h, bool) or h < 1:
            raise ValueError(f"h must be an integer >= 1 (and <= num_steps - 1), got {h!r}")
        check_choice("remaining", remaining, REMAINING)
        check_choice("j_sampling", j_sampling, J_SAMPLING)
        check_choice("zo_directions", zo_directions, ZO_DIRECTIONS)
        check_positive("zo_scale", zo_scale)
        check_positive("grad_norm_temperature", grad_norm_temperature)
        if not isinstance(lr_samples, int) or lr_samples < 1:
            raise ValueError(f"lr_samples must be an integer >= 1, got {lr_samples!r}")
        for field_name, value in (("fo_weight", fo_weight), ("remaining_weight", remaining_weight)):
            check_positive(field_name, value, allow_zero=True)
        if ho_weight != "auto":
            try:
                check_positive("ho_weight", ho_weight, allow_zero=True)
            except ValueError:
                raise ValueError(f"ho_weight must be 'auto' or a finite number >= 0, got {ho_weight!r}") from None
        if not isinstance(antithetic, bool):
            raise ValueError(f"antithetic must be true or false, got {antithetic!r}")
        if window is not None:
            window = _check_window(window)
        self.h = h
        self.remaining = remaining
        self.zo_scale = float(zo_scale)
        self.zo_directions = zo_directions
        self.lr_samples = lr_samples
        self.window = window
        self.j_sampling = j_sampling
        self.grad_norm_temperature = float(grad_norm_temperature)
        self.fo_weight = float(fo_weight)
        self.ho_weight = "auto" if ho_weight == "auto" else float(ho_weight)
        self.remaining_weight = float(remaining_weight)
        self.antithetic = antithetic
        self.part_weights = part_weights
        self.statistics_decay = float(statistics_decay)
        self.control_variate = control_variate  # True, False or "auto" (on where it can run)
        self.cv_jumps = cv_jumps
        self.cv_scale = cv_scale if cv_scale == "auto" else float(cv_scale)
        self.cv_weight = float(cv_weight)
        self.cv_statistics: dict[int, list[float]] = {}  # start j -> EMA of [sum adv * c1, sum c1^2]
        self._surrogate_reward = None  # set by estimate() for the control variate
        self.ho_grad_norms: dict[int, float] = {}  # start j -> running HO gradient norm
        self.part_statistics: dict[str, PartStatistics] = {}  # for part_weights="auto"

    # --- setup ---------------------------------------------------------------------------------
    def has_zo(self, differentiable_reward: bool) -> bool:
        """True when some step is covered by parameter perturbation (+/- halves needed)."""
        return self.remaining == "zo" or (not differentiable_reward and self.remaining != "none")

    def noise_groups(self, differentiable_reward: bool) -> int:
        return (2 if self.has_zo(differentiable_reward) else 1) * (2 if self.antithetic else 1)

    def uses_baseline(self) -> bool:
        # with antithetic twins the HO term needs no baseline; per-step LR terms still do
        return self.baseline != "none" and (self.remaining == "lr" or not self.antithetic)

    def start_window(self, num_steps: int) -> tuple[int, int]:
        """Allowed HO starts (inclusive): the sub-chain must end before the last (FO) step."""
        last_start = num_steps - 1 - self.h
        if self.window is None:
            return 0, last_start
        if all(isinstance(v, float) for v in self.window):  # fractions of the allowed starts
            a, b = (round(v * last_start) for v in self.window)
            return a, max(a, b)
        return self.window

    def _check_setup(self, chain: Chain, differentiable_reward: bool, batch_size: int) -> None:
        T = chain.num_steps
        if self.h > T - 1:
            raise ValueError(
                f"h must be between 1 and num_steps - 1 = {T - 1} (the last step is first order), got {self.h}"
            )
        last_start = T - 1 - self.h
        window = self.start_window(T)
        if self.window is not None and not (0 <= window[0] <= window[1] <= last_start):
            raise ValueError(
                f"window must lie within [0, {last_start}] (HO starts j with j + h <= T - 1 for T={T}, "
                f"h={self.h}), got {list(self.window)}"
            )
        if self.control_variate is True and self.ho_weight == 0 and not differentiable_reward:
            raise ValueError(
                "ho_weight: 0 with control_variate needs a differentiable reward: without one (clicks, JPEG size) "
                "there is no control variate and the HO term would be zero; set ho_weight > 0"
            )
        super()._check_setup(chain, differentiable_reward, batch_size)

    def estimate(self, chain: Chain, reward, prompts: list[str], generator: torch.Generator):
        """As the base class; with ``control_variate`` the reward is also scored at the stand-in."""
        if self.control_variate and getattr(reward, "differentiable", False):
            if callable(getattr(chain, "predict_final", None)):
                self._surrogate_reward = reward
            elif self.control_variate is True:
                raise ValueError("control_variate: the chain has no predict_final(x, k, cond, jumps); "
                                 "use control_variate: false or 'auto'")
        try:
            return super().estimate(chain, reward, prompts, generator)
        finally:
            self._surrogate_reward = None

    def effective_ho_weight(self, with_control_variate: bool) -> float:
        """The HO weight of this estimate: ``ho_weight``, or with "auto" 0 when the control variate runs
        (the residual dropped) and 1 when it does not (the plain likelihood-ratio term)."""
        if self.ho_weight == "auto":
            return 0.0 if with_control_variate else 1.0
        return float(self.ho_weight)

    def cv_beta(self, j: int, residual_kept: bool = True) -> float:
        """The control variate's slope for start j: ``cv_scale`` when it is a number; with "auto", 1 when the
        residual is dropped (the part "cv" is then the pathwise gradient of the stand-in's reward through the
        sub-chain, taken at face value), else the least-squares slope of earlier iterations at start j, falling
        back to the slope pooled over every start seen so far, and to 1 before any statistics exist. Every
        choice depends on earlier iterations only, never on this estimate's exit noise, so the split stays
        unbiased.

        Why 1 without the residual: the fitted slope only sets the variance of the residual it is subtracted
        from; with no residual it would scale (and, fitted on a few noisy batches, sometimes flip) the only
        term left. Measured on the tiny model (shape-position, T=8, lr 0.003, 12 iterations): fitted slope
        -0.069 eval gain, slope 1 +0.034."""
        if self.cv_scale != "auto":
            return float(self.cv_scale)
        if not residual_kept:
            return 1.0
        sxy, sxx = self.cv_statistics.get(j, (0.0, 0.0))
        if sxx > 0:
            return sxy / sxx
        pooled_xy = sum(v[0] for v in self.cv_statistics.values())
        pooled_xx = sum(v[1] for v in self.cv_statistics.values())
        return pooled_xy / pooled_xx if pooled_xx > 0 else 1.0

    def _choose_start(self, num_steps: int, generator: torch.Generator) -> int:
        a, b = self.start_window(num_steps)
        candidates = list(range(a, b + 1))
        if self.j_sampling == "uniform" or not self.ho_grad_norms:
            return candidates[random_int(generator, len(candidates))]
        # softmax of earlier HO gradient norms; unseen starts get the largest seen norm (explore)
        largest = max(self.ho_grad_norms.values())
        logits = torch.tensor([self.ho_grad_norms.get(j, largest) for j in candidates], dtype=torch.float64)
        scale = logits.abs().max().clamp_min(1e-12)
        probs = torch.softmax(logits / scale / self.grad_norm_temperature, dim=0).float()
        index = torch.multinomial(probs.to(generator.device), 1, generator=generator).item()
        return candidates[int(index)]

    def _zo_seed_table(self, n: int, zo_steps: list[int], generator: torch.Generator) -> list[dict[int, int]]:
        """Direction seeds per noise set i and ZO step k, shared as ``zo_directions`` says."""
        if self.zo_directions == "per-sample":  # one per noise set, from its global index
            seeds = [seed % (2**31 - 1) for seed in self.noise_set_seeds(generator, n)]
            return [{k: seeds[i] for k in zo_steps} for i in range(n)]
        if self.zo_directions == "per-batch":
            seed = random_int(generator, 2**31 - 1)
            return [{k: seed for k in zo_steps} for _ in range(n)]
        per_step = {k: random_int(generator, 2**31 - 1) for k in zo_steps}
        return [dict(per_step) for _ in range(n)]

    # --- phase 1: sample and keep what the gradient needs -------------------------------------
    def sample(
        self, chain: Chain, prompts: list[str], generator: torch.Generator, differentiable_reward: bool
    ) -> Rollout:
        T = chain.num_steps
        j = self._choose_start(T, generator)
        exit_step = j + self.h - 1
        others = [k for k in range(T - 1) if not j <= k <= exit_step]
        zo_steps = list(others) if self.remaining == "zo" else []
        lr_steps: list[int] = []
        if self.remaining == "lr" and others:
            order = torch.randperm(len(others), generator=generator, device=generator.device).tolist()
            lr_steps = sorted(others[i] for i in order[: min(self.lr_samples, len(others))])
        if not differentiable_reward and self.remaining != "none":
            zo_steps.append(T - 1)
        zo_signs = (1.0, -1.0) if self.has_zo(differentiable_reward) else (0.0,)
        exit_signs = (1.0, -1.0) if self.antithetic else (1.0,)
        groups = [(zo, ex) for zo in zo_signs for ex in exit_signs]
        n = len(prompts) // len(groups)
        noise = self.draw_noise(chain, n, generator)
        zo_seeds = self._zo_seed_table(n, zo_steps, generator)  # zo_seeds[i][k]: direction of sample i, step k

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
            _PerturbedSegments(chain, list(prompts[b * size : (b + 1) * size]), conds[b], block_noise, units, zo_seeds,
                               zo_sign * self.zo_scale)
            for b, zo_sign in enumerate(zo_signs)
        ]
        records = [{k: None for k in lr_steps} for _ in range(blocks)]
        # The HO sub-chain and the FO step run at the unperturbed theta: all blocks in one batch.
        whole_cond = conds[0] if blocks == 1 else chain.condition(list(prompts))
        whole_noise = NoisePlan(x0=torch.cat([block_noise.x0] * blocks), eps=[torch.cat([e] * blocks) for e in block_noise.eps])

        with torch.no_grad():
            x = torch.cat([seg.run(block_noise.x0, range(0, j), rec) for seg, rec in zip(segments, records)])
        x_start = x.detach()
        with torch.enable_grad():  # HO: reparameterized inside, likelihood ratio at the exit
            x_inner = run_steps(chain, x_start, range(j, exit_step), whole_cond, whole_noise)
            exit_mean, exit_std = chain.step_mean_std(x_inner, exit_step, whole_cond)
            if step_std_is_zero(exit_std):
                raise ValueError(f"eta must be > 0 for rlr: step {exit_step} (the HO exit) is deterministic")
            x_exit = (exit_mean + exit_std * whole_noise.eps[exit_step]).detach()
            log_prob = gaussian_log_prob(x_exit, exit_mean, exit_std)
        cv_direction = None
        if self._surrogate_reward is not None and differentiable_reward:
            cv_direction = self._cv_direction(chain, exit_mean.detach(), exit_step + 1, whole_cond, list(prompts))
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

        steps = {"ho": list(range(j, exit_step + 1))}
        if differentiable_reward:
            steps["fo"] = [T - 1]
        if zo_steps:
            steps["zo"] = sorted(zo_steps)
        if lr_steps:
            steps["lr"] = lr_steps
        if self.remaining == "none":
            dropped = others + ([] if differentiable_reward else [T - 1])
            if dropped:
                steps["dropped"] = dropped
        kept = {
            "j": j, "groups": groups, "log_prob": log_prob, "ho_replay": (x_start, x_exit, whole_cond, whole_noise),
            "exit_mean": exit_mean, "cv_direction": cv_direction,
            "zo_seeds": zo_seeds, "conds": conds, "records": records, "num_remaining": len(others),
        }
        return Rollout(chain, list(prompts), images, differentiable_reward, steps, data=kept)

    # --- phase 2: rewards -> p.grad ------------------------------------------------------------
    def parts(self, rollout: Rollout, rewards: torch.Tensor, info: dict[str, float]) -> dict[str, torch.Tensor]:
        chain, data = rollout.chain, rollout.data
        params = chain.trainable_parameters()
        groups = data["groups"]
        scale = self.reward_scale(rewards)
        batch = self.batch_size(rewards)  # the whole batch: this process's rows are part of it
        n = rewards.shape[0] // len(groups)
        r = rewards.detach().double().view(len(groups), n)  # row g = group g
        parts: dict[str, torch.Tensor] = {}

        if rollout.differentiable_reward:
            parts["fo"] = self.fo_part(rollout, rewards, self.fo_weight)

        log_prob = data["log_prob"]
        if self.antithetic:  # twins are consecutive groups (same ZO sign, exit noise +/-)
            twin = torch.stack([r[g ^ 1] for g in range(len(groups))])
            ho_advantages = ((r - twin) / 2).reshape(-1)
        else:
            ho_advantages = self.advantages(rewards, rollout.prompts, len(groups))
        cv_direction = data.get("cv_direction")
        if cv_direction is not None:  # residual advantage: minus beta * a . (x_exit - m)
            x_exit = data["ho_replay"][1]
            unit_cv = (cv_direction * (x_exit - data["exit_mean"].detach())).flatten(1).sum(1).double()
            beta = self.cv_beta(data["j"], residual_kept=self.effective_ho_weight(True) > 0)
            info["cv_beta"] = beta
            self._remember_cv_statistics(data["j"], ho_advantages, unit_cv)
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
            cv_loss = -self.cv_weight * scale * beta * (cv_direction.to(exit_mean) * exit_mean).sum() / batch
            parts["cv"] = part_gradient(cv_loss, params)

        try:
            ho_gradient(log_prob, data["exit_mean"])
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
            weight = self.remaining_weight * scale * data["num_remaining"] / len(lr_steps)
            parts["lr"] = self._lr_part(rollout, advantages, lr_steps, weight / batch)

        zo_steps = rollout.steps.get("zo", [])
        if zo_steps:
            plus = [g for g, (zo_sign, _) in enumerate(groups) if zo_sign > 0]
            minus = [g for g, (zo_sign, _) in enumerate(groups) if zo_sign < 0]
            T = chain.num_steps
            # slope_i: antithetic difference quotient of noise set i (averaged over exit twins)
            slopes = (r[plus] - r[minus]).mean(0) / (2 * self.zo_scale)
            num_sets = batch // len(groups)  # noise sets of the whole batch
            zo = torch.zeros(sum(p.numel() for p in params))
            for i, row in enumerate(data["zo_seeds"]):
                for seed in sorted(set(row.values())):  # one term per distinct direction
                    steps_with_seed = [k for k in zo_steps if row[k] == seed]
                    # a direction shared by several steps estimates their sum: one (mean) weight
                    weight = sum(self.fo_weight if k == T - 1 else self.remaining_weight for k in steps_with_seed)
                    weight /= len(steps_with_seed)
                    xi = flatten(perturbation_direction(params, seed), params).cpu()
                    zo = zo - (weight * scale * float(slopes[i]) / num_sets) * xi
            parts["zo"] = zo.to(parts["ho"].device)
        return parts

    def combine(self, rollout: Rollout, parts: dict[str, torch.Tensor], info: dict[str, float]) -> dict[str, torch.Tensor]:
        """Remember the whole batch's HO norm (``j_sampling="grad-norm"``) and apply the part weights."""
        self._remember_ho_norm(rollout.data["j"], float(parts["ho"].norm()))
        weights = self._weigh_parts(parts)
        info.update({f"weight_{name}": w for name, w in weights.items()})
        return parts

    def _weigh_parts(self, parts: dict[str, torch.Tensor]) -> dict[str, float]:
        """Apply the part weights in place: fixed (the coefficients above) or MSE-aware ("auto")."""
        if self.part_weights == "fixed":
            return {}
        weights = {}
        for name, value in parts.items():
            stats = self.part_statistics.setdefault(name, PartStatistics(self.statistics_decay))
            weights[name] = stats.weight()  # from earlier estimates only
            stats.add(value)
            parts[name] = value * weights[name]
        return weights

    def _cv_direction(self, chain: Chain, exit_mean: torch.Tensor, next_step: int, cond, prompts: list[str]) -> torch.Tensor:
        """a = d r(decode(predict_final(m))) / dm at the detached exit mean m (no graph kept)."""
        mean = exit_mean.requires_grad_(True)
        with torch.enable_grad():
            final = chain.predict_final(mean, next_step, cond, self.cv_jumps)
            surrogate = self._surrogate_reward(chain.decode(final), [str(p) for p in prompts])
            self.require_reward_graph(surrogate)
            (direction,) = torch.autograd.grad(surrogate.sum(), mean)
        return direction.detach()

    def _remember_cv_statistics(self, j: int, advantages: torch.Tensor, unit_cv: torch.Tensor) -> None:
        """Fold this batch's least-squares sums (over the whole batch) into start j's running slope."""
        sums = torch.stack([(advantages.double() * unit_cv).sum(), (unit_cv * unit_cv).sum()])
        if self.shard is not None:
            sums = sum_over_processes(sums)
        sxy, sxx = (float(v) for v in sums)
        if not (math.isfinite(sxy) and math.isfinite(sxx)):
            return
        previous = self.cv_statistics.get(j)
        d = self.statistics_decay
        self.cv_statistics[j] = [sxy, sxx] if previous is None else [d * previous[0] + sxy, d * previous[1] + sxx]

    def _recompute_ho_log_prob(self, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        """The HO exit log-probability (and exit mean) rebuilt from the stored x[j], noises and exit sample."""
        chain, data = rollout.chain, rollout.data
        x_start, x_exit, cond, noise = data["ho_replay"]
        j, exit_step = data["j"], data["j"] + self.h - 1
        with torch.enable_grad():
            x_inner = run_steps(chain, x_start, range(j, exit_step), cond, noise)
            exit_mean, exit_std = chain.step_mean_std(x_inner, exit_step, cond)
            return gaussian_log_prob(x_exit, exit_mean, exit_std), exit_mean

    def _lr_part(self, rollout: Rollout, advantages: torch.Tensor, lr_steps: list[int], weight: float) -> torch.Tensor:
        """Per-step likelihood-ratio terms on the sampled remaining steps, one backward each."""
        chain, data = rollout.chain, rollout.data
        params = chain.trainable_parameters()
        total = None
        n = advantages.shape[0] // len(data["conds"])  # rows per block
        for index, (cond, record) in enumerate(zip(data["conds"], data["records"])):
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
        state["cv_statistics"] = {j: list(v) for j, v in self.cv_statistics.items()}
        state["part_statistics"] = {name: s.state_dict() for name, s in self.part_statistics.items()}
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.ho_grad_norms = {int(k): float(v) for k, v in state.get("ho_grad_norms", {}).items()}
        self.cv_statistics = {int(k): [float(x) for x in v] for k, v in state.get("cv_statistics", {}).items()}
        self.part_statistics = {}
        for name, saved in state.get("part_statistics", {}).items():
            self.part_statistics[name] = PartStatistics(self.statistics_decay)
            self.part_statistics[name].load_state_dict(saved)


class PartStatistics:
    """Exponentially weighted mean and second moment of one part's flat estimates.

    With unnormalised weights beta^age: W = sum w, W2 = sum w^2, M = sum w g, Q = sum w |g|^2.
    The mean is M / W, the variance V = (Q / W - |M / W|^2) * n / (n - 1) with the effective
    count n = W^2 / W2, and |E g|^2 is estimated by |M / W|^2 - V / n (the mean's own noise removed).
    """

    MIN_ESTIMATES = 3

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.count = 0
        self.w = self.w2 = self.q = 0.0
        self.m: torch.Tensor | None = None

    def add(self, g: torch.Tensor) -> None:
        g = g.detach().double().cpu()
        self.m = g.clone() if self.m is None else self.decay * self.m + g
        self.w = self.decay * self.w + 1.0
        self.w2 = self.decay**2 * self.w2 + 1.0
        self.q = self.decay * self.q + float(g @ g)
        self.count += 1

    def weight(self) -> float:
        """S / (S + V): 1 until MIN_ESTIMATES estimates were added."""
        if self.count < self.MIN_ESTIMATES or self.m is None:
            return 1.0
        n = self.w**2 / self.w2
        mean = self.m / self.w
        variance = max(self.q / self.w - float(mean @ mean), 0.0) * n / (n - 1.0)
        signal = max(float(mean @ mean) - variance / n, 0.0)
        return signal / (signal + variance) if signal + variance > 0 else 1.0

    def state_dict(self) -> dict:
        return {"count": self.count, "w": self.w, "w2": self.w2, "q": self.q, "m": self.m}

    def load_state_dict(self, state: dict) -> None:
        self.count, self.w, self.w2, self.q = int(state["count"]), float(state["w"]), float(state["w2"]), float(state["q"])
        self.m = state["m"]


class _PerturbedSegments:
    """Runs no-grad stretches of one block, perturbing theta on ZO steps as the seed table says.

    ``units[i]`` are the rows of noise set i (the exit twins), which share a direction. When
    the whole block shares a direction on its steps it runs as one batch; otherwise each unit
    runs on its own (each model call sees one perturbation).
    """

    def __init__(self, chain: Chain, prompts: list[str], cond, noise: NoisePlan, units: list[list[int]],
                 seeds: list[dict[int, int]], scale: float) -> None:
        self.chain, self.prompts, self.cond, self.noise = chain, prompts, cond, noise
        self.units, self.seeds, self.scale = units, seeds, scale
        self._unit_conds: list | None = None

    def run(self, x: torch.Tensor, steps, record: dict | None = None) -> torch.Tensor:
        steps = list(steps)
        zo = [k for k in steps if self.scale and k in self.seeds[0]]
        if not zo or all(row == self.seeds[0] for row in self.seeds):
            perturb = {k: (self.seeds[0][k], self.scale) for k in zo}
            return run_steps(self.chain, x, steps, self.cond, self.noise, perturb, record)
        if self._unit_conds is None:
            self._unit_conds = [self.chain.condition([self.prompts[r] for r in rows]) for rows in self.units]
        output = torch.empty_like(x)
        unit_records = []
        for rows, cond, seeds in zip(self.units, self._unit_conds, self.seeds):
            noise = NoisePlan(x0=self.noise.x0[rows], eps=[e[rows] for e in self.noise.eps])
            perturb = {k: (seeds[k], self.scale) for k in zo}
            unit_record = {k: None for k in record} if record is not None else None
            output[rows] = run_steps(self.chain, x[rows], steps, cond, noise, perturb, unit_record)
            unit_records.append(unit_record)
        if record is not None:
            for k in record:
                if unit_records[0].get(k) is not None:
                    record[k] = _merge_records([r[k] for r in unit_records], self.units, x.shape[0])
        return output


def _merge_records(parts: list[RecordedStep], units: list[list[int]], batch: int) -> RecordedStep:
    """Reassemble per-unit recorded steps into block row order."""
    order = torch.tensor([row for rows in units for row in rows])
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(batch)

    def merged(tensors: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(tensors)[inverse.to(tensors[0].device)]

    return RecordedStep(
        x=merged([p.x for p in parts]),
        x_next=merged([p.x_next for p in parts]),
        log_prob=None if parts[0].log_prob is None else merged([p.log_prob for p in parts]),
    )


def _check_window(window) -> tuple:
    """(a, b): two step indices (integers), or two fractions of the allowed HO starts (floats in [0, 1])."""
    message = ("window must be two step indices (a, b) with a <= b, or two fractions of the chain "
               f"(floats in [0, 1], a <= b), got {window!r}")
    if isinstance(window, (str, bytes)) or len(window) != 2 or any(isinstance(v, bool) for v in window):
        raise ValueError(message)
    if all(isinstance(v, int) for v in window):
        if window[0] > window[1]:
            raise ValueError(message)
        return int(window[0]), int(window[1])
    if not all(isinstance(v, (int, float)) for v in window):
        raise ValueError(message)
    a, b = float(window[0]), float(window[1])
    if not (0.0 <= a <= b <= 1.0):
        raise ValueError(message)
    return a, b
