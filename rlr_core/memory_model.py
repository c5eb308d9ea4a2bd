"""Old path of the memory prediction: the names now live in ``rlr_core.memory.prediction`` (docs/memory.md)."""

from __future__ import annotations

from .memory.prediction import *  # noqa: F401,F403
from .memory.prediction import ESTIMATOR_NAMES, __all__ as _names

ESTIMATORS: tuple[str, ...] = ESTIMATOR_NAMES  # the names of the registered estimators, as this module listed them

__all__ = [*_names, "ESTIMATORS"]
