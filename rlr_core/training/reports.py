"""What one training iteration reports: :class:`StepReport` (the line of ``metrics.jsonl``, what trackers
log, what the app and the CLI show), :class:`TrainingStepError`, the per-iteration seeds and the two
gradient summaries of a report (cosines between estimator parts, cosine to the running mean of earlier
estimates). See docs/config.md for the metrics fields.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..diagnostics import cosine
from ..distributed import BatchShard, max_over_processes
from ..estimators.base import GradientEstimate
from ..images import to_pil

__all__ = ["StepReport", "TrainingStepError", "RunningMean", "part_cosines", "step_seed", "json_safe", "step_report"]


class TrainingStepError(RuntimeError):
    """An iteration failed; the LoRA trained so far was saved before this was raised.

    Attributes: ``step`` (the iteration that failed), ``saved_to`` (the LoRA export directory),
    ``checkpoint`` (checkpoint of the last completed iteration, or None). The original exception
    is ``__cause__``.
    """

    def __init__(self, message: str, step: int, saved_to: str | None, checkpoint: str | None) -> None:
        super().__init__(message)
        self.step = step
        self.saved_to = saved_to
        self.checkpoint = checkpoint


@dataclass
class StepReport:
    """What one training iteration did. Images are PIL images (only for image-shaped chains)."""

    step: int  # 1-based index of this iteration
    reward_mean: float  # mean of the finite rewards of the batch
    reward_std: float
    rewards: list[float]
    grad_norms: dict[str, float]  # per estimator part and "total" (before clipping)
    cosines: dict[str, float]  # pairwise cosine between parts, e.g. "fo~ho"
    update_norm: float  # |theta_after - theta_before| over the whole iteration
    seconds: float
    peak_memory_mb: float
    skipped: str | None = None  # why the update was skipped (parameters unchanged), else None
    eval_images: list[Any] | None = None
    eval_rewards: list[float] | None = None
    message: str = ""
    total_steps: int = 0
    prompts: list[str] = field(default_factory=list)
    # the prompts as indices into config.prompts (the metrics line stores these, not the texts);
    # a prompt that is not in config.prompts (a click round's own) appears as its text
    prompt_indices: list[int | str] = field(default_factory=list)
    sample_images: list[Any] | None = None  # the first ``config.report_samples`` training images
    before_images: list[Any] | None = None  # first report of a fresh run: eval images before training
    before_rewards: list[float] | None = None
    checkpoint: str | None = None  # path of the checkpoint written after this iteration
    graph_memory_mb: float = 0.0
    chain_steps: dict[str, list[int]] = field(default_factory=dict)  # chain steps each part covered
    # cosine of this iteration's parts (and "total") to the running mean of earlier estimates:
    # a per-iteration signal check (near 0 = mostly noise); empty at the first iteration
    signal: dict[str, float] = field(default_factory=dict)
    info: dict[str, float] = field(default_factory=dict)  # estimator numbers (part weights, PPO clip fraction)
    # the reward-hacking guard's figures at an evaluation (rlr_core.training.guard; None without one)
    heldout_reward: float | None = None  # mean held-out reward of the eval images
    diversity: float | None = None  # pairwise distance of a prompt's eval images, base model = 1.0
    kl: float | None = None  # mean trajectory KL of the eval images to the base model
    guard: dict[str, Any] | None = None  # the verdict: accepted, refused (reasons), kept_step, kept_reason, stop
    before_guard: dict[str, Any] | None = None  # first report of a fresh run: the base model's figures

    @property
    def eval_reward_mean(self) -> float | None:
        """Mean of ``eval_rewards`` (None when there was no evaluation)."""
        if not self.eval_rewards:
            return None
        return float(np.mean(self.eval_rewards))

    def to_json_dict(self) -> dict[str, Any]:
        """The report without images, JSON-safe (non-finite numbers become null): the metrics line.

        Prompts appear as ``prompt_indices`` into the run's ``config.prompts`` (saved once in
        ``output_dir/config.yaml``), not as texts, so long prompts do not grow every line.
        """
        data = {
            "step": self.step,
            "total_steps": self.total_steps,
            "reward_mean": self.reward_mean,
            "reward_std": self.reward_std,
            "rewards": self.rewards,
            "grad_norms": self.grad_norms,
            "cosines": self.cosines,
            "update_norm": self.update_norm,
            "seconds": self.seconds,
            "peak_memory_mb": self.peak_memory_mb,
            "graph_memory_mb": self.graph_memory_mb,
            "skipped": self.skipped,
            "prompt_indices": list(self.prompt_indices),
            "chain_steps": self.chain_steps,
            "signal": self.signal,
            "info": self.info,
            "eval_rewards": self.eval_rewards,
            "eval_reward_mean": self.eval_reward_mean,
            "before_rewards": self.before_rewards,
            "heldout_reward": self.heldout_reward,
            "diversity": self.diversity,
            "kl": self.kl,
            "guard": self.guard,
            "before_guard": self.before_guard,
            "checkpoint": self.checkpoint,
            "message": self.message,
        }
        return json_safe(data)



def step_seed(seed: int, step: int, stream: str = "noise") -> int:
    """A 63-bit seed derived from ``(seed, step, stream)``; stable across runs and platforms."""
    digest = hashlib.sha256(f"{int(seed)}:{int(step)}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)



class RunningMean:
    """Exponential moving average of earlier total estimates (decay 0.9), the per-iteration reference."""

    def __init__(self, decay: float = 0.9) -> None:
        self.decay = decay
        self.mean: torch.Tensor | None = None
        self.weight = 0.0

    def cosines(self, estimate: GradientEstimate) -> dict[str, float]:
        """Cosine of each part and of the total to the mean so far; then add this estimate to it."""
        parts = {k: v.detach().double().cpu().reshape(-1) for k, v in estimate.parts.items()}
        if not parts or estimate.skipped:
            return {}
        total = sum(parts.values())
        result: dict[str, float] = {}
        if self.mean is not None:
            reference = self.mean / self.weight
            result = {name: cosine(value, reference) for name, value in {**parts, "total": total}.items()}
        self.mean = total.clone() if self.mean is None else self.decay * self.mean + total
        self.weight = self.decay * self.weight + 1.0
        return result



def part_cosines(parts: dict[str, torch.Tensor]) -> dict[str, float]:
    """Cosine between every pair of estimator parts, keyed "a~b" in the parts' order (NaN if a part is zero)."""
    names = list(parts)
    result: dict[str, float] = {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            u, v = parts[a].double().reshape(-1), parts[b].double().reshape(-1)
            denominator = float(u.norm() * v.norm())
            result[f"{a}~{b}"] = float(u @ v) / denominator if denominator > 0 else float("nan")
    return result



def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as None and numpy scalars as Python numbers (for JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return json_safe(value.item())
    return value


def step_report(step: int, estimate: GradientEstimate, prompt_indices: list[int | str], update_norm: float, peak: float,
                learning_rate: float, config: Any, shard: BatchShard, signal_reference: RunningMean) -> StepReport:
    """The report of iteration ``step`` from its (applied) estimate: the whole batch's rewards and prompts
    (gathered over the processes), the largest peak memory of any process, and the signal cosines
    (which also adds ``estimate`` to ``signal_reference``). Images, timing and messages come later."""
    rewards = [float(r) for r in shard.gather(estimate.rewards).double().cpu().reshape(-1)]  # whole batch
    finite = [r for r in rewards if math.isfinite(r)]
    return StepReport(
        step=step,
        reward_mean=float(np.mean(finite)) if finite else float("nan"),
        reward_std=float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0,
        rewards=rewards,
        grad_norms={k: float(v) for k, v in estimate.grad_norms.items()},
        cosines=part_cosines(estimate.parts),
        update_norm=update_norm,
        seconds=0.0,
        peak_memory_mb=max_over_processes(peak),
        skipped=estimate.skipped,
        total_steps=config.steps,
        prompts=[str(p) for p in shard.gather_objects(estimate.prompts)],
        prompt_indices=list(prompt_indices),
        sample_images=(to_pil(estimate.images[: config.report_samples]) if config.report_samples else None),
        graph_memory_mb=max_over_processes(estimate.graph_memory_mb),
        chain_steps={k: list(v) for k, v in estimate.steps.items()},
        signal=signal_reference.cosines(estimate),
        info={**{k: float(v) for k, v in estimate.info.items()},
              **({"lr": learning_rate} if config.lr_schedule != "constant" else {})},
    )