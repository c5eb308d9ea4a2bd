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

The Trainer does not validate its config: the builder (``rlr_core.run.TrainingRun.from_config``) checks
it once before constructing it. The pieces live beside this module: ``reports`` (StepReport),
``batches`` (prompts and noise of a step), ``updates`` (optimizer step, KL), ``evaluation``,
``checkpoints`` (checkpoint and LoRA files), ``run_folder`` (output_dir, metrics.jsonl) and
``tracking`` (TensorBoard / wandb). See docs/architecture.md.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from .. import distributed
from ..cancel import Cancelled, cancellable, shielded
from ..chain import Chain, LoraChain
from ..config import TrainConfig
from ..estimators.base import Estimator, GradientEstimate, Rollout
from ..prompts import evaluation_prompts, training_prompts
from ..rewards import Reward
from .batches import batch_prompt_indices, prompt_indices, step_generator
from .checkpoints import CheckpointMethods
from .evaluation import eval_due, evaluate
from .guard import FeatureProbe, Guard
from .guard_methods import GuardMethods
from .reports import RunningMean, StepReport, TrainingStepError, step_report, step_seed
from .run_folder import (append_metrics, checkpoint_dir, latest_checkpoint, metrics_path, prune_checkpoints,
                         remove_stale_temporaries, rng_state, set_rng_state, truncate_metrics)
from .tracking import Tracker, create_tracker
from .updates import add_kl_gradient, apply_update, change_norm, set_learning_rate, update_message, zero_grads

__all__ = ["StepReport", "Trainer", "TrainingStepError", "latest_checkpoint", "step_seed"]


class Trainer(CheckpointMethods, GuardMethods):
    """Runs training iterations of ``estimator`` on ``chain`` against ``reward`` as ``config`` says.

    Typical use::

        trainer = Trainer(chain, reward, estimator, config)
        for report in trainer.run():
            print(report.step, report.reward_mean, report.grad_norms)
            if report.reward_mean > 0.9:
                trainer.stop()          # run() ends after this iteration, the LoRA is exported

    ``run()`` can be called again on the same Trainer to continue (e.g. after raising
    ``config.steps``, or in chunks with ``max_iterations``); state stays in memory. ``config`` must be
    valid already (``rlr_core.run.check_config``); the Trainer checks only what depends on the
    estimator (the batch split in noise groups, ``estimator.check``). ``heldout_reward``: the reward-hacking
    guard's second reward (``rlr_core.run.build_heldout_reward``; None: no held-out figure).
    """

    def __init__(self, chain: Chain, reward: Reward, estimator: Estimator, config: TrainConfig,
                 heldout_reward: Reward | None = None) -> None:
        self.chain = chain
        self.reward = reward
        self.probe = FeatureProbe(heldout_reward, reward)
        self.guard = Guard.from_config(config)
        self.before_guard: dict[str, Any] | None = None
        self.guard_note = ""  # e.g. why the held-out reward is off; in the first report's message
        self._last_lora: dict[str, torch.Tensor] | None = None  # keep_best: the last LoRA while the kept one is loaded
        self.estimator = estimator
        self.config = config
        self.output_dir = Path(config.output_dir)
        self.params = [p for p in chain.trainable_parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("the chain has no trainable parameters (requires_grad=True); nothing to train")
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=config.weight_decay)
        self.step = 0
        self.prompts = training_prompts(config)
        self.eval_prompts = evaluation_prompts(config)
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
        estimator.keep_states = config.kl_weight > 0 and config.kl_trajectories == "own"  # Rollout.states, for the KL
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
        self.restore_last()
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
                self.export_final()
            raise
        self._clear_stop()
        self.export_final()
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
            zero_grads(self.params)
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
            truncate_metrics(self.output_dir, self.step)
            message = f"resumed from {checkpoint} at step {self.step}"
        else:
            if self.config.resume:
                message = f"resume requested but no checkpoint in {self.output_dir / 'checkpoints'}; starting over"
            shutil.rmtree(self.output_dir / "checkpoints", ignore_errors=True)
            metrics_path(self.output_dir).write_text("", encoding="utf-8")
            if self.step == 0 and initialize_lora:
                self.initialize_lora()
            if self.step == 0 and self.config.eval_seeds:
                self.evaluate_base()
        self._pending_message = "; ".join(m for m in (message, self.guard_note) if m)
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
        zero_grads(self.params)
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
        learning_rate = set_learning_rate(self.optimizer, config, step)
        if config.kl_weight > 0 and not estimate.skipped:
            add_kl_gradient(self.chain, self.params, config, step, self.shard, self.world, estimate)
        self.apply_update(estimate)
        epoch_messages = [update_message(estimate, config.max_grad_norm)]
        peak = float(estimate.peak_memory_mb)
        for _ in range(1, self.estimator.inner_epochs):
            if estimate.skipped or estimate.rollout is None or self._should_stop():
                break
            try:
                again = self.estimator.gradient(estimate.rollout, estimate.rewards)
            except Cancelled:
                break  # abort(): the epochs applied so far make this iteration
            self.apply_update(again)
            epoch_messages.append(update_message(again, config.max_grad_norm))
            peak = max(peak, float(again.peak_memory_mb))
        update_norm = change_norm(self.params, before)
        estimate.rollout = None  # free the graph / activations before evaluating

        report = step_report(step, estimate, prompt_indices, update_norm, peak, learning_rate, config, self.shard,
                             self.signal_reference)
        self.step = step
        self._boundary_rng = rng_state()  # evaluation below leaves the global RNGs untouched
        if step == 1 and self.before_rewards is not None:
            report.before_images, report.before_rewards = self.before_images, self.before_rewards
            report.before_guard = self.before_guard

        if self.world.is_main and eval_due(step, config.steps, config.eval_every) and config.eval_seeds:
            with shielded():  # the update is applied: this iteration completes
                self.evaluate_step(report)
        if self.world.is_main and config.checkpoint_every and (step % config.checkpoint_every == 0 or step == config.steps):
            report.checkpoint = str(self.save_checkpoint(checkpoint_dir(self.output_dir, step)))
            prune_checkpoints(self.output_dir, config.keep_checkpoints)
        report.seconds = time.perf_counter() - start
        report.message = "; ".join(m for m in [self._pending_message, *epoch_messages] if m)
        self._pending_message = ""
        if self.world.is_main:
            append_metrics(self.output_dir, report.to_json_dict())
            self.tracker.log(report)
        return report

    # ------------------------------------------------------------------ pieces of an iteration
    def batch_prompts(self, step: int) -> list[Any]:
        """The prompts of iteration ``step`` (seeded by (seed, step); see ``batches.batch_prompt_indices``)."""
        return [self.prompts[i] for i in self.batch_prompt_indices(step)]

    def batch_prompt_indices(self, step: int) -> list[int]:
        """``batch_prompts(step)`` as indices into the training prompts (= into ``config.prompts``)."""
        return batch_prompt_indices(self.config.seed, step, self.config.batch_size, self.noise_groups,
                                    len(self.prompts))

    def prompt_indices(self, prompts: list[Any]) -> list[int | str]:
        """Each prompt as its index in ``config.prompts`` (the first equal text), or as its text when absent."""
        return prompt_indices(self.config.prompts, prompts)

    def generator_for(self, step: int) -> torch.Generator:
        """The CPU generator of iteration ``step``, seeded from (config.seed, step)."""
        return step_generator(self.config.seed, step)

    def apply_update(self, estimate: GradientEstimate) -> float:
        """Clip ``p.grad`` and take one AdamW step; return the norm of the parameter change.

        Nothing changes (and 0.0 is returned) when ``estimate.skipped`` is set or the gradient
        is not finite; the latter sets ``estimate.skipped`` to say why.
        """
        return apply_update(self.params, self.optimizer, estimate, self.config.max_grad_norm)

    def evaluate(
        self, seeds: list[int], prompts: list[Any] | None = None, adapters: bool = True
    ) -> tuple[list[Any] | None, list[float]]:
        """Sample one image per seed (fixed noise) and score it; returns (PIL images or None, rewards).

        ``prompts`` defaults to the evaluation prompts cycled over the seeds. ``adapters=False``
        samples with the LoRA disabled (the "before" images); see ``evaluation.evaluate``.
        """
        return evaluate(self.chain, self.reward, seeds, self.eval_prompts if prompts is None else prompts, adapters)
