"""Small helpers every estimator uses: flat gradients, writing p.grad, grouped prompt batches, draws."""

from __future__ import annotations

from typing import Any

import torch


def flatten(tensors: list[torch.Tensor | None], like: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate gradients into one flat float32 vector (None counts as zeros)."""
    return torch.cat(
        [
            (t if t is not None else torch.zeros_like(p)).detach().reshape(-1).float()
            for t, p in zip(tensors, like)
        ]
    )


def part_gradient(loss: torch.Tensor, params: list[torch.Tensor], retain_graph: bool = False) -> torch.Tensor:
    """Flat gradient of ``loss`` in ``params`` (parameters the loss does not touch get zeros);
    ``retain_graph`` keeps the graph for a second part that shares it."""
    grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=retain_graph)
    return flatten(list(grads), params)


def write_grads(params: list[torch.Tensor], flat: torch.Tensor) -> None:
    """Set ``p.grad`` of every parameter from one flat vector."""
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).to(device=p.device, dtype=p.dtype).clone()
        offset += n


def grouped_prompts(prompts: list[Any], batch_size: int, groups: int) -> list[Any]:
    """A batch of ``batch_size`` prompts in ``groups`` noise groups: n = batch_size / groups prompts
    (cycling through ``prompts``) repeated ``groups`` times, so rows sharing noise share the prompt."""
    if groups < 1 or batch_size % groups:
        raise ValueError(f"batch_size must be a multiple of {groups} (the estimator's noise groups), got {batch_size}")
    if not prompts:
        raise ValueError("prompts must not be empty")
    n = batch_size // groups
    return [prompts[i % len(prompts)] for i in range(n)] * groups


def random_int(generator: torch.Generator, high: int) -> int:
    """A uniform integer in [0, high) drawn from ``generator``."""
    return int(torch.randint(0, high, (1,), generator=generator, device=generator.device).item())
