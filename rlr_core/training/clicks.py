"""Click sessions of a preference run: rounds of images to click, each turned into one Trainer iteration.

A session samples a round with the run's estimator (``estimator.rollout``, keeping what the gradient
needs), logs the user's click in the click log (``rlr_core.rewards.click_log``, durable before use), and
updates with the clicks as rewards (direct mode) or with the refitted learned head's rewards on the shown
images (learned mode, ``rlr_core.rewards.preference_head``) through ``trainer.update_from_rewards``: a step,
a metrics line and checkpoints when due, like any other iteration. See docs/rewards.md (preference).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from PIL import Image

from ..rewards.click_log import ClickLog, ClickRecord, click_rewards, image_sha256, to_uint8
from ..rewards.preference_head import MODES, PreferenceReward

__all__ = ["PreferenceRound", "PreferenceSession", "PreferenceUpdate"]


@dataclass
class PreferenceRound:
    """One batch shown to the user. ``rollout`` is what the estimator needs for the update."""

    round_id: str
    prompts: list[str]
    seed: int | None
    images: torch.Tensor  # [B, 3, H, W] cpu float in [0, 1], detached (what is displayed)
    image_hashes: list[str]
    rollout: Any = field(repr=False, default=None)
    records: list[ClickRecord] | None = None
    updated: bool = False

    @property
    def size(self) -> int:
        return len(self.prompts)

    @property
    def clicked(self) -> bool:
        return self.records is not None

    def pil_images(self) -> list[Any]:
        """The images as PIL (for a UI gallery)."""

        return [Image.fromarray(a) for a in to_uint8(self.images)]


@dataclass
class PreferenceUpdate:
    """What ``PreferenceSession.update`` did (``report``: the Trainer's StepReport of the update)."""

    round_id: str
    rewards: list[float]
    update_norm: float
    report: Any


class PreferenceSession:
    """Rounds of images to click, each turned into one iteration of the run's Trainer.

    ``trainer``: the run's ``rlr_core.training.Trainer`` (anything with ``chain``, ``estimator`` and
    ``update_from_rewards(rollout, rewards) -> StepReport``): its estimator samples the rounds and
    every click update is a Trainer iteration (a step, a metrics line, checkpoints when due).
    ``k``: how many images the user must choose per round in ``click(chosen=...)`` (None = any
    number between 1 and B-1).
    """

    def __init__(
        self,
        trainer: Any,
        log: ClickLog | str | os.PathLike,
        mode: str = "direct",
        k: int | None = 1,
        reward: PreferenceReward | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} is not allowed; allowed values: {list(MODES)}")
        if k is not None and int(k) < 1:
            raise ValueError(f"k={k!r} is not allowed; allowed values: an integer >= 1 or None")
        self.trainer = trainer
        self.log = log if isinstance(log, ClickLog) else ClickLog(log)
        self.mode = mode
        self.k = None if k is None else int(k)
        self.reward: PreferenceReward | None = None
        if mode == "learned":
            self.reward = reward if reward is not None else PreferenceReward(self.log, features="auto")
            if self.reward.log is not self.log:
                self.reward.refit(self.log)

    def new_round(self, prompts: Sequence[str], generator: torch.Generator | None = None, seed: int | None = None) -> PreferenceRound:
        """Sample one batch (one image per prompt) and keep what the update will need."""
        prompts = [str(p) for p in prompts]
        if len(prompts) < 2:
            raise ValueError(f"a round needs at least 2 images to compare, got {len(prompts)} prompts")
        if self.k is not None and self.k >= len(prompts):
            raise ValueError(f"k={self.k} must be smaller than the number of images per round ({len(prompts)})")
        if generator is None:
            seed = int(seed) if seed is not None else int(torch.randint(0, 2**31 - 1, (1,)).item())
            generator = torch.Generator().manual_seed(seed)
        else:
            seed = int(generator.initial_seed())
        differentiable = self.mode == "learned"
        rollout = self.trainer.estimator.rollout(self.trainer.chain, prompts, generator, differentiable_reward=differentiable)
        images = rollout.images.detach().float().cpu()
        hashes = [image_sha256(a) for a in to_uint8(images)]
        return PreferenceRound(uuid.uuid4().hex, prompts, seed, images, hashes, rollout)

    def click(self, round: PreferenceRound, chosen: Sequence[int] | None = None, ranks: Sequence[int] | None = None) -> list[ClickRecord]:
        """Record the user's choice (logged and fsynced before anything uses it)."""
        if round.clicked:
            raise ValueError(f"round {round.round_id} was already clicked")
        if chosen is not None and self.k is not None and len(list(chosen)) != self.k:
            raise ValueError(f"chosen={list(chosen)} must pick exactly k={self.k} images")
        flags, rank_list, _ = click_rewards(round.size, chosen, ranks)
        round.records = self.log.append_round(round.round_id, round.prompts, round.seed, to_uint8(round.images), flags, rank_list, self.mode)
        if self.reward is not None:
            self.reward.refit(self.log)
        return round.records

    def rewards_for(self, round: PreferenceRound) -> torch.Tensor:
        """Rewards of the round: clicks (direct) or the refitted head on the rollout's images (learned)."""
        if not round.clicked:
            raise ValueError(f"round {round.round_id} has no click yet; call click() first")
        if self.mode == "direct":
            recs = sorted(round.records or [], key=lambda r: r.index)
            chosen = None if recs[0].rank is not None else [r.index for r in recs if r.chosen]
            ranks = [r.rank for r in recs] if recs[0].rank is not None else None
            return click_rewards(round.size, chosen, ranks)[2]  # type: ignore[arg-type]
        assert self.reward is not None
        return self.reward(round.rollout.images, round.prompts)

    def update(self, round: PreferenceRound) -> PreferenceUpdate:
        """One optimiser step from the round's clicks, through the round's own trajectories."""
        if round.updated:
            raise ValueError(f"round {round.round_id} was already used for an update")
        if round.rollout is None:
            raise ValueError(f"round {round.round_id} has no rollout (rounds do not survive a restart; sample a new one)")
        rewards = self.rewards_for(round)
        report = self.trainer.update_from_rewards(round.rollout, rewards)
        round.updated, round.rollout = True, None  # free the kept graph / states
        values = [float(v) for v in rewards.detach().cpu()]
        norm = float(report.update_norm)
        self.log.append_event("update", round_id=round.round_id, rewards=values, update_norm=norm, mode=self.mode,
                              step=int(report.step))
        return PreferenceUpdate(round.round_id, values, norm, report)

    def history(self) -> dict[str, list[ClickRecord]]:
        """Every clicked round in the log (survives restarts)."""
        return self.log.rounds()
