"""Compatibility path: experiment tracking lives in :mod:`rlr_core.training.tracking`."""

from __future__ import annotations

from rlr_core.training.tracking import (REPORT_TO, TensorBoardTracker, Tracker, WandbTracker, check_report_to,
                                        create_tracker, report_scalars)

__all__ = ["REPORT_TO", "Tracker", "TensorBoardTracker", "WandbTracker", "check_report_to", "create_tracker",
           "report_scalars"]
