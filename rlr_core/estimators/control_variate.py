"""rlr's HO control variate: a cheap stand-in for the rest of the chain, and the slope it is scaled by.

``control_variate=True`` subtracts from the HO exit's likelihood-ratio term a control variate built
from a cheap stand-in for the rest of the chain. At the exit mean m (before the exit noise) the chain's
``predict_final`` guesses x[T] in ``cv_jumps`` deterministic model calls; the reward's gradient there,
a = d r(decode(predict_final(m))) / dm, is detached and does not depend on the exit noise eps. With
c = beta a . (x_exit - m) = beta a . s eps,

    (r - b) S(eps) = (r - b - c) S(eps)  +  c S(eps),   E[c S(eps)] = beta d(a . m_theta)/d theta,

so the HO part becomes the residual (advantage minus c, times the score: part "ho") plus the exact
expectation of the control variate (a pathwise gradient through the sub-chain: part "cv"). The sum is
unbiased for any beta that is independent of eps; beta is the least-squares slope of the advantage on
a . s eps from earlier iterations (per start j, decay ``statistics_decay``; pooled over the starts for an
unseen j, 1 before any statistics; 1 when the residual is dropped) or the number ``cv_scale``. The
residual's variance is the plain term's times about 1 - rho^2, rho the correlation of the advantage
with a . s eps (docs/estimators.md has the measurement on the tiny model). ``cv_weight`` scales part
"cv" like the other part weights.

It needs a differentiable reward and a chain with ``predict_final``: the reward object reaches the
rollout explicitly (``Estimator.rollout(..., reward=...)``, which ``estimate()`` passes); the two-phase
path without it runs the plain HO term.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..chain import Chain
from ..distributed import BatchShard, sum_over_processes


def stand_in_available(control_variate: bool | str, chain: Chain, reward: Any) -> bool:
    """Whether this estimate runs the control variate: the option on ("auto" or True), a differentiable reward
    object at hand and a chain with ``predict_final``. ValueError when it is forced on (True) with a
    differentiable reward but the chain offers no stand-in."""
    if not control_variate or reward is None or not getattr(reward, "differentiable", False):
        return False
    if callable(getattr(chain, "predict_final", None)):
        return True
    if control_variate is True:
        raise ValueError("control_variate: the chain has no predict_final(x, k, cond, jumps); "
                         "use control_variate: false or 'auto'")
    return False


def stand_in_direction(chain: Chain, reward: Any, exit_mean: torch.Tensor, next_step: int, cond: Any,
                       prompts: list[str], jumps: int, require_graph) -> torch.Tensor:
    """a = d r(decode(predict_final(m))) / dm at the detached exit mean m (no graph kept).
    ``require_graph(values)`` raises when the reward returned values without a graph."""
    mean = exit_mean.requires_grad_(True)
    with torch.enable_grad():
        final = chain.predict_final(mean, next_step, cond, jumps)
        surrogate = reward(chain.decode(final), [str(p) for p in prompts])
        require_graph(surrogate)
        (direction,) = torch.autograd.grad(surrogate.sum(), mean)
    return direction.detach()


class ControlVariateSlope:
    """The running least-squares slope of the HO advantage on a . s eps, per start j."""

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.statistics: dict[int, list[float]] = {}  # start j -> EMA of [sum adv * c1, sum c1^2]

    def beta(self, j: int, cv_scale: str | float, residual_kept: bool = True) -> float:
        """The slope for start j: ``cv_scale`` when it is a number; with "auto", 1 when the residual is
        dropped (part "cv" is then the pathwise gradient of the stand-in's reward through the sub-chain,
        taken at face value), else the least-squares slope of earlier iterations at start j, falling back
        to the slope pooled over every start seen so far, and to 1 before any statistics exist. Every
        choice depends on earlier iterations only, never on this estimate's exit noise, so the split stays
        unbiased.

        Why 1 without the residual: the fitted slope only sets the variance of the residual it is
        subtracted from; with no residual it would scale (and, fitted on a few noisy batches, sometimes
        flip) the only term left. Measured on the tiny model (shape-position, T=8, lr 0.003, 12
        iterations): fitted slope -0.069 eval gain, slope 1 +0.034."""
        if cv_scale != "auto":
            return float(cv_scale)
        if not residual_kept:
            return 1.0
        sxy, sxx = self.statistics.get(j, (0.0, 0.0))
        if sxx > 0:
            return sxy / sxx
        pooled_xy = sum(v[0] for v in self.statistics.values())
        pooled_xx = sum(v[1] for v in self.statistics.values())
        return pooled_xy / pooled_xx if pooled_xx > 0 else 1.0

    def remember(self, j: int, advantages: torch.Tensor, unit_cv: torch.Tensor, shard: BatchShard | None) -> None:
        """Fold this batch's least-squares sums (over the whole batch) into start j's running slope."""
        sums = torch.stack([(advantages.double() * unit_cv).sum(), (unit_cv * unit_cv).sum()])
        if shard is not None:
            sums = sum_over_processes(sums)
        sxy, sxx = (float(v) for v in sums)
        if not (math.isfinite(sxy) and math.isfinite(sxx)):
            return
        previous = self.statistics.get(j)
        d = self.decay
        self.statistics[j] = [sxy, sxx] if previous is None else [d * previous[0] + sxy, d * previous[1] + sxx]

    def state_dict(self) -> dict[int, list[float]]:
        return {j: list(v) for j, v in self.statistics.items()}

    def load_state_dict(self, state: dict) -> None:
        self.statistics = {int(k): [float(x) for x in v] for k, v in state.items()}
