"""Gradient estimators of d/dtheta E[reward] over a sampling chain (docs/estimators.md).

``get_estimator(name, **options)`` builds one: "rlr", "full-bp", "truncated-bp", "ddpo",
"zo", "rlr-released", the preset "rlr-paper" (the exactly unbiased RLR), and the baselines
"alignprop", "draft-lv" and "refl". Unknown names or options raise ValueError listing the
allowed ones. Each estimator declares its options as a dataclass (``option_specs(name)``: default,
allowed values, help) and the graphs one estimate keeps (``Estimator.memory_pieces``).
"""

from __future__ import annotations

from typing import Any

from .alignprop import AlignPropEstimator
from .base import Estimator, GradientEstimate, Rollout, RolloutData
from .ddpo import DDPOEstimator
from .draft_lv import DraftLVEstimator
from .full_bp import FullBackpropEstimator
from .options import OptionSpec, defaults_of, specs_of
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
    return defaults_of(_lookup(name).Options)


def option_specs(name: str) -> dict[str, OptionSpec]:
    """The declaration of every option of estimator ``name``: help, kind, allowed values or bounds."""
    return specs_of(_lookup(name).Options)


def ui_options(name: str) -> dict[str, Any]:
    """The options estimator ``name`` wants shown as form fields, with their defaults."""
    cls = _lookup(name)
    defaults = estimator_options(name)
    return {option: defaults[option] for option in cls.ui_options}


def option_choices(name: str) -> dict[str, tuple]:
    """Allowed values of the string options of estimator ``name`` (for dropdowns)."""
    return dict(_lookup(name).option_choices)


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
    "RolloutData",
    "get_estimator",
    "list_estimators",
    "estimator_options",
    "ui_options",
    "option_choices",
    "option_specs",
    *[cls.__name__ for cls in ESTIMATORS.values()],
]
