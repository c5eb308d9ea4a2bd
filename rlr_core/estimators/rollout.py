"""The two records an estimate passes around: the rollout (phase 1: the sampled batch and what the
gradient needs) and the gradient estimate (phase 2: the result and what it cost). docs/estimators.md."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import torch

from ..chain import Chain
from ..sampling import RecordedStep


@dataclass
class RolloutData:
    """What an estimator keeps from its rollout for ``parts``.

    The fields code shared between estimators reads are named here: ``cond`` (the batch's condition)
    and ``record`` (the steps recorded for likelihood-ratio terms, read by ``Estimator.ppo_part``).
    An estimator that keeps more declares a subclass with its own named fields (``RLRData``,
    ``DraftLVData``...). Reading by name, ``data["cond"]`` / ``data.get("cond")``, works too.
    """

    cond: Any = None
    record: dict[int, RecordedStep | None] | None = None

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in {f.name for f in fields(self)}

    def __getitem__(self, key: str) -> Any:
        if key not in self:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in self else default

    def keys(self) -> list[str]:
        return [f.name for f in fields(self)]


@dataclass
class Rollout:
    """A sampled batch and what the estimator keeps to compute its gradient later."""

    chain: Chain
    prompts: list[str]
    images: torch.Tensor  # may carry the autograd graph of the first-order step
    differentiable_reward: bool
    steps: dict[str, list[int]]
    data: RolloutData = field(default_factory=RolloutData)
    seconds: float = 0.0
    uses: int = 0  # gradients computed from it so far (PPO epochs reuse a rollout)
    # states[k]: the batch's state x[k] entering step k, every k, all sampled at the unperturbed theta; filled by an
    # estimator with keep_states set that can (rlr without ZO steps), for the KL to the base model; None otherwise
    states: dict[int, torch.Tensor] | None = field(default=None, repr=False)

    def display_images(self) -> torch.Tensor:
        """Detached float32 cpu copy of the images, for showing or saving."""
        return self.images.detach().float().cpu()


@dataclass
class GradientEstimate:
    """One gradient estimate and what it cost."""

    rewards: torch.Tensor  # [B], float32, cpu
    images: torch.Tensor  # [B, 3, H, W] in [0, 1], detached, cpu
    prompts: list[str]
    parts: dict[str, torch.Tensor]  # flat float32 gradient of -E[r] per part
    grad_norms: dict[str, float]  # per part and "total"
    steps: dict[str, list[int]]  # the chain steps each part covered
    seconds: float = 0.0
    peak_memory_mb: float = 0.0
    graph_memory_mb: float = 0.0
    skipped: str | None = None  # why the update must be skipped (p.grad is zero then)
    info: dict[str, float] = field(default_factory=dict)  # estimator-specific numbers (part weights, clip fraction)
    rollout: Rollout | None = field(default=None, repr=False)

    @property
    def total(self) -> torch.Tensor:
        """The flat gradient written into p.grad."""
        return sum(self.parts.values()) if self.parts else torch.zeros(0)
