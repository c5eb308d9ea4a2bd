"""Estimator probe: repeat gradient estimates and compare estimators on the same chain and reward.

For each estimator the probe reports the mean gradient, the total variance (trace of the
covariance of one estimate), the cosine of its mean to the mean of full backprop (the exact
pathwise gradient, when the reward is differentiable and full-bp is affordable), seconds and
peak memory per estimate. It also reports the *signal of a single estimate*: the mean cosine
of one estimate, and of each of its parts (FO / HO / ZO / LR), to a reference (the full-bp mean
when there is one, else the mean of the estimator's other estimates), and each part's mean norm.
The app's Diagnostics tab and ``benchmarks/estimators.py`` use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .estimators import get_estimator
from .estimators.base import Estimator, flatten, grouped_prompts


@dataclass
class EstimatorStats:
    """Statistics of repeated estimates of one estimator (gradients of -E[r], flattened)."""

    name: str
    repeats: int
    mean: torch.Tensor
    total_variance: float
    mean_norm: float
    cosine_to_reference: float | None
    seconds: float
    peak_memory_mb: float
    graph_memory_mb: float
    reward_mean: float
    samples: torch.Tensor | None = field(default=None, repr=False)
    error: str | None = None
    single_cosine: float | None = None  # mean cosine of one estimate to the reference
    part_norms: dict[str, float] = field(default_factory=dict)  # mean norm of each part of one estimate
    part_cosines: dict[str, float] = field(default_factory=dict)  # mean cosine of each part to the reference
    reference: str | None = None  # "full-bp" or "self" (leave-one-out mean of this estimator)
    part_samples: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # [repeats, d] per part

    def row(self) -> dict[str, Any]:
        """A flat dict for tables (no tensors)."""
        row: dict[str, Any] = {
            "estimator": self.name,
            "repeats": self.repeats,
            "single_cosine": self.single_cosine,
            "cosine_to_full_bp": self.cosine_to_reference,
            "reference": self.reference,
            "mean_norm": self.mean_norm,
            "total_variance": self.total_variance,
        }
        for part in sorted(self.part_norms, key=_part_order):
            row[f"norm_{part}"] = self.part_norms[part]
            row[f"cos_{part}"] = self.part_cosines.get(part)
        row.update({
            "seconds": self.seconds,
            "peak_memory_mb": self.peak_memory_mb,
            "graph_memory_mb": self.graph_memory_mb,
            "reward_mean": self.reward_mean,
            "error": self.error,
        })
        return row

    def compute_signal(self, reference: torch.Tensor | None, reference_name: str | None) -> None:
        """Fill ``single_cosine`` and ``part_cosines`` against ``reference`` (None: leave-one-out self mean)."""
        if self.samples is None or self.repeats < 2:
            return
        self.reference = reference_name if reference is not None else "self"

        def references() -> list[torch.Tensor]:
            if reference is not None:
                return [reference] * self.repeats
            total = self.samples.sum(0)
            return [(total - s) / (self.repeats - 1) for s in self.samples]

        refs = references()
        self.single_cosine = sum(cosine(s, r) for s, r in zip(self.samples, refs)) / self.repeats
        self.part_cosines = {
            part: sum(cosine(s, r) for s, r in zip(values, refs)) / self.repeats
            for part, values in self.part_samples.items()
        }


PART_ORDER = ("fo", "ho", "zo", "lr")


def _part_order(part: str) -> tuple[int, str]:
    return (PART_ORDER.index(part) if part in PART_ORDER else len(PART_ORDER), part)


def collect_estimates(
    chain: Any,
    reward: Any,
    estimator: Estimator,
    prompts: list[str],
    repeats: int,
    seed: int = 0,
    keep_samples: bool = True,
) -> EstimatorStats:
    """Run ``estimator.estimate`` ``repeats`` times with independent noise; summarise."""
    if repeats < 2:
        raise ValueError(f"repeats must be >= 2, got {repeats}")
    generator = torch.Generator().manual_seed(seed)
    params = chain.trainable_parameters()
    samples, seconds, peak, graph, reward_means = [], 0.0, 0.0, 0.0, []
    parts: dict[str, list[torch.Tensor]] = {}
    for _ in range(repeats):
        for p in params:
            p.grad = None
        result = estimator.estimate(chain, reward, prompts, generator)
        samples.append(flatten([p.grad for p in params], params).double().cpu())
        for name, value in result.parts.items():
            parts.setdefault(name, []).append(value.detach().double().cpu())
        seconds += result.seconds
        peak = max(peak, result.peak_memory_mb)
        graph = max(graph, result.graph_memory_mb)
        reward_means.append(float(result.rewards.float().mean()))
    for p in params:
        p.grad = None
    stacked = torch.stack(samples)
    mean = stacked.mean(0)
    part_samples = {name: torch.stack(values) for name, values in parts.items() if len(values) == repeats}
    stats = EstimatorStats(
        name=estimator.name,
        repeats=repeats,
        mean=mean,
        total_variance=float(stacked.var(0, unbiased=True).sum()),
        mean_norm=float(mean.norm()),
        cosine_to_reference=None,
        seconds=seconds / repeats,
        peak_memory_mb=peak,
        graph_memory_mb=graph,
        reward_mean=sum(reward_means) / len(reward_means),
        samples=stacked,
        part_norms={name: float(values.norm(dim=1).mean()) for name, values in part_samples.items()},
        part_samples=part_samples,
    )
    stats.compute_signal(None, None)
    if not keep_samples:
        stats.samples, stats.part_samples = None, {}
    return stats


def z_scores(stats: EstimatorStats, exact: torch.Tensor) -> torch.Tensor:
    """Per-coordinate z of the mean estimate against a known gradient (Monte-Carlo error units)."""
    if stats.samples is None:
        raise ValueError("z_scores needs stats collected with keep_samples=True")
    std_error = stats.samples.std(0, unbiased=True) / stats.repeats**0.5
    return (stats.mean - exact.double().flatten().cpu()) / std_error.clamp_min(1e-300)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two flat vectors (0 when either is zero)."""
    denominator = float(a.norm() * b.norm())
    return float(a @ b) / denominator if denominator > 0 else 0.0


def probe(
    chain: Any,
    reward: Any,
    estimators: list[str | tuple[str, dict]],
    prompts: list[str],
    repeats: int = 8,
    seed: int = 0,
    reference: str | None = "full-bp",
    progress: Callable[[str, int, int], None] | None = None,
    seed_stride: int = 1000,
) -> list[EstimatorStats]:
    """Compare estimators on ``chain`` and ``reward``; one EstimatorStats per estimator.

    ``estimators`` are names or (name, options) pairs. The reference (full-bp by default) is
    run too when the reward is differentiable; estimators that cannot run here (e.g. full-bp
    with a non-differentiable reward) get a row with ``error`` set instead of failing the probe.
    ``prompts`` gives the batch size and the prompts; each estimator gets them regrouped by its
    noise groups (rows that share noise share the prompt, see ``grouped_prompts``).
    Single-estimate cosines are taken to the reference's mean, or (no reference) to the
    leave-one-out mean of the estimator's own estimates.
    Parameters are not changed (p.grad is cleared afterwards). Estimator i draws its batches from
    seeds ``seed + seed_stride * i``; ``seed_stride=0`` gives every estimator the same seeds (the
    same HO starts j and noise where their layouts agree), a paired comparison.
    """
    specs = [(spec, {}) if isinstance(spec, str) else (spec[0], dict(spec[1])) for spec in estimators]
    names = [name for name, _ in specs]
    if reference and reference not in names and getattr(reward, "differentiable", False):
        specs.append((reference, {}))
    results: list[EstimatorStats] = []
    for index, (name, options) in enumerate(specs):
        if progress is not None:
            progress(name, index, len(specs))
        estimator = get_estimator(name, **options)
        try:
            estimator.check(chain, reward, len(prompts))
            groups = estimator.noise_groups(bool(getattr(reward, "differentiable", False)))
            batch = grouped_prompts(_distinct(prompts), len(prompts), groups)
            stats = collect_estimates(chain, reward, estimator, batch, repeats, seed=seed + seed_stride * index, keep_samples=True)
        except ValueError as error:
            stats = EstimatorStats(
                name=name, repeats=0, mean=torch.zeros(0), total_variance=float("nan"), mean_norm=float("nan"),
                cosine_to_reference=None, seconds=0.0, peak_memory_mb=0.0, graph_memory_mb=0.0,
                reward_mean=float("nan"), error=str(error),
            )
        results.append(stats)
    reference_stats = next((s for s in results if s.name == reference and s.error is None), None)
    for stats in results:
        if stats.error is None and reference_stats is not None:
            stats.cosine_to_reference = cosine(stats.mean, reference_stats.mean)
            if stats is not reference_stats:
                stats.compute_signal(reference_stats.mean, reference)
        stats.samples, stats.part_samples = None, {}
    return results


def _distinct(prompts: list[Any]) -> list[Any]:
    """The prompts in first-seen order without repeats."""
    by_text: dict[str, Any] = {}
    for p in prompts:
        by_text.setdefault(str(p), p)
    return list(by_text.values())
