"""rlr-paper: the exactly unbiased RLR of the paper (Ren et al., "Recursive Likelihood Ratio", ICLR 2026),
kept as a named preset.

FO on the last step, HO on one random sub-chain, ZO on every remaining step, all weights 1.
Every step's dependence on theta is estimated exactly once, so the mean of the estimates is the
gradient of E[r] (the analytic z-tests check it). It is unbiased but, on LoRA-sized parameter
vectors, the ZO part dominates its variance (docs/estimators.md has the measurement); the product's
default ``rlr`` drops that part instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from .options import choice, custom, flag, integer, number
from .rlr import RLREstimator
from .rlr_options import REMAINING, RLROptions, check_window


@dataclass(frozen=True)
class RLRPaperOptions(RLROptions):
    """``rlr``'s options with the unbiased defaults (whatever the default ``rlr`` options are)."""

    h: int = integer(2, "length of the HO sub-chain (model calls the score flows through)",
                     note=" (and <= num_steps - 1)")
    remaining: str = choice("zo", "what covers the steps outside the HO sub-chain and the last step (zo: unbiased)",
                            REMAINING)
    window: tuple | None = custom(None, "HO starts j drawn from (None: all allowed starts)", check_window, none=True)
    fo_weight: float = number(1.0, "weight of the first-order part (1: unbiased)", min_open=False)
    ho_weight: float | str = number(1.0, "weight of the HO part (1: unbiased)", min_open=False, auto=True)
    control_variate: bool | str = flag(False, "subtract the HO control variate (its expectation is added back)",
                                       auto=True)


class RLRPaperEstimator(RLREstimator):
    """``rlr`` with ``remaining="zo"``, fixed unit weights, the plain HO term and any start j by default:
    the unbiased sum (whatever the default ``rlr`` options are)."""

    name = "rlr-paper"
    Options = RLRPaperOptions
