"""rlr's no-grad stretches with zeroth-order perturbations: the direction seeds and the segment runner (and the
steps each part of an estimate covers).

``zo_directions``: "per-sample" gives every noise set of the batch its own direction xi_i, used on all
its ZO steps; "per-batch" one xi for the whole batch (fewest model calls); "per-step" one xi[k] per step
as the paper writes it. All are unbiased; one direction per sample averages B/4 independent directions,
and a direction shared across steps avoids the cross terms sum_{k != k'} (g_k' . xi_k') xi_k that
per-step directions add.
"""

from __future__ import annotations

import torch

from ..chain import Chain, perturbation_direction
from ..sampling import NoisePlan, RecordedStep, run_steps
from .gradients import flatten, random_int

ZO_SEED_RANGE = 2**31 - 1


def zo_seed_table(zo_directions: str, n: int, zo_steps: list[int], generator: torch.Generator,
                  noise_set_seeds) -> list[dict[int, int]]:
    """Direction seeds per noise set i and ZO step k, shared as ``zo_directions`` says
    (``noise_set_seeds(generator, n)``: the estimator's per-noise-set seeds, from their global index)."""
    if zo_directions == "per-sample":  # one per noise set, from its global index
        seeds = [seed % ZO_SEED_RANGE for seed in noise_set_seeds(generator, n)]
        return [{k: seeds[i] for k in zo_steps} for i in range(n)]
    if zo_directions == "per-batch":
        seed = random_int(generator, ZO_SEED_RANGE)
        return [{k: seed for k in zo_steps} for _ in range(n)]
    per_step = {k: random_int(generator, ZO_SEED_RANGE) for k in zo_steps}
    return [dict(per_step) for _ in range(n)]


def zo_part(params: list[torch.Tensor], zo_seeds: list[dict[int, int]], zo_steps: list[int],
            step_weights: dict[int, float], slopes: torch.Tensor, scale: float, num_sets: int) -> torch.Tensor:
    """The flat ZO part: minus the mean over the ``num_sets`` noise sets of the batch of
    weight * scale * slopes[i] * xi over set i's distinct directions xi (``slopes[i]``: its difference
    quotient; ``scale``: the reward scale). A direction shared by several steps estimates their sum: it
    carries the mean of their ``step_weights``."""
    zo = torch.zeros(sum(p.numel() for p in params))
    for i, row in enumerate(zo_seeds):
        for seed in sorted(set(row.values())):  # one term per distinct direction
            steps_with_seed = [k for k in zo_steps if row[k] == seed]
            weight = sum(step_weights[k] for k in steps_with_seed) / len(steps_with_seed)
            xi = flatten(perturbation_direction(params, seed), params).cpu()
            zo = zo - (weight * scale * float(slopes[i]) / num_sets) * xi
    return zo


class PerturbedSegments:
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
                    record[k] = merge_records([r[k] for r in unit_records], self.units, x.shape[0])
        return output


def merge_records(parts: list[RecordedStep], units: list[list[int]], batch: int) -> RecordedStep:
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


def part_steps(j: int, exit_step: int, num_steps: int, differentiable_reward: bool, zo_steps: list[int],
               lr_steps: list[int], others: list[int], remaining: str) -> dict[str, list[int]]:
    """The chain steps each part of an rlr estimate covers (``Rollout.steps``): HO from ``j`` to its exit, FO on the
    last step (a differentiable reward), ZO / LR on theirs, and what ``remaining="none"`` leaves out ("dropped")."""
    last = num_steps - 1
    steps = {"ho": list(range(j, exit_step + 1))}
    if differentiable_reward:
        steps["fo"] = [last]
    if zo_steps:
        steps["zo"] = sorted(zo_steps)
    if lr_steps:
        steps["lr"] = lr_steps
    if remaining == "none":
        dropped = others + ([] if differentiable_reward else [last])
        if dropped:
            steps["dropped"] = dropped
    return steps
