"""Training (layer 6 of docs/architecture.md): the Trainer and everything one training run does.

- :mod:`~rlr_core.training.trainer` -- ``Trainer``: the loop (start or resume, iterate, stop, export)
- :mod:`~rlr_core.training.reports` -- ``StepReport`` (the metrics line), ``TrainingStepError``, seeds
- :mod:`~rlr_core.training.batches` -- the prompts and the noise generator of an iteration
- :mod:`~rlr_core.training.updates` -- learning-rate schedule, KL term, clipping, the optimizer step
- :mod:`~rlr_core.training.evaluation` -- fixed-seed evaluation
- :mod:`~rlr_core.training.checkpoints` -- checkpoint and exported-LoRA files
- :mod:`~rlr_core.training.run_folder` -- ``output_dir`` on disk: atomic writes, checkpoint folders, metrics.jsonl
- :mod:`~rlr_core.training.tracking` -- TensorBoard / Weights & Biases (``report_to``)
- :mod:`~rlr_core.training.clicks` -- click rounds of a preference run, one Trainer iteration per update

The Trainer does not validate its config; ``rlr_core.run`` (the builder) checks it once.
"""

from __future__ import annotations

from .reports import StepReport, TrainingStepError, step_seed
from .run_folder import latest_checkpoint
from .trainer import Trainer

__all__ = ["Trainer", "StepReport", "TrainingStepError", "latest_checkpoint", "step_seed"]
