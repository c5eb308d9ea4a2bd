"""The autograd graphs an estimate holds at its peak, as each estimator declares them
(``Estimator.memory_pieces``); ``rlr_core.memory.prediction`` prices them with the traced bytes of one
model call, decode and reward, and sums them (docs/memory.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Graph:
    """One graph kept for backward.

    ``calls``: model calls run with grad one after the other, the first from a state without graph;
    ``checkpointed``: checkpointed model calls, of which only the input states are kept (each call's graph
    is rebuilt in the backward pass, one at a time); ``log_prob``: the Gaussian log-probability of a step's
    sample (an HO exit, a likelihood-ratio term); ``decode`` / ``reward``: the VAE decode and the reward
    model on top.
    """

    calls: int = 0
    checkpointed: int = 0
    log_prob: bool = False
    decode: bool = False
    reward: bool = False

    @property
    def empty(self) -> bool:
        return not (self.calls or self.checkpointed or self.log_prob or self.decode or self.reward)


@dataclass(frozen=True)
class MemoryPieces:
    """What one estimate keeps at its peak: the graphs of ``held`` are alive together (their bytes add up);
    those of ``in_turn`` are built and freed one after another while ``held`` waits (the largest counts)."""

    held: dict[str, Graph] = field(default_factory=dict)
    in_turn: dict[str, Graph] = field(default_factory=dict)

    def graphs(self) -> list[Graph]:
        return [*self.held.values(), *self.in_turn.values()]


def first_order(differentiable_reward: bool = True) -> Graph:
    """The last step run with grad, decoded and scored (no graph without a differentiable reward)."""
    return Graph(calls=1, decode=True, reward=True) if differentiable_reward else Graph()


DECODE = Graph(decode=True)
REWARD = Graph(reward=True)
