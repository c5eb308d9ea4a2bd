"""rlr-paper: the exactly unbiased RLR of the paper (SPEC-RLR.md §3), kept as a named preset.

FO on the last step, HO on one random sub-chain, ZO on every remaining step, all weights 1.
Every step's dependence on theta is estimated exactly once, so the mean of the estimates is the
gradient of E[r] (the analytic z-tests check it). It is unbiased but, on LoRA-sized parameter
vectors, the ZO part dominates its variance (README, "RLR that learns"); the product's default
``rlr`` drops that part instead.
"""

from __future__ import annotations

from .rlr import RLREstimator


class RLRPaperEstimator(RLREstimator):
    """``rlr`` with ``remaining="zo"``, fixed unit weights, the plain HO term and any start j by default:
    the unbiased sum (whatever the default ``rlr`` options are)."""

    name = "rlr-paper"

    def __init__(self, h: int = 2, remaining: str = "zo", control_variate: bool | str = False,
                 ho_weight: float | str = 1.0, fo_weight: float = 1.0, window=None, **options) -> None:
        super().__init__(h=h, remaining=remaining, control_variate=control_variate, ho_weight=ho_weight,
                         fo_weight=fo_weight, window=window, **options)
