"""The options of rlr (and of its preset rlr-paper), declared with their defaults, bounds and help.

The product's defaults (chosen on the task suite of benchmarks/compare.py; the numbers are in
benchmarks/results/compare-suite/) drop the remaining steps (``remaining="none"``), run the HO control
variate alone wherever the reward is differentiable (``control_variate="auto"``, ``ho_weight="auto"``),
keep FO on the last step at weight 1, and draw the HO start j from the first 40% of the allowed starts
(``window=(0.0, 0.4)``), where composition is decided. docs/estimators.md explains each option.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .options import EstimatorOptions, baseline_option, choice, custom, flag, integer, normalize_option, number

REMAINING = ("zo", "lr", "none")
ZO_DIRECTIONS = ("per-sample", "per-batch", "per-step")
J_SAMPLING = ("uniform", "grad-norm")
PART_WEIGHTS = ("fixed", "auto")


def check_window(name: str, window: Any) -> tuple:
    """(a, b): two step indices (integers), or two fractions of the allowed HO starts (floats in [0, 1])."""
    message = (f"{name} must be two step indices (a, b) with a <= b, or two fractions of the chain "
               f"(floats in [0, 1], a <= b), got {window!r}")
    if (isinstance(window, (str, bytes)) or not hasattr(window, "__len__") or len(window) != 2
            or any(isinstance(v, bool) for v in window)):
        raise ValueError(message)
    if all(isinstance(v, int) for v in window):
        if window[0] > window[1]:
            raise ValueError(message)
        return int(window[0]), int(window[1])
    if not all(isinstance(v, (int, float)) for v in window):
        raise ValueError(message)
    a, b = float(window[0]), float(window[1])
    if not (0.0 <= a <= b <= 1.0):
        raise ValueError(message)
    return a, b


@dataclass(frozen=True)
class RLROptions(EstimatorOptions):
    """rlr's options, in the order ``estimator_options("rlr")`` lists them."""

    h: int = integer(2, "length of the HO sub-chain (model calls the score flows through)",
                     note=" (and <= num_steps - 1)")
    remaining: str = choice("none", "what covers the steps outside the HO sub-chain and the last step: zo "
                                    "(parameter perturbation), lr (per-step likelihood ratio on lr_samples steps) or "
                                    "none (dropped: biased, lowest variance)", REMAINING)
    zo_scale: float = number(1e-2, "size of the ZO parameter perturbation")
    zo_directions: str = choice("per-sample", "ZO directions: one per noise set of the batch, one for the whole "
                                              "batch, or one per step (as the paper writes it)", ZO_DIRECTIONS)
    lr_samples: int = integer(2, "remaining steps given a likelihood-ratio term with remaining=lr")
    window: tuple | None = custom((0.0, 0.4), "HO starts j drawn from: two step indices, or two fractions of the "
                                              "allowed starts (None: all)", check_window, none=True)
    j_sampling: str = choice("uniform", "how j is drawn from the window: uniformly, or a softmax of earlier HO "
                                        "gradient norms", J_SAMPLING)
    grad_norm_temperature: float = number(1.0, "temperature of the grad-norm softmax")
    baseline: str = baseline_option()
    normalize: bool = normalize_option(False)
    fo_weight: float = number(1.0, "weight of the first-order part (1: unbiased)", min_open=False)
    ho_weight: float | str = number("auto", "weight of the HO part (auto: 0 when the control variate runs, "
                                            "else 1)", min_open=False, auto=True)
    remaining_weight: float = number(1.0, "weight of the ZO / LR part on the remaining steps", min_open=False)
    antithetic: bool = flag(True, "pair every trajectory with a twin whose HO exit noise is negated")
    part_weights: str = choice("fixed", "fixed: the weights above; auto: MSE-aware weights from earlier "
                                        "estimates of each part", PART_WEIGHTS)
    statistics_decay: float = number(0.9, "decay of the running statistics (part weights, control-variate slope)",
                                     min=0.0, max=1.0)
    control_variate: bool | str = flag("auto", "subtract a control variate from the HO term built from the "
                                               "chain's predict_final stand-in (auto: where it can run)", auto=True)
    cv_jumps: int = integer(3, "model calls of the control variate's stand-in for the rest of the chain")
    cv_scale: str | float = number("auto", "the control variate's slope (auto: fitted on earlier iterations, "
                                           "1 when the residual is dropped)", min=None, auto=True)
    cv_weight: float = number(1.0, "weight of the control variate's expectation (part cv)", min_open=False)
