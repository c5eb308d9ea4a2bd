"""The per-prompt baseline kept across iterations (``baseline="prompt"``)."""

from __future__ import annotations

from collections import deque

import torch


class PromptBaseline:
    """Per-prompt running mean of the rewards of earlier iterations (the "prompt" baseline)."""

    def __init__(self, history: int = 32) -> None:
        self.history = history
        self._rewards: dict[str, deque[float]] = {}

    def value(self, prompt: str) -> float | None:
        values = self._rewards.get(str(prompt))
        return sum(values) / len(values) if values else None

    def update(self, prompts: list[str], rewards: torch.Tensor) -> None:
        for prompt, reward in zip(prompts, rewards.tolist()):
            self._rewards.setdefault(str(prompt), deque(maxlen=self.history)).append(float(reward))

    def state_dict(self) -> dict[str, list[float]]:
        return {prompt: list(values) for prompt, values in self._rewards.items()}

    def load_state_dict(self, state: dict[str, list[float]]) -> None:
        self._rewards = {p: deque(v, maxlen=self.history) for p, v in state.items()}
