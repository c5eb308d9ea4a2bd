"""Memory of a gradient estimate: measured (``rlr_core.memory.meter``) and predicted
(``rlr_core.memory.prediction``, imported on its own: it sits above the estimators). docs/memory.md.

This package re-exports the meter only, so the estimators (below the prediction) can use it.
"""

from .meter import LiveBytesTracker, MemoryMeter, SavedBytesCounter

__all__ = ["MemoryMeter", "SavedBytesCounter", "LiveBytesTracker"]
