"""The batch of an iteration: its prompts and its noise generator, both drawn from ``(config.seed, step)``
so that a run is reproducible and resumable bit for bit (see docs/config.md, ``seed`` and ``prompts``)."""

from __future__ import annotations

import random
from typing import Any, Sequence

import torch

from .reports import step_seed

__all__ = ["batch_prompt_indices", "prompt_indices", "step_generator"]


def batch_prompt_indices(seed: int, step: int, batch_size: int, noise_groups: int, num_prompts: int) -> list[int]:
    """The prompts of iteration ``step`` as indices into the training prompts (seeded by (seed, step)).

    Every prompt appears equally often (up to one) in a batch; estimators that split the batch in
    ``noise_groups`` groups sharing noise (antithetic +/- halves, quarters) get n prompts repeated
    that many times, so that samples sharing noise share their prompt too.
    """
    rng = random.Random(step_seed(seed, step, "prompts"))
    n = batch_size // noise_groups
    pool = list(range(num_prompts))
    chosen = pool * (n // len(pool)) + rng.sample(pool, n % len(pool))
    rng.shuffle(chosen)
    return chosen * noise_groups


def prompt_indices(config_prompts: Sequence[Any], prompts: list[Any]) -> list[int | str]:
    """Each prompt as its index in ``config_prompts`` (the first equal text), or as its text when absent."""
    first_index: dict[str, int] = {}
    for index, text in enumerate(config_prompts):
        first_index.setdefault(str(text), index)
    return [first_index.get(str(p), str(p)) for p in prompts]


def step_generator(seed: int, step: int) -> torch.Generator:
    """The CPU generator of iteration ``step``, seeded from (seed, step)."""
    return torch.Generator(device="cpu").manual_seed(step_seed(seed, step))
