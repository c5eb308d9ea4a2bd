"""Compatibility path: the Trainer lives in :mod:`rlr_core.training` (``rlr_core.training.trainer``)."""

from __future__ import annotations

from rlr_core.training.reports import RunningMean, StepReport, TrainingStepError, part_cosines, step_seed
from rlr_core.training.run_folder import latest_checkpoint
from rlr_core.training.trainer import Trainer

__all__ = ["StepReport", "Trainer", "TrainingStepError", "latest_checkpoint", "step_seed", "RunningMean",
           "part_cosines"]
