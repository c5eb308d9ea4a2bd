"""rlr's MSE-aware part weights (``part_weights="auto"``).

Each part g_p is multiplied by w_p = S_p / (S_p + V_p), S_p = |E g_p|^2 and V_p = E|g_p - E g_p|^2
estimated from an exponential moving average (decay ``statistics_decay``) of the earlier estimates of
that part (never the current one, so w_p is independent of its noise). That adds the bias
-(1 - w_p) E g_p per part and cuts its variance by w_p^2; until 3 estimates of a part are seen its
weight is 1.
"""

from __future__ import annotations

import torch


def weigh_parts(parts: dict[str, torch.Tensor], statistics: dict[str, "PartStatistics"], decay: float) -> dict[str, float]:
    """Multiply each part in place by its weight from earlier estimates, then add it to its statistics."""
    weights = {}
    for name, value in parts.items():
        stats = statistics.setdefault(name, PartStatistics(decay))
        weights[name] = stats.weight()  # from earlier estimates only
        stats.add(value)
        parts[name] = value * weights[name]
    return weights


class PartStatistics:
    """Exponentially weighted mean and second moment of one part's flat estimates.

    With unnormalised weights beta^age: W = sum w, W2 = sum w^2, M = sum w g, Q = sum w |g|^2.
    The mean is M / W, the variance V = (Q / W - |M / W|^2) * n / (n - 1) with the effective
    count n = W^2 / W2, and |E g|^2 is estimated by |M / W|^2 - V / n (the mean's own noise removed).
    """

    MIN_ESTIMATES = 3

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.count = 0
        self.w = self.w2 = self.q = 0.0
        self.m: torch.Tensor | None = None

    def add(self, g: torch.Tensor) -> None:
        g = g.detach().double().cpu()
        self.m = g.clone() if self.m is None else self.decay * self.m + g
        self.w = self.decay * self.w + 1.0
        self.w2 = self.decay**2 * self.w2 + 1.0
        self.q = self.decay * self.q + float(g @ g)
        self.count += 1

    def weight(self) -> float:
        """S / (S + V): 1 until MIN_ESTIMATES estimates were added."""
        if self.count < self.MIN_ESTIMATES or self.m is None:
            return 1.0
        n = self.w**2 / self.w2
        mean = self.m / self.w
        variance = max(self.q / self.w - float(mean @ mean), 0.0) * n / (n - 1.0)
        signal = max(float(mean @ mean) - variance / n, 0.0)
        return signal / (signal + variance) if signal + variance > 0 else 1.0

    def state_dict(self) -> dict:
        return {"count": self.count, "w": self.w, "w2": self.w2, "q": self.q, "m": self.m}

    def load_state_dict(self, state: dict) -> None:
        self.count, self.w, self.w2, self.q = int(state["count"]), float(state["w"]), float(state["w2"]), float(state["q"])
        self.m = state["m"]
