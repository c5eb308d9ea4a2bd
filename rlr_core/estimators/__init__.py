"""Gradient estimators of d/dtheta E[reward] over a sampling chain (SPEC-RLR.md §2-4).

``get_estimator(name, **options)`` builds one: "rlr", "full-bp", "truncated-bp", "ddpo",
"zo", "rlr-released", the preset "rlr-paper" (the exactly unbiased RLR), and the baselines
"alignprop", "draft-lv" and "refl" (SPEC-RLR §4). Unknown names or options raise ValueError
listing the allowed ones.
"""

from __future__ import annotations

import inspect
from typing import Any

from .alignprop import AlignPropEstimator
from .base import Estimator, GradientEstimate, Rollout
from .ddpo import DDPOEstimator
from .draft_lv import DraftLVEstimator
from .full_bp import FullBackpropEstimator
from .refl import ReFLEstimator
from .rlr import RLREstimator
from .rlr_paper import RLRPaperEstimator
from .rlr_released import RLRReleasedEstimator
from .truncated_bp import TruncatedBackpropEstimator
from .zo import ZerothOrderEstimator

ESTIMATORS: dict[str, type[Estimator]] = {
    "rlr": RLREstimator,
    "rlr-paper": RLRPaperEstimator,
    "full-bp": FullBackpropEstimator,
    "truncated-bp": TruncatedBackpropEstimator,
    "ddpo": DDPOEstimator,
    "zo": ZerothOrderEstimator,
    "rlr-released": RLRReleasedEstimator,
    "alignprop": AlignPropEstimator,
    "draft-lv": DraftLVEstimator,
    "refl": ReFLEstimator,
}


def list_estimators() -> list[str]:
    """Names accepted by ``get_estimator``."""
    return list(ESTIMATORS)


def estimator_options(name: str) -> dict[str, Any]:
    """The options of estimator ``name`` with their defaults (for UIs and config files)."""
    return _init_options(_lookup(name))


def ui_options(name: str) -> dict[str, Any]:
    """The options estimator ``name`` wants shown as form fields, with their defaults."""
    cls = _lookup(name)
    defaults = estimator_options(name)
    return {option: defaults[option] for option in cls.ui_options}


def option_choices(name: str) -> dict[str, tuple]:
    """Allowed values of the string options of estimator ``name`` (for dropdowns)."""
    return dict(_lookup(name).option_choices)


def _init_options(cls: type) -> dict[str, Any]:
    """Keyword options of ``cls.__init__``; a preset taking ``**options`` inherits its parent's."""
    parameters = inspect.signature(cls.__init__).parameters.values()
    options = {p.name: p.default for p in parameters if p.name != "self" and p.kind is not p.VAR_KEYWORD}
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        for parent in cls.__mro__[1:]:
            if "__init__" in vars(parent):
                options = {**_init_options(parent), **options}
                break
    return options


def get_estimator(name: str, **options: Any) -> Estimator:
    """Build estimator ``name`` with ``options``; ValueError naming anything unknown."""
    cls = _lookup(name)
    allowed = estimator_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for estimator {name!r}; allowed options: {sorted(allowed)}"
        )
    return cls(**options)


def _lookup(name: str) -> type[Estimator]:
    if name not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {list(ESTIMATORS)}, got {name!r}")
    return ESTIMATORS[name]


__all__ = [
    "Estimator",
    "GradientEstimate",
    "Rollout",
    "get_estimator",
    "list_estimators",
    "estimator_options",
    "ui_options",
    "option_choices",
    *[cls.__name__ for cls in ESTIMATORS.values()],
]
