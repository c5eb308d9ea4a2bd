"""The Reward protocol: ``reward(images [B, 3, H, W] in [0, 1], prompts) -> float32 [B]`` (see docs/rewards.md)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

__all__ = ["Reward"]


@runtime_checkable
class Reward(Protocol):
    """What estimators and the trainer need from a reward (names are binding)."""

    name: str
    differentiable: bool

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """float32 [B] on ``images.device``; differentiable in ``images`` when ``differentiable``."""
        ...
