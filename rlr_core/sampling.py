"""The one sampler loop: every estimator and every plain sampling pass steps through here.

Noise is drawn up front (``NoisePlan``) so that a trajectory is a deterministic function of
its noises: estimators can re-run a segment with autograd on, pair two trajectories on the
same noise (common random numbers), or recompute a step's mean later for a likelihood ratio.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from typing import Any, Iterable

import torch
import torch.utils.checkpoint

from .cancel import check_cancelled
from .chain import Chain, step_std_is_zero


@dataclass
class NoisePlan:
    """x[0] and the step noises eps[k], k = 0 .. T-1, for one group of trajectories."""

    x0: torch.Tensor
    eps: list[torch.Tensor]

    @property
    def batch_size(self) -> int:
        return self.x0.shape[0]


def draw_noise(chain: Chain, batch_size: int, generator: torch.Generator) -> NoisePlan:
    """Draw x[0] with ``chain.initial`` and every step noise from the same generator."""
    x0 = chain.initial(batch_size, generator)
    noise_dtype = torch.float64 if x0.dtype == torch.float64 else torch.float32
    eps = [
        torch.randn(x0.shape, generator=generator, device=generator.device, dtype=noise_dtype).to(x0.device, x0.dtype)
        for _ in range(chain.num_steps)
    ]
    return NoisePlan(x0=x0, eps=eps)


def draw_noise_per_seed(chain: Chain, seeds: list[int]) -> NoisePlan:
    """One NoisePlan whose row i depends only on ``seeds[i]`` (reproducible evaluation images)."""
    plans = [draw_noise(chain, 1, torch.Generator().manual_seed(int(seed))) for seed in seeds]
    return NoisePlan(
        x0=torch.cat([p.x0 for p in plans]),
        eps=[torch.cat([p.eps[k] for p in plans]) for k in range(chain.num_steps)],
    )


def indexed_seed(base: int, index: int) -> int:
    """A 63-bit seed for item ``index`` (a global sample / noise-set index) of a batch whose draws
    start from ``base``: the per-sample streams that make a batch independent of how it is split."""
    digest = hashlib.sha256(f"{int(base)}:{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def take_step(
    chain: Chain,
    x: torch.Tensor,
    k: int,
    cond: Any,
    eps_k: torch.Tensor,
    perturbation: tuple[int, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | float]:
    """One step x[k] -> x[k+1] = mean + std * eps[k]; returns (x_next, mean, std).

    ``perturbation=(seed, scale)`` runs the step with theta + scale * xi(seed) (ZO steps; call
    it with autograd off: the parameters are modified in place and restored).
    """
    check_cancelled()
    context = chain.perturbed(*perturbation) if perturbation is not None else contextlib.nullcontext()
    with context:
        mean, std = chain.step_mean_std(x, k, cond)
    return mean + std * eps_k, mean, std


def run_steps(
    chain: Chain,
    x: torch.Tensor,
    steps: Iterable[int],
    cond: Any,
    noise: NoisePlan,
    perturbations: dict[int, tuple[int, float]] | None = None,
    record: dict[int, "RecordedStep | None"] | None = None,
    checkpointing: bool = False,
    record_means: bool = False,
) -> torch.Tensor:
    """Run consecutive ``steps`` from state ``x``; autograd follows the caller's grad mode.

    ``perturbations[k] = (seed, scale)`` perturbs theta on step k. For every step index that
    is a key of ``record``, the detached input, output and log-probability of the step are
    stored there, for likelihood-ratio terms computed later (with ``record_means`` also the step's
    mean, for the KL to the base model at evaluation). ``checkpointing`` recomputes each
    step in the backward pass instead of keeping its activations (memory O(1) per step).
    """
    perturbations = perturbations or {}
    for k in steps:
        if checkpointing and record is None and torch.is_grad_enabled():
            x = torch.utils.checkpoint.checkpoint(
                lambda state, k=k: take_step(chain, state, k, cond, noise.eps[k], perturbations.get(k))[0],
                x, use_reentrant=False,
            )
            continue
        x_next, mean, std = take_step(chain, x, k, cond, noise.eps[k], perturbations.get(k))
        if record is not None and k in record:
            log_prob = None if step_std_is_zero(std) else gaussian_log_prob(x_next, mean, std).detach()
            record[k] = RecordedStep(x=x.detach(), x_next=x_next.detach(), log_prob=log_prob,
                                     mean=mean.detach() if record_means else None)
        x = x_next
    return x


@dataclass
class RecordedStep:
    """A step kept for a likelihood-ratio term: its input, its sampled output, log p at sampling."""

    x: torch.Tensor
    x_next: torch.Tensor
    log_prob: torch.Tensor | None
    mean: torch.Tensor | None = None  # the step's mean (run_steps with record_means=True)


def gaussian_log_prob(x_next: torch.Tensor, mean: torch.Tensor, std: torch.Tensor | float) -> torch.Tensor:
    """Per-sample log N(x_next; mean, std^2 I) without the theta-independent constant."""
    squared = ((x_next.detach() - mean) ** 2).flatten(1).sum(dim=1)
    return -squared / (2 * std**2)


def step_log_prob(
    chain: Chain, x: torch.Tensor, x_next: torch.Tensor, k: int, cond: Any
) -> torch.Tensor:
    """log N(x_next; mean_theta(x, k), std^2 I) per sample, up to a theta-independent constant.

    Differentiable in theta (x and x_next are treated as data). Raises if the step is
    deterministic, where no likelihood ratio exists.
    """
    check_cancelled()
    mean, std = chain.step_mean_std(x, k, cond)
    if step_std_is_zero(std):
        raise ValueError(
            f"step {k} is deterministic (std 0): a likelihood-ratio term needs eta > 0 on that step"
        )
    return gaussian_log_prob(x_next, mean, std)


@torch.no_grad()
def sample(
    chain: Chain,
    prompts: list[str],
    generator: torch.Generator | None = None,
    seeds: list[int] | None = None,
    record: dict[int, RecordedStep | None] | None = None,
) -> torch.Tensor:
    """Plain sampling (no gradients): images [B, 3, H, W] in [0, 1].

    With ``seeds`` (one per prompt) every image depends only on its own seed and prompt. ``record``
    (step index -> None) is filled with those steps' inputs, outputs and means (``run_steps``).
    """
    if seeds is not None:
        if len(seeds) != len(prompts):
            raise ValueError(f"seeds must have one entry per prompt ({len(prompts)}), got {len(seeds)}")
        noise = draw_noise_per_seed(chain, seeds)
    else:
        noise = draw_noise(chain, len(prompts), generator or torch.Generator().manual_seed(0))
    cond = chain.condition(list(prompts))
    x_T = run_steps(chain, noise.x0, range(chain.num_steps), cond, noise, record=record, record_means=record is not None)
    return chain.decode(x_T)
