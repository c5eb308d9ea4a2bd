"""The one training loop: ``Trainer(chain, reward, estimator, config).run()`` yields a StepReport per iteration.

The UI and the CLI are thin consumers of this generator; nothing else loops over training
steps. Per iteration the Trainer

1. draws the prompt batch and a ``torch.Generator`` from ``(config.seed, step)`` (so a run is
   reproducible, and resumable bit for bit),
2. asks the estimator for ``p.grad`` (``estimate``; for PPO-style estimators with
   ``inner_epochs > 1`` further epochs call ``gradient`` again on the same rollout),
3. applies the update: skipped when the estimate says so (non-finite rewards) or the gradient is
   not finite, otherwise gradient clipping and one AdamW step,
4. evaluates on fixed seeds when due, appends a line to ``metrics.jsonl``, checkpoints when due,
5. yields the ``StepReport`` and checks the stop flag.

At the end of ``run()`` (finished, stopped, closed by the consumer, or failed) the LoRA is exported
to ``output_dir/lora``. A failed iteration also writes a checkpoint of the last completed
iteration (when checkpoints are on) and raises ``TrainingStepError`` naming the step.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from . import distributed
from .cancel import Cancelled, cancellable, shielded
from .chain import Chain, LoraChain
from .checkpoints import (
    CHECKPOINT_FILE,
    CHECKPOINT_PREFIX,
    atomic_directory,
    atomic_write_text,
    checkpoint_dirs,
    isolated_rng,
    latest_checkpoint,
    remove_stale_temporaries,
    rng_state,
    set_rng_state,
)
from .config import TrainConfig, lr_factor
from .diagnostics import cosine
from .estimators.base import Estimator, GradientEstimate, Rollout, flatten, write_grads
from .images import to_pil
from .kl import trajectory_kl_gradient
from .rewards import Reward
from .tracking import Tracker, check_report_to, create_tracker

__all__ = ["StepReport", "Trainer", "TrainingStepError", "latest_checkpoint", "step_seed"]


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
            "checkpoint": self.checkpoint,
            "message": self.message,
        }
        return _json_safe(data)


# ---------------------------------------------------------------------------------------- seeds
def step_seed(seed: int, step: int, stream: str = "noise") -> int:
    """A 63-bit seed derived from ``(seed, step, stream)``; stable across runs and platforms."""
    digest = hashlib.sha256(f"{int(seed)}:{int(step)}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


# ---------------------------------------------------------------------------------------- signal
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


# ---------------------------------------------------------------------------------------- trainer
class Trainer:
    """Runs training iterations of ``estimator`` on ``chain`` against ``reward`` as ``config`` says.

    Typical use::

        trainer = Trainer(chain, reward, estimator, config)
        for report in trainer.run():
            print(report.step, report.reward_mean, report.grad_norms)
            if report.reward_mean > 0.9:
                trainer.stop()          # run() ends after this iteration, the LoRA is exported

    ``run()`` can be called again on the same Trainer to continue (e.g. after raising
    ``config.steps``, or in chunks with ``max_iterations``); state stays in memory.
    """

    def __init__(self, chain: Chain, reward: Reward, estimator: Estimator, config: TrainConfig) -> None:
        config.validate(check_names=False)
        config.check_output_dir()  # ValueError naming output_dir, before any work is done
        self.chain = chain
        self.reward = reward
        self.estimator = estimator
        self.config = config
        self.output_dir = Path(config.output_dir)
        self.params = [p for p in chain.trainable_parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("the chain has no trainable parameters (requires_grad=True); nothing to train")
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=config.weight_decay)
        self.step = 0
        self.prompts = config.training_prompts()
        self.eval_prompts = config.evaluation_prompts()
        self.before_images: list[Any] | None = None
        self.before_rewards: list[float] | None = None
        self._stop_event = threading.Event()
        self._abort_event = threading.Event()
        self._started = False
        self._boundary_rng: dict[str, Any] | None = None
        self._pending_message = ""  # e.g. "resumed from ...", attached to the next report
        self.signal_reference = RunningMean()  # of earlier total estimates, for StepReport.signal
        self.noise_groups = estimator.noise_groups(bool(reward.differentiable))
        if config.batch_size % self.noise_groups:
            raise ValueError(
                f"batch_size must be a multiple of {self.noise_groups} for estimator {estimator.name!r} "
                f"(the batch is split in {self.noise_groups} groups sharing noise); got {config.batch_size}"
            )
        estimator.check(chain, reward, config.batch_size)
        check_report_to(config.report_to)
        self.tracker = Tracker()  # start() replaces it with config.report_to's on rank 0
        # data parallelism (rlr_core.distributed): this process's whole noise sets of every batch
        self.world = distributed.current_world()
        self.shard = distributed.BatchShard.split(config.batch_size, self.noise_groups, self.world)
        if self.world.distributed:
            estimator.set_shard(self.shard)
            distributed.broadcast_parameters(self.params)  # the same LoRA on every process

    @property
    def is_lora_chain(self) -> bool:
        """True when the chain has LoRA adapters (before images with LoRA off, diffusers export)."""
        return isinstance(self.chain, LoraChain)

    # ------------------------------------------------------------------ control
    def stop(self) -> None:
        """Ask ``run()`` to end after the current iteration (thread-safe); the LoRA is exported."""
        self._stop_event.set()

    def abort(self) -> None:
        """Stop now (thread-safe): the iteration in progress is dropped at its next model call and
        ``run()`` ends as after ``stop()`` (the LoRA of the last completed iteration is exported).
        Further PPO epochs of an iteration whose first update is applied are skipped instead."""
        self._abort_event.set()
        self._stop_event.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop_event.is_set()

    # ------------------------------------------------------------------ the loop
    def run(self, max_iterations: int | None = None) -> Iterator[StepReport]:
        """Yield one StepReport per iteration until ``config.steps``, ``stop()`` or ``max_iterations``.

        The first call resumes from the newest checkpoint in ``output_dir`` when
        ``config.resume`` is set, and otherwise starts over (replacing ``metrics.jsonl`` and
        the checkpoints of ``output_dir``). The LoRA is exported to ``output_dir/lora`` when
        ``run()`` ends for any reason.
        """
        self.start()
        done = 0
        try:
            while self.step < self.config.steps and not self._should_stop():
                if max_iterations is not None and done >= max_iterations:
                    break
                try:
                    with cancellable(self._abort_event):
                        report = self._guarded(self.step + 1, self._iteration)
                except Cancelled:
                    break  # abort(): the unfinished iteration changed nothing
                yield report
                done += 1
        except BaseException:
            self._clear_stop()
            with contextlib.suppress(Exception):  # never hide the original error
                self.export_lora(self.output_dir / "lora")
            raise
        self._clear_stop()
        self.export_lora(self.output_dir / "lora")
        self.tracker.flush()

    def _should_stop(self) -> bool:
        """The stop flag, agreed by every process (a stop on any process stops them all together)."""
        return distributed.any_process(self.stop_requested) if self.world.distributed else self.stop_requested

    def _clear_stop(self) -> None:
        self._stop_event.clear()
        self._abort_event.clear()

    def update_from_rewards(self, rollout: Rollout, rewards: torch.Tensor) -> StepReport:
        """One training iteration whose rewards are given (clicks on the images of ``rollout``).

        The update, the StepReport, the metrics line, the evaluation and the checkpoint are those
        of any other iteration; the LoRA is exported afterwards. The LoRA is not re-drawn at the
        start of such a run: ``rollout`` was sampled with it.
        """
        self.start(initialize_lora=False)

        def iteration(step: int) -> StepReport:
            start = time.perf_counter()
            before = [p.detach().clone() for p in self.params]
            self._zero_grads()
            estimate = self.estimator.gradient(rollout, rewards.to(rollout.images.device))
            return self._complete(step, start, estimate, before, self.prompt_indices(rollout.prompts))

        report = self._guarded(self.step + 1, iteration)
        self.export_lora(self.output_dir / "lora")
        return report

    def start(self, initialize_lora: bool = True) -> None:
        """First-run setup (once): resume or start over; the "before" evaluation of a fresh run.

        Temporaries left in ``output_dir`` by a killed process are removed first. A fresh run
        (no checkpoint loaded) re-draws an untrained LoRA from ``config.seed``
        (``initialize_lora``, see :meth:`initialize_lora`).
        """
        if self._started:
            return
        self._started = True
        if not self.world.is_main:  # data parallelism: rank 0 alone writes; the others only resume
            self._start_without_writing(initialize_lora)
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for folder in (self.output_dir, self.output_dir / "checkpoints"):
            remove_stale_temporaries(folder)
        self.tracker = create_tracker(self.config.report_to, self.output_dir, self.config.to_dict())
        message = ""
        self.config.to_yaml(self.output_dir / "config.yaml")
        checkpoint = latest_checkpoint(self.output_dir) if self.config.resume else None
        if checkpoint is not None:
            self.load_checkpoint(checkpoint)
            self._truncate_metrics(self.step)
            message = f"resumed from {checkpoint} at step {self.step}"
        else:
            if self.config.resume:
                message = f"resume requested but no checkpoint in {self.output_dir / 'checkpoints'}; starting over"
            shutil.rmtree(self.output_dir / "checkpoints", ignore_errors=True)
            self._metrics_path().write_text("", encoding="utf-8")
            if self.step == 0 and initialize_lora:
                self.initialize_lora()
            if self.step == 0 and self.config.eval_seeds:
                self.before_images, self.before_rewards = self.evaluate(
                    self.config.eval_seeds, self.eval_prompts, adapters=False
                )
        self._pending_message = message
        self._check_same_step()

    def _start_without_writing(self, initialize_lora: bool) -> None:
        """``start`` on a process other than rank 0: load the newest checkpoint when resuming (rank 0
        loads the same one), else draw the same fresh LoRA from the seed as rank 0; write nothing."""
        checkpoint = latest_checkpoint(self.output_dir) if self.config.resume else None
        if checkpoint is not None:
            self.load_checkpoint(checkpoint)
        elif self.step == 0 and initialize_lora:
            self.initialize_lora()
        self._check_same_step()

    def _check_same_step(self) -> None:
        """Data parallelism: every process must start at the same step (from the same checkpoint)."""
        if not self.world.distributed:
            return
        lowest, highest = int(-distributed.max_over_processes(-self.step)), int(distributed.max_over_processes(self.step))
        if lowest != highest:
            raise RuntimeError(
                f"resume: the processes start at different steps ({lowest} to {highest}); every process "
                "must read rank 0's output_dir/checkpoints (a shared file system, or a copy at the same path)"
            )

    def initialize_lora(self) -> bool:
        """Re-draw the chain's LoRA from ``config.seed`` when it is still untrained; True if it did.

        Without this a fresh LoRA comes from the global RNG at model load, and two identical runs
        differ. Applies to chains with ``lora_is_untrained()`` and ``reset_lora(seed)``
        (``DiffusersChain``; optional LoraChain extras, the Chain protocol is unchanged) whose
        LoRA changes nothing yet (every lora_B zero): a trained or loaded LoRA, e.g. the app's
        "continue from the current LoRA", is kept. ``start()`` calls it for a fresh run.
        """
        untrained = getattr(self.chain, "lora_is_untrained", None)
        reset = getattr(self.chain, "reset_lora", None)
        if not (callable(untrained) and callable(reset)) or not untrained():
            return False
        reset(step_seed(self.config.seed, 0, "lora-init"))
        return True

    def _guarded(self, step: int, iteration: Any) -> StepReport:
        """``iteration(step)``; on failure save the LoRA (and a checkpoint) and raise TrainingStepError."""
        self._boundary_rng = rng_state()
        try:
            return iteration(step)
        except Cancelled:
            set_rng_state(self._boundary_rng)  # as if the iteration had not started
            raise
        except Exception as error:
            saved, checkpoint = self._save_after_failure()
            where = f"LoRA of step {self.step} saved to {saved}" if saved else "saving the LoRA failed too"
            if not self.world.is_main:
                where = "rank 0 saves the LoRA of the last completed iteration"
            if checkpoint:
                where += f", checkpoint {checkpoint}"
            raise TrainingStepError(
                f"training step {step} failed ({type(error).__name__}: {error}); {where}",
                step=step,
                saved_to=saved,
                checkpoint=checkpoint,
            ) from error

    def _iteration(self, step: int) -> StepReport:
        start = time.perf_counter()
        indices = self.batch_prompt_indices(step)  # the whole batch's
        prompts = self.shard.select([self.prompts[i] for i in indices])  # this process's rows (all of them alone)
        generator = self.generator_for(step)
        before = [p.detach().clone() for p in self.params]
        self._zero_grads()
        estimate = self.estimator.estimate(self.chain, self.reward, prompts, generator)
        return self._complete(step, start, estimate, before, indices)

    def _complete(
        self,
        step: int,
        start: float,
        estimate: GradientEstimate,
        before: list[torch.Tensor],
        prompt_indices: list[int | str],
    ) -> StepReport:
        """Apply the update (and further PPO epochs), evaluate when due, checkpoint, log the metrics."""
        config = self.config
        learning_rate = config.lr * lr_factor(config.lr_schedule, step, config.steps)
        for group in self.optimizer.param_groups:  # the schedule is a function of the step: resumes need no state
            group["lr"] = learning_rate
        if config.kl_weight > 0 and not estimate.skipped:
            self._add_kl_gradient(step, estimate)
        epoch_messages = [self._update_message(estimate, self.apply_update(estimate))]
        peak = float(estimate.peak_memory_mb)
        for _ in range(1, self.estimator.inner_epochs):
            if estimate.skipped or estimate.rollout is None or self._should_stop():
                break
            try:
                again = self.estimator.gradient(estimate.rollout, estimate.rewards)
            except Cancelled:
                break  # abort(): the epochs applied so far make this iteration
            epoch_messages.append(self._update_message(again, self.apply_update(again)))
            peak = max(peak, float(again.peak_memory_mb))
        with torch.no_grad():
            update_norm = math.sqrt(sum(float((p.detach() - b).double().pow(2).sum()) for p, b in zip(self.params, before)))
        estimate.rollout = None  # free the graph / activations before evaluating

        rewards = [float(r) for r in self.shard.gather(estimate.rewards).double().cpu().reshape(-1)]  # whole batch
        finite = [r for r in rewards if math.isfinite(r)]
        report = StepReport(
            step=step,
            reward_mean=float(np.mean(finite)) if finite else float("nan"),
            reward_std=float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0,
            rewards=rewards,
            grad_norms={k: float(v) for k, v in estimate.grad_norms.items()},
            cosines=part_cosines(estimate.parts),
            update_norm=update_norm,
            seconds=0.0,
            peak_memory_mb=distributed.max_over_processes(peak),
            skipped=estimate.skipped,
            total_steps=config.steps,
            prompts=[str(p) for p in self.shard.gather_objects(estimate.prompts)],
            prompt_indices=list(prompt_indices),
            sample_images=(to_pil(estimate.images[: config.report_samples]) if config.report_samples else None),
            graph_memory_mb=distributed.max_over_processes(estimate.graph_memory_mb),
            chain_steps={k: list(v) for k, v in estimate.steps.items()},
            signal=self.signal_reference.cosines(estimate),
            info={**{k: float(v) for k, v in estimate.info.items()},
                  **({"lr": learning_rate} if config.lr_schedule != "constant" else {})},
        )
        self.step = step
        self._boundary_rng = rng_state()  # evaluation below leaves the global RNGs untouched
        if step == 1 and self.before_rewards is not None:
            report.before_images, report.before_rewards = self.before_images, self.before_rewards

        if self.world.is_main and self._eval_due(step) and config.eval_seeds:
            with shielded():  # the update is applied: this iteration completes
                report.eval_images, report.eval_rewards = self.evaluate(config.eval_seeds, self.eval_prompts)
        if self.world.is_main and config.checkpoint_every and (step % config.checkpoint_every == 0 or step == config.steps):
            report.checkpoint = str(self.save_checkpoint(self._checkpoint_dir(step)))
            self._prune_checkpoints()
        report.seconds = time.perf_counter() - start
        report.message = "; ".join(m for m in [self._pending_message, *epoch_messages] if m)
        self._pending_message = ""
        if self.world.is_main:
            self._append_metrics(report)
            self.tracker.log(report)
        return report

    # ------------------------------------------------------------------ pieces of an iteration
    def batch_prompts(self, step: int) -> list[Any]:
        """The prompts of iteration ``step`` (seeded by (seed, step)).

        Every prompt appears equally often (up to one) in a batch; estimators that split the
        batch in g groups sharing noise (antithetic +/- halves, quarters) get n prompts
        repeated g times, so that samples sharing noise share their prompt too.
        """
        return [self.prompts[i] for i in self.batch_prompt_indices(step)]

    def batch_prompt_indices(self, step: int) -> list[int]:
        """``batch_prompts(step)`` as indices into the training prompts (= into ``config.prompts``)."""
        rng = random.Random(step_seed(self.config.seed, step, "prompts"))
        n = self.config.batch_size // self.noise_groups
        pool = list(range(len(self.prompts)))
        chosen = pool * (n // len(pool)) + rng.sample(pool, n % len(pool))
        rng.shuffle(chosen)
        return chosen * self.noise_groups

    def prompt_indices(self, prompts: list[Any]) -> list[int | str]:
        """Each prompt as its index in ``config.prompts`` (the first equal text), or as its text when absent."""
        first_index: dict[str, int] = {}
        for index, text in enumerate(self.config.prompts):
            first_index.setdefault(str(text), index)
        return [first_index.get(str(p), str(p)) for p in prompts]

    def generator_for(self, step: int) -> torch.Generator:
        """The CPU generator of iteration ``step``, seeded from (config.seed, step)."""
        return torch.Generator(device="cpu").manual_seed(step_seed(self.config.seed, step))

    def _add_kl_gradient(self, step: int, estimate: GradientEstimate) -> None:
        """Add ``kl_weight`` x the gradient of the trajectory KL to the base model (``rlr_core.kl``) to
        p.grad, as the estimate's part "kl"; its value goes to ``estimate.info["kl"]``."""
        generator = torch.Generator(device="cpu").manual_seed(step_seed(self.config.seed, step, f"kl:{self.shard.start}"))
        grads, value = trajectory_kl_gradient(self.chain, list(estimate.prompts), generator, self.config.kl_steps,
                                              self.shard.global_size)
        flat = flatten(grads, self.params)
        kl_value = torch.tensor([value], dtype=torch.float64)
        if self.world.distributed:
            flat, kl_value = distributed.sum_over_processes(flat), distributed.sum_over_processes(kl_value)
        flat = float(self.config.kl_weight) * flat
        estimate.parts = {**estimate.parts, "kl": flat}
        total = sum(estimate.parts.values())  # what the estimator wrote into p.grad, plus the KL part
        write_grads(self.params, total)
        estimate.grad_norms = {**estimate.grad_norms, "kl": float(flat.norm()), "total": float(total.norm())}
        estimate.info = {**estimate.info, "kl": float(kl_value)}

    def apply_update(self, estimate: GradientEstimate) -> float:
        """Clip ``p.grad`` and take one AdamW step; return the norm of the parameter change.

        Nothing changes (and 0.0 is returned) when ``estimate.skipped`` is set or the gradient
        is not finite; the latter sets ``estimate.skipped`` to say why.
        """
        if estimate.skipped:
            self._zero_grads()
            return 0.0
        grads = [p.grad for p in self.params]
        if any(g is None for g in grads):
            missing = sum(g is None for g in grads)
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(self.params, grads)]
            for p, g in zip(self.params, grads):
                p.grad = g
            if missing == len(grads):
                estimate.skipped = "the estimator wrote no gradient: update skipped, LoRA kept"
                self._zero_grads()
                return 0.0
        if not all(bool(torch.isfinite(g).all()) for g in grads):
            estimate.skipped = "non-finite gradient: update skipped, LoRA kept"
            self._zero_grads()
            return 0.0
        if self.config.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.config.max_grad_norm)
        before = [p.detach().clone() for p in self.params]
        self.optimizer.step()
        self._zero_grads()
        with torch.no_grad():
            return math.sqrt(sum(float((p.detach() - b).double().pow(2).sum()) for p, b in zip(self.params, before)))

    def _update_message(self, estimate: GradientEstimate, update_norm: float) -> str:
        if estimate.skipped:
            return f"skipped: {estimate.skipped}"
        total = float(estimate.grad_norms.get("total", 0.0))
        if self.config.max_grad_norm > 0 and total > self.config.max_grad_norm:
            return f"clipped grad norm {total:.4g} -> {self.config.max_grad_norm:g}"
        return ""

    def _zero_grads(self) -> None:
        for p in self.params:
            p.grad = None

    def _eval_due(self, step: int) -> bool:
        every = self.config.eval_every
        return step == self.config.steps or (every > 0 and step % every == 0)

    # ------------------------------------------------------------------ evaluation
    def evaluate(
        self, seeds: list[int], prompts: list[Any] | None = None, adapters: bool = True
    ) -> tuple[list[Any] | None, list[float]]:
        """Sample one image per seed (fixed noise) and score it; returns (PIL images or None, rewards).

        ``prompts`` defaults to the evaluation prompts cycled over the seeds. ``adapters=False``
        samples with the LoRA disabled (the "before" images) when the chain supports
        ``adapters_disabled()``; otherwise the current parameters are used. The global RNG
        states are left untouched, so evaluation never changes the training trajectory.
        """
        from .sampling import sample

        seeds = [int(s) for s in seeds]
        if prompts is None:
            prompts = self.eval_prompts
        prompts = [prompts[i % len(prompts)] for i in range(len(seeds))]
        lora_off = not adapters and self.is_lora_chain
        context = self.chain.adapters_disabled() if lora_off else contextlib.nullcontext()
        with isolated_rng(), torch.no_grad(), context:
            images = sample(self.chain, prompts, seeds=seeds)
            rewards = self.reward(images, [str(p) for p in prompts])
        values = [float(r) for r in torch.as_tensor(rewards).detach().double().cpu().reshape(-1)]
        return to_pil(images), values

    # ------------------------------------------------------------------ LoRA / checkpoints
    def lora_state(self) -> dict[str, torch.Tensor]:
        """The trained weights: ``chain.lora_state_dict()`` when available, else the trainable parameters."""
        if self.is_lora_chain:
            return {k: v.detach().cpu().clone() for k, v in self.chain.lora_state_dict().items()}
        return {f"param.{i}": p.detach().cpu().clone() for i, p in enumerate(self.chain.trainable_parameters())}

    def load_lora_state(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of ``lora_state`` (values are copied into the existing tensors)."""
        if self.is_lora_chain and not all(k.startswith("param.") for k in state):
            self.chain.load_lora_state_dict(state)
            return
        params = self.chain.trainable_parameters()
        if len(state) != len(params):
            raise ValueError(f"checkpoint has {len(state)} parameter tensors, the chain has {len(params)}")
        with torch.no_grad():
            for i, p in enumerate(params):
                value = state[f"param.{i}"]
                if value.shape != p.shape:
                    raise ValueError(f"checkpoint parameter {i} has shape {tuple(value.shape)}, chain has {tuple(p.shape)}")
                p.copy_(value.to(device=p.device, dtype=p.dtype))

    def export_lora(self, directory: str | os.PathLike) -> Path:
        """Write the LoRA to ``directory`` atomically (``chain.save_lora`` in the diffusers format when
        available, else ``trainable_parameters.safetensors``) and return the directory.
        Only rank 0 writes (data parallelism: every process holds the same LoRA)."""
        directory = Path(directory)
        if not self.world.is_main:
            return directory

        def write(tmp: Path) -> None:
            if self.is_lora_chain:
                self.chain.save_lora(str(tmp))
            else:
                from safetensors.torch import save_file

                tmp.mkdir(parents=True, exist_ok=True)
                save_file({k: v.contiguous() for k, v in self.lora_state().items()}, str(tmp / "trainable_parameters.safetensors"))

        atomic_directory(directory, write)
        return directory

    def save_checkpoint(self, directory: str | os.PathLike, rng: dict[str, Any] | None = None) -> Path:
        """Atomically write a checkpoint to ``directory``: LoRA, optimizer, step, RNG states,
        estimator state and config (written to a temporary directory, then renamed). Only rank 0
        writes; the state is the same on every process, so any number of processes can resume it."""
        directory = Path(directory)
        if not self.world.is_main:
            return directory
        state = {
            "format": 1,
            "step": self.step,
            "lora": self.lora_state(),
            "optimizer": self.optimizer.state_dict(),
            "rng": rng if rng is not None else rng_state(),
            "estimator": self.estimator.state_dict(),
            "config": self.config.to_dict(),
            "before_rewards": self.before_rewards,
        }

        def write(tmp: Path) -> None:
            tmp.mkdir(parents=True, exist_ok=True)
            torch.save(state, tmp / CHECKPOINT_FILE)
            self.config.to_yaml(tmp / "config.yaml")

        atomic_directory(directory, write)
        return directory

    def load_checkpoint(self, directory: str | os.PathLike) -> int:
        """Restore LoRA, optimizer, step, RNG states and estimator state from ``directory``; return the step."""
        path = Path(directory) / CHECKPOINT_FILE
        if not path.is_file():
            raise ValueError(f"resume: {str(directory)!r} is not a checkpoint (no {CHECKPOINT_FILE})")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # estimator states with custom objects; our own file, written by save_checkpoint
            state = torch.load(path, map_location="cpu", weights_only=False)
        differing = _differing_fields(state.get("config", {}), self.config.to_dict())
        if differing:
            warnings.warn(
                f"resuming with config fields changed since the checkpoint: {', '.join(differing)}", stacklevel=2
            )
        self.load_lora_state(state["lora"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("estimator") is not None:
            self.estimator.load_state_dict(state["estimator"])
        set_rng_state(state["rng"])
        self.step = int(state["step"])
        self.before_rewards = state.get("before_rewards")
        self._started = True
        return self.step

    def _checkpoint_dir(self, step: int) -> Path:
        return self.output_dir / "checkpoints" / f"{CHECKPOINT_PREFIX}{step:06d}"

    def _prune_checkpoints(self) -> None:
        for old in checkpoint_dirs(self.output_dir)[: -self.config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)

    def _save_after_failure(self) -> tuple[str | None, str | None]:
        saved = checkpoint = None
        if not self.world.is_main:  # rank 0 alone writes
            return saved, checkpoint
        try:
            self._zero_grads()
            if self.config.checkpoint_every and self.step > 0:
                checkpoint = str(self.save_checkpoint(self._checkpoint_dir(self.step), rng=self._boundary_rng))
        except Exception:  # pragma: no cover - best effort while handling another error
            checkpoint = None
        try:
            saved = str(self.export_lora(self.output_dir / "lora"))
        except Exception:  # pragma: no cover
            saved = None
        return saved, checkpoint

    # ------------------------------------------------------------------ metrics
    def _metrics_path(self) -> Path:
        return self.output_dir / "metrics.jsonl"

    def _append_metrics(self, report: StepReport) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with open(self._metrics_path(), "a", encoding="utf-8") as handle:
            handle.write(json.dumps(report.to_json_dict()) + "\n")

    def _truncate_metrics(self, step: int) -> None:
        """Drop metric lines of iterations after ``step`` (they will be run again), and unreadable ones.

        The file is rewritten through a temporary file and ``os.replace``, never in place: a crash
        meanwhile leaves the old file whole.
        """
        path = self._metrics_path()
        if not path.is_file():
            return
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if int(json.loads(line)["step"]) <= step:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):
                continue
        atomic_write_text(path, "".join(line + "\n" for line in kept))


# ---------------------------------------------------------------------------------------- helpers
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


_RUN_ONLY_FIELDS = {"steps", "output_dir", "resume", "eval_seeds", "eval_every", "eval_prompts", "log_every",
                    "report_samples", "checkpoint_every", "keep_checkpoints", "device", "report_to"}


def _differing_fields(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Config fields that change the training trajectory and differ from the checkpoint's."""
    return [k for k in current if k not in _RUN_ONLY_FIELDS and k in saved and saved[k] != current[k]]


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return _json_safe(value.item())
    return value
