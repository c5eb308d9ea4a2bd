"""The reward-hacking guard: held-out reward, diversity and KL at every evaluation, and the LoRA worth keeping.

A run can climb its reward while the images stop showing the prompt (saturation turns shapes into
coloured noise; a star reward draws the same star for every seed). Three figures at every evaluation
make that visible (docs/guard.md):

- ``heldout_reward``: the mean of a second reward the run does not train on (``config.heldout_reward``;
  ``auto``: the CLIP score of the prompt, tiny-clip for the tiny model) on the evaluation images;
- ``diversity``: the mean pairwise distance between the evaluation images of the same prompt, in a feature
  space that reads content (the held-out reward's CLIP embeddings: 1 - cosine; without one, pixels: RMS
  difference, labelled ``pixels``), divided by the base model's on the same seeds, so the base is 1.0;
- ``kl``: the trajectory KL of the evaluation images to the base model (``rlr_core.kl``), per image.

With ``keep_best`` the :class:`Guard` remembers the LoRA of the evaluation with the best guarded score:
the eval-reward gain over the base model, among evaluations whose held-out reward is no more than
``guard_tolerance`` x |base| below the base's and whose diversity is at least ``min_diversity``. The base
model itself (iteration 0, gain 0) is the first candidate. ``early_stop_patience`` ends a run after that
many evaluations without a better guarded score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..rewards import Reward
from .checkpoints import lora_state

__all__ = ["FeatureProbe", "Guard", "GuardMetrics", "diversity_of", "prompt_groups"]


def prompt_groups(prompts: list[str]) -> list[list[int]]:
    """Indices of the images of each distinct prompt, in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for index, prompt in enumerate(prompts):
        groups.setdefault(str(prompt), []).append(index)
    return list(groups.values())


def diversity_of(features: torch.Tensor, groups: list[list[int]], space: str) -> float | None:
    """Mean over prompts (with >= 2 images) of the mean pairwise distance between their images' ``features``.

    ``space`` "pixels": RMS difference of the flattened images; otherwise the features are unit vectors and
    the distance is 1 - cosine. None when no prompt has two images.
    """
    values = []
    x = features.detach().double().reshape(features.shape[0], -1)
    for group in groups:
        if len(group) < 2:
            continue
        g = x[group]
        if space == "pixels":
            distances = torch.cdist(g, g) / math.sqrt(g.shape[1])
        else:
            distances = 1.0 - g @ g.T
        n = len(group)
        values.append(float(distances.sum() / (n * (n - 1))))  # the diagonal is 0
    return sum(values) / len(values) if values else None


class FeatureProbe:
    """The held-out reward and the feature space of the diversity figure (plain data out, no gradient)."""

    def __init__(self, heldout_reward: Reward | None, training_reward: Reward | None = None) -> None:
        self.heldout_reward = heldout_reward
        source = next((r for r in (heldout_reward, training_reward) if callable(getattr(r, "image_features", None))),
                      None)
        self._features = source.image_features if source is not None else None
        self.space = f"{getattr(source, 'clip_model', 'clip')} embeddings" if source is not None else "pixels"

    def heldout(self, images: torch.Tensor, prompts: list[str]) -> list[float] | None:
        """The held-out reward of each image (None without one)."""
        if self.heldout_reward is None:
            return None
        with torch.no_grad():
            values = self.heldout_reward(images, [str(p) for p in prompts])
        return [float(v) for v in torch.as_tensor(values).detach().double().cpu().reshape(-1)]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Per-image features of the diversity figure: embeddings, or the pixels as a fallback."""
        with torch.no_grad():
            return (self._features(images) if self._features is not None else images).detach().float().cpu()


@dataclass
class GuardMetrics:
    """The guard's figures of one evaluation (None where they cannot be computed)."""

    heldout_reward: float | None
    diversity: float | None  # relative to the base model's on the same seeds (base = 1.0)
    kl: float | None  # mean per-image trajectory KL to the base model

    def as_dict(self) -> dict[str, Any]:
        return {"heldout_reward": self.heldout_reward, "diversity": self.diversity, "kl": self.kl}


def _mean(values: list[float] | None) -> float | None:
    finite = [v for v in values or [] if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


@dataclass
class Guard:
    """What the guard knows across evaluations: the base model's figures, the best candidate so far and its
    LoRA, the evaluations since it. ``judge`` is called at every evaluation; ``state_dict`` goes into the
    checkpoint so a resumed run keeps it."""

    keep_best: bool = False
    tolerance: float = 0.1
    min_diversity: float = 0.5
    patience: int = 0
    base_eval_reward: float | None = None
    base_heldout: float | None = None
    base_diversity_raw: float | None = None
    best_score: float = 0.0
    best_step: int = 0
    best_lora: dict[str, torch.Tensor] | None = None
    evaluations_since_best: int = 0
    kept_reason: str = "no evaluation yet: the base model (iteration 0)"

    @classmethod
    def from_config(cls, config: Any) -> "Guard":
        return cls(keep_best=bool(config.keep_best), tolerance=float(config.guard_tolerance),
                   min_diversity=float(config.min_diversity), patience=int(config.early_stop_patience))

    # ------------------------------------------------------------------ figures
    def set_base(self, eval_rewards: list[float], heldout: list[float] | None, diversity_raw: float | None,
                 chain: Any = None) -> None:
        """The base model's figures (the "before" evaluation, LoRA off); the base is the first candidate."""
        self.base_eval_reward = _mean(eval_rewards)
        self.base_heldout = _mean(heldout)
        self.base_diversity_raw = diversity_raw
        if self.keep_best and chain is not None and self.best_lora is None:
            self.best_lora = lora_state(chain)  # the untrained LoRA: the base model's images

    def metrics(self, heldout: list[float] | None, diversity_raw: float | None, kl: list[float] | None) -> GuardMetrics:
        """One evaluation's figures; diversity relative to the base model's."""
        relative = None
        if diversity_raw is not None and self.base_diversity_raw:
            relative = diversity_raw / self.base_diversity_raw
        return GuardMetrics(heldout_reward=_mean(heldout), diversity=relative, kl=_mean(kl))

    # ------------------------------------------------------------------ decisions
    def refusals(self, metrics: GuardMetrics) -> list[str]:
        """Why an evaluation cannot be kept (empty: it is a candidate)."""
        reasons = []
        if metrics.heldout_reward is not None and self.base_heldout is not None:
            floor = self.base_heldout - self.tolerance * abs(self.base_heldout)
            if metrics.heldout_reward < floor:
                reasons.append(f"held-out reward {metrics.heldout_reward:.4g} < {floor:.4g} "
                               f"({self.tolerance:.0%} below the base's {self.base_heldout:.4g})")
        if self.min_diversity > 0 and metrics.diversity is not None and metrics.diversity < self.min_diversity:
            reasons.append(f"diversity {metrics.diversity:.3f} < min_diversity {self.min_diversity:g}")
        return reasons

    def judge(self, step: int, eval_rewards: list[float], metrics: GuardMetrics, chain: Any) -> dict[str, Any]:
        """Record evaluation ``step``; with keep_best, keep the chain's LoRA when its guarded score is the best.
        Returns the verdict of the metrics line (``accepted``, ``refused``, ``kept_step``, ``kept_reason``,
        ``stop``)."""
        gain = None if self.base_eval_reward is None else (_mean(eval_rewards) or 0.0) - self.base_eval_reward
        refused = self.refusals(metrics)
        better = not refused and gain is not None and gain > self.best_score
        if better:
            self.best_score, self.best_step, self.evaluations_since_best = gain, step, 0
            self.kept_reason = f"iteration {step}: best eval-reward gain {gain:+.4g} within the guard"
            if self.keep_best:
                self.best_lora = lora_state(chain)
        else:
            self.evaluations_since_best += 1
        stop = self.patience > 0 and self.evaluations_since_best >= self.patience
        verdict = {"step": step, "gain": gain, "accepted": not refused, "refused": refused,
                   "kept_step": self.best_step, "kept_reason": self.kept_reason, "stop": stop}
        return verdict

    def stop_message(self) -> str:
        return (f"early stop: {self.evaluations_since_best} evaluations without a better guarded score "
                f"(early_stop_patience {self.patience}); kept: {self.kept_reason}")

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {"base_eval_reward": self.base_eval_reward, "base_heldout": self.base_heldout,
                "base_diversity_raw": self.base_diversity_raw, "best_score": self.best_score,
                "best_step": self.best_step, "best_lora": self.best_lora,
                "evaluations_since_best": self.evaluations_since_best, "kept_reason": self.kept_reason}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            if hasattr(self, key):
                setattr(self, key, value)

