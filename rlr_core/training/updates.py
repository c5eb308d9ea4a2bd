"""The parameter update of an iteration: the learning-rate schedule, the KL-to-base-model term added to the
estimate, gradient checks and clipping, one AdamW step, and the message a report shows about it
(``lr``, ``lr_schedule``, ``max_grad_norm``, ``kl_weight``; see docs/config.md)."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..chain import Chain
from ..config import TrainConfig, lr_factor
from ..distributed import BatchShard, World, sum_over_processes
from ..estimators.base import GradientEstimate, flatten, write_grads
from ..kl import trajectory_kl_gradient
from .reports import step_seed

__all__ = ["set_learning_rate", "add_kl_gradient", "apply_update", "update_message", "zero_grads", "change_norm"]


def set_learning_rate(optimizer: torch.optim.Optimizer, config: TrainConfig, step: int) -> float:
    """Set the learning rate of iteration ``step`` (``lr`` x the schedule's factor) and return it.
    The schedule is a function of the step, so a resumed run needs no schedule state."""
    learning_rate = config.lr * lr_factor(config.lr_schedule, step, config.steps)
    for group in optimizer.param_groups:
        group["lr"] = learning_rate
    return learning_rate


def add_kl_gradient(chain: Chain, params: list[torch.Tensor], config: TrainConfig, step: int,
                    shard: BatchShard, world: World, estimate: GradientEstimate) -> None:
    """Add ``kl_weight`` x the gradient of the trajectory KL to the base model (``rlr_core.kl``; its local part
    with ``kl_kind`` "local") to p.grad, as the estimate's part "kl"; its value goes to ``estimate.info["kl"]``.
    The KL is read off the estimate's own trajectories when its rollout kept their states (``Rollout.states``, with
    ``kl_trajectories`` "own"), else off a batch it samples."""
    generator = torch.Generator(device="cpu").manual_seed(step_seed(config.seed, step, f"kl:{shard.start}"))
    states = estimate.rollout.states if estimate.rollout is not None else None  # None: the KL samples its own batch
    grads, value = trajectory_kl_gradient(chain, list(estimate.prompts), generator, config.kl_steps, shard.global_size,
                                          config.kl_kind, states)
    flat = flatten(grads, params)
    kl_value = torch.tensor([value], dtype=torch.float64)
    if world.distributed:
        flat, kl_value = sum_over_processes(flat), sum_over_processes(kl_value)
    flat = float(config.kl_weight) * flat
    estimate.parts = {**estimate.parts, "kl": flat}
    total = sum(estimate.parts.values())  # what the estimator wrote into p.grad, plus the KL part
    write_grads(params, total)
    estimate.grad_norms = {**estimate.grad_norms, "kl": float(flat.norm()), "total": float(total.norm())}
    estimate.info = {**estimate.info, "kl": float(kl_value)}


def apply_update(params: list[torch.Tensor], optimizer: torch.optim.Optimizer, estimate: GradientEstimate,
                 max_grad_norm: float) -> float:
    """Clip ``p.grad`` and take one optimizer step; return the norm of the parameter change.

    Nothing changes (and 0.0 is returned) when ``estimate.skipped`` is set, or the gradient is not
    finite or exactly zero (e.g. every reward of the batch equal, the images saturated: an AdamW step
    would still move the LoRA along its momentum and weight decay); the latter two set
    ``estimate.skipped`` to say why.
    """
    if estimate.skipped:
        zero_grads(params)
        return 0.0
    grads = [p.grad for p in params]
    if any(g is None for g in grads):
        missing = sum(g is None for g in grads)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
        for p, g in zip(params, grads):
            p.grad = g
        if missing == len(grads):
            estimate.skipped = "the estimator wrote no gradient: update skipped, LoRA kept"
            zero_grads(params)
            return 0.0
    if not all(bool(torch.isfinite(g).all()) for g in grads):
        estimate.skipped = "non-finite gradient: update skipped, LoRA kept"
        zero_grads(params)
        return 0.0
    if not any(bool(g.any()) for g in grads):  # AdamW would still move the LoRA along its momentum
        estimate.skipped = "zero gradient (nothing to learn from these rewards): update skipped, LoRA kept"
        zero_grads(params)
        return 0.0
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    before = [p.detach().clone() for p in params]
    optimizer.step()
    zero_grads(params)
    return change_norm(params, before)


def change_norm(params: list[torch.Tensor], before: list[torch.Tensor]) -> float:
    """|params - before| over all tensors (float64)."""
    with torch.no_grad():
        return math.sqrt(sum(float((p.detach() - b).double().pow(2).sum()) for p, b in zip(params, before)))


def update_message(estimate: GradientEstimate, max_grad_norm: float) -> str:
    """What a report says about an update: why it was skipped, or that the gradient was clipped ("" otherwise)."""
    if estimate.skipped:
        return f"skipped: {estimate.skipped}"
    total = float(estimate.grad_norms.get("total", 0.0))
    if max_grad_norm > 0 and total > max_grad_norm:
        return f"clipped grad norm {total:.4g} -> {max_grad_norm:g}"
    return ""


def zero_grads(params: list[Any]) -> None:
    """Drop every ``p.grad`` (set to None)."""
    for p in params:
        p.grad = None
