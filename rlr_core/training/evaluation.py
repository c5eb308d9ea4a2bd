"""Evaluation on fixed seeds: sample one image per seed with fixed noise and score it, without touching the
global RNG states, so evaluating never changes the training trajectory (``eval_seeds``, ``eval_every``;
see docs/config.md)."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from ..chain import Chain, LoraChain
from ..images import to_pil
from ..rewards import Reward
from ..sampling import sample
from .run_folder import isolated_rng

__all__ = ["evaluate", "eval_due"]


def evaluate(
    chain: Chain, reward: Reward, seeds: list[int], prompts: list[Any], adapters: bool = True
) -> tuple[list[Any] | None, list[float]]:
    """Sample one image per seed (fixed noise) and score it; returns (PIL images or None, rewards).

    ``prompts`` are cycled over the seeds. ``adapters=False`` samples with the LoRA disabled (the
    "before" images) when the chain supports ``adapters_disabled()``; otherwise the current
    parameters are used. The global RNG states are left untouched.
    """
    seeds = [int(s) for s in seeds]
    prompts = [prompts[i % len(prompts)] for i in range(len(seeds))]
    lora_off = not adapters and isinstance(chain, LoraChain)
    context = chain.adapters_disabled() if lora_off else contextlib.nullcontext()
    with isolated_rng(), torch.no_grad(), context:
        images = sample(chain, prompts, seeds=seeds)
        rewards = reward(images, [str(p) for p in prompts])
    values = [float(r) for r in torch.as_tensor(rewards).detach().double().cpu().reshape(-1)]
    return to_pil(images), values


def eval_due(step: int, steps: int, every: int) -> bool:
    """Whether iteration ``step`` of ``steps`` evaluates: every ``every`` iterations (0 = never) and the last."""
    return step == steps or (every > 0 and step % every == 0)
