"""Evaluation on fixed seeds: sample one image per seed with fixed noise and score it, without touching the
global RNG states, so evaluating never changes the training trajectory (``eval_seeds``, ``eval_every``;
see docs/config.md). :func:`evaluate_guarded` adds the reward-hacking guard's figures (held-out reward,
diversity, KL to the base model; ``rlr_core.training.guard``, docs/guard.md)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from ..chain import Chain, LoraChain
from ..images import to_pil
from ..kl import recorded_trajectory_kl
from ..rewards import Reward
from ..sampling import sample
from .guard import FeatureProbe, diversity_of, prompt_groups
from .run_folder import isolated_rng

__all__ = ["Evaluation", "evaluate", "evaluate_guarded", "eval_due"]


def evaluate(
    chain: Chain, reward: Reward, seeds: list[int], prompts: list[Any], adapters: bool = True
) -> tuple[list[Any] | None, list[float]]:
    """Sample one image per seed (fixed noise) and score it; returns (PIL images or None, rewards).

    ``prompts`` are cycled over the seeds. ``adapters=False`` samples with the LoRA disabled (the
    "before" images) when the chain supports ``adapters_disabled()``; otherwise the current
    parameters are used. The global RNG states are left untouched. (:func:`evaluate_guarded` without
    the guard's figures.)
    """
    result = evaluate_guarded(chain, reward, seeds, prompts, probe=None, adapters=adapters)
    return result.images, result.rewards


@dataclass
class Evaluation:
    """One evaluation: the images (PIL or None), the reward of each, and the guard's raw figures."""

    images: list[Any] | None
    rewards: list[float]
    heldout: list[float] | None  # the held-out reward of each image (None without one)
    diversity_raw: float | None  # mean pairwise distance of a prompt's images (not yet relative to the base)
    kl: list[float] | None  # per-image trajectory KL to the base model (None: LoRA off, or no base model)
    space: str  # the feature space of the diversity figure ("" without a probe)


def evaluate_guarded(
    chain: Chain, reward: Reward, seeds: list[int], prompts: list[Any], probe: FeatureProbe | None,
    adapters: bool = True,
) -> Evaluation:
    """As :func:`evaluate`, plus (with a ``probe``) the held-out reward, the diversity of each prompt's images and
    (LoRA on) the trajectory KL of the images to the base model, all from the same sampled trajectories."""
    seeds = [int(s) for s in seeds]
    prompts = [prompts[i % len(prompts)] for i in range(len(seeds))]
    lora_off = not adapters and isinstance(chain, LoraChain)
    with_kl = probe is not None and adapters and hasattr(chain, "adapters_disabled")
    record: dict[int, Any] | None = {k: None for k in range(int(chain.num_steps))} if with_kl else None
    context = chain.adapters_disabled() if lora_off else contextlib.nullcontext()
    texts = [str(p) for p in prompts]
    groups = prompt_groups(texts)
    with isolated_rng(), torch.no_grad():
        with context:
            images = sample(chain, prompts, seeds=seeds, record=record)
        rewards = reward(images, texts)
        heldout = probe.heldout(images, texts) if probe is not None else None
        diversity = diversity_of(probe.features(images), groups, probe.space) if probe is not None else None
        kl = recorded_trajectory_kl(chain, record, chain.condition(list(prompts))) if record is not None else None
    values = [float(r) for r in torch.as_tensor(rewards).detach().double().cpu().reshape(-1)]
    return Evaluation(images=to_pil(images), rewards=values, heldout=heldout, diversity_raw=diversity, kl=kl,
                      space=probe.space if probe is not None else "")


def eval_due(step: int, steps: int, every: int) -> bool:
    """Whether iteration ``step`` of ``steps`` evaluates: every ``every`` iterations (0 = never) and the last."""
    return step == steps or (every > 0 and step % every == 0)
