"""refl: ReFL / Direct-Align, the reward gradient through a one-call prediction of the final state.

Papers: Xu et al., "ImageReward: Learning and Evaluating Human Preferences for Text-to-Image
Generation" (arXiv 2304.05977, 2023), Reward Feedback Learning (ReFL); and Shen et al.,
"Directly Aligning the Full Diffusion Trajectory with Fine-Grained Human Preference" (SRPO,
arXiv 2509.06942, 2025), whose Direct-Align also recovers the clean image in one model call.

Per estimate a step j is drawn uniformly from ``window`` = [a, b] (inclusive step indices; None:
the last quarter of the steps, ReFL's [30, 39] of 40). Steps 0 .. j-1 run without autograd; from
the detached x[j] the chain predicts the final state with autograd in ``jumps`` model calls
(``chain.predict_final(x[j], j, cond, jumps)``; 1 = the x0 / Tweedie prediction), which is decoded
and scored. The first-order gradient of -mean(r) flows through those calls only.

The images scored (and shown, and returned) are the one-call predictions, not samples of the
chain: blurrier the earlier j is. That is what ReFL does. SRPO's Direct-Align instead noises a
clean image with a known noise and inverts it analytically; here the start is the sampler's own
x[j] (ReFL's form).

Bias: biased. Steps before j are dropped, and steps j .. T-1 are replaced by a deterministic
one-call stand-in whose gradient is not the sampler's. Memory: one model call's graph + decode +
reward (O(1); ``jumps`` calls with jumps > 1). Needs a differentiable reward and a chain with
``predict_final`` (``DiffusersChain``, the analytic chain).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..chain import Chain
from ..sampling import run_steps
from .base import Estimator, Rollout, RolloutData, random_int
from .memory_pieces import DECODE, REWARD, Graph, MemoryPieces
from .options import EstimatorOptions, custom, integer, normalize_option


def _check_window(name: str, window: Any) -> tuple[int, int]:
    if (
        not isinstance(window, (list, tuple)) or len(window) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in window)
        or not 0 <= window[0] <= window[1]
    ):
        raise ValueError(f"{name} must be None (the last quarter of the steps) or two step indices "
                         f"0 <= a <= b, got {window!r}")
    return int(window[0]), int(window[1])


@dataclass(frozen=True)
class ReFLOptions(EstimatorOptions):
    window: tuple[int, int] | None = custom(None, "inclusive step indices [a, b] the stop step j is drawn from "
                                                  "(None: the last quarter of the steps)", _check_window, none=True)
    jumps: int = integer(1, "model calls of the prediction of the final state (1: the x0 prediction)",
                         note=" (model calls of the prediction)")
    normalize: bool = normalize_option(False)


@dataclass
class ReFLData(RolloutData):
    j: int = 0  # the step the prediction starts from


class ReFLEstimator(Estimator):
    """Stop at a random late step j, predict x[T] in one call with grad, backprop the reward through it."""

    name = "refl"
    Options = ReFLOptions
    ui_options = ("window", "jumps")
    requires_differentiable_reward = True

    def start_window(self, num_steps: int) -> tuple[int, int]:
        """The inclusive range j is drawn from: ``window``, or the last quarter of the steps (at least one)."""
        if self.options.window is not None:
            return self.options.window
        return num_steps - max(1, math.ceil(num_steps / 4)), num_steps - 1

    def memory_pieces(self, num_steps: int, differentiable_reward: bool) -> MemoryPieces:
        jumps = min(self.options.jumps, num_steps)  # predict_final makes at most one call per remaining step
        return MemoryPieces(held={"prediction": Graph(calls=jumps), "decode": DECODE, "reward": REWARD})

    def _check_setup(self, chain: Chain, differentiable_reward: bool, batch_size: int) -> None:
        T = chain.num_steps
        window = self.options.window
        if window is not None and window[1] > T - 1:
            raise ValueError(f"window must lie within [0, num_steps - 1 = {T - 1}], got {list(window)}")
        if not callable(getattr(chain, "predict_final", None)):
            raise ValueError(
                f"refl needs a chain with predict_final(x, k, cond, jumps) (a one-call prediction of the final "
                f"state); {type(chain).__name__} has none: use truncated-bp with k=1 instead"
            )
        super()._check_setup(chain, differentiable_reward, batch_size)

    def sample(
        self, chain: Chain, prompts: list[str], generator: torch.Generator, differentiable_reward: bool,
        reward: Any = None,
    ) -> Rollout:
        T = chain.num_steps
        a, b = self.start_window(T)
        j = a + random_int(generator, b - a + 1)
        noise = self.draw_noise(chain, len(prompts), generator)
        cond = chain.condition(list(prompts))
        with torch.no_grad():
            x_j = run_steps(chain, noise.x0, range(0, j), cond, noise)
        with torch.enable_grad():
            final = chain.predict_final(x_j.detach(), j, cond, jumps=self.options.jumps)
            images = chain.decode(final)
        steps = {"fo": list(range(j, T))}  # stood in for by the one-call prediction
        if j > 0:
            steps["dropped"] = list(range(0, j))
        return Rollout(chain, list(prompts), images, True, steps=steps, data=ReFLData(j=j))

    def parts(self, rollout: Rollout, rewards: torch.Tensor, info: dict[str, float]) -> dict[str, torch.Tensor]:
        info["j"] = float(rollout.data.j)
        return {"fo": self.fo_part(rollout, rewards)}
