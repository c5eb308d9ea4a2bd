"""RLR Studio core: fine-tune text-to-image diffusion models against a reward with RLR.

Top-level exports (docs/architecture.md): ``load_model``, ``get_reward``, ``get_estimator``,
``TrainConfig``, ``Trainer``. Imported lazily so that ``import rlr_core`` stays light and
never pulls in gradio.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": ("rlr_core.diffusers_chain", "load_model"),
    "DiffusersChain": ("rlr_core.diffusers_chain", "DiffusersChain"),
    "get_reward": ("rlr_core.rewards", "get_reward"),
    "list_rewards": ("rlr_core.rewards", "list_rewards"),
    "get_estimator": ("rlr_core.estimators", "get_estimator"),
    "list_estimators": ("rlr_core.estimators", "list_estimators"),
    "TrainConfig": ("rlr_core.config", "TrainConfig"),
    "Trainer": ("rlr_core.training", "Trainer"),
    "StepReport": ("rlr_core.training", "StepReport"),
    "sample": ("rlr_core.sampling", "sample"),
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rlr_core' has no attribute {name!r}")
    import importlib

    module_name, attribute = _EXPORTS[name]
    return getattr(importlib.import_module(module_name), attribute)
