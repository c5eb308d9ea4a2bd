"""Estimator probe: repeat gradient estimates and compare estimators on the same chain and reward.

For each estimator the probe reports the mean gradient, the total variance (trace of the
covariance of one estimate), the cosine of its mean to the mean of full backprop (the exact
pathwise gradient, when the reward is differentiable and full-bp is affordable), seconds and
peak memory per estimate. The app's Diagnostics tab and ``benchmarks/estimators.py`` use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .estimators import get_estimator
from .estimators.base import Estimator, flatten


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

    def row(self) -> dict[str, Any]:
        """A flat dict for tables (no tensors)."""
        return {
            "estimator": self.name,
            "repeats": self.repeats,
            "mean_norm": self.mean_norm,
            "total_variance": self.total_variance,
            "cosine_to_full_bp": self.cosine_to_reference,
            "seconds": self.seconds,
            "peak_memory_mb": self.peak_memory_mb,
            "graph_memory_mb": self.graph_memory_mb,
            "reward_mean": self.reward_mean,
            "error": self.error,
        }


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
    for _ in range(repeats):
        for p in params:
            p.grad = None
        result = estimator.estimate(chain, reward, prompts, generator)
        samples.append(flatten([p.grad for p in params], params).double().cpu())
        seconds += result.seconds
        peak = max(peak, result.peak_memory_mb)
        graph = max(graph, result.graph_memory_mb)
        reward_means.append(float(result.rewards.float().mean()))
    for p in params:
        p.grad = None
    stacked = torch.stack(samples)
    mean = stacked.mean(0)
    return EstimatorStats(
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
        samples=stacked if keep_samples else None,
    )


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
) -> list[EstimatorStats]:
    """Compare estimators on ``chain`` and ``reward``; one EstimatorStats per estimator.

    ``estimators`` are names or (name, options) pairs. The reference (full-bp by default) is
    run too when the reward is differentiable; estimators that cannot run here (e.g. full-bp
    with a non-differentiable reward) get a row with ``error`` set instead of failing the probe.
    Parameters are not changed (p.grad is cleared afterwards).
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
            stats = collect_estimates(chain, reward, estimator, prompts, repeats, seed=seed + 1000 * index, keep_samples=False)
        except ValueError as error:
            stats = EstimatorStats(
                name=name, repeats=0, mean=torch.zeros(0), total_variance=float("nan"), mean_norm=float("nan"),
                cosine_to_reference=None, seconds=0.0, peak_memory_mb=0.0, graph_memory_mb=0.0,
                reward_mean=float("nan"), error=str(error),
            )
        results.append(stats)
    reference_stats = next((s for s in results if s.name == reference and s.error is None), None)
    if reference_stats is not None:
        for stats in results:
            if stats.error is None:
                stats.cosine_to_reference = cosine(stats.mean, reference_stats.mean)
    return results
