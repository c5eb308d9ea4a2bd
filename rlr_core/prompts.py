"""Prompt scheduling ("diffusive chain-of-thought", docs/config.md).

Sampling goes coarse to fine: a ``ScheduledPrompt`` carries three texts (coarse = outline,
mid = structure, fine = detail), each conditioning its part of the T sampling steps. The
split is given by ``prompt_boundaries``: two step indices ``(b1, b2)`` or two fractions of T;
step k belongs to phase 0 (coarse) when k < b1, phase 1 (mid) when b1 <= k < b2, phase 2
(fine) otherwise. Default: thirds.
"""

from __future__ import annotations

import operator
from typing import Any, Sequence

from rlr_core.config.schema import DEFAULT_PROMPT_BOUNDARIES, resolve_boundaries

__all__ = ["ScheduledPrompt", "phase_texts", "scheduled_from_template", "resolve_boundaries", "phase_of_step",
           "training_prompts", "evaluation_prompts", "DEFAULT_PROMPT_BOUNDARIES"]

# The template of ``scheduled_from_template`` ("{prompt}" is replaced by the user's prompt).
COARSE_TEMPLATE = "a simple rough outline of {prompt}"
MID_TEMPLATE = "{prompt}, clear shapes and composition"
FINE_TEMPLATE = "{prompt}, fine details, sharp, high quality"


class ScheduledPrompt(str):
    """A prompt with a coarse / mid / fine text; its string value is the fine (full) prompt.

    Because it *is* a ``str`` (the fine text), it can go anywhere a plain prompt goes
    (rewards, logs); ``DiffusersChain.condition`` recognises it and uses the three texts.
    An empty coarse or mid text falls back to the fine text.
    """

    coarse: str
    mid: str
    fine: str

    def __new__(cls, coarse: str, mid: str, fine: str) -> "ScheduledPrompt":
        for field, value in (("coarse", coarse), ("mid", mid), ("fine", fine)):
            if not isinstance(value, str):
                raise ValueError(f"ScheduledPrompt.{field} must be a str, got {type(value).__name__}")
        obj = super().__new__(cls, fine)
        obj.fine = str(fine)
        obj.coarse = str(coarse) if coarse else obj.fine
        obj.mid = str(mid) if mid else obj.fine
        return obj

    def __getnewargs__(self) -> tuple[str, str, str]:  # pickling / copy keep the three texts
        return (self.coarse, self.mid, self.fine)

    def phases(self) -> tuple[str, str, str]:
        """The texts of phases 0, 1, 2 (coarse, mid, fine)."""
        return (self.coarse, self.mid, self.fine)

    def __repr__(self) -> str:
        return f"ScheduledPrompt(coarse={self.coarse!r}, mid={self.mid!r}, fine={self.fine!r})"


def phase_texts(prompt: str) -> tuple[str, str, str]:
    """The three phase texts of a prompt: a ``ScheduledPrompt``'s, or the same text three times."""
    if isinstance(prompt, ScheduledPrompt):
        return prompt.phases()
    if not isinstance(prompt, str):
        raise ValueError(f"prompts must be str or ScheduledPrompt, got {type(prompt).__name__}")
    return (str(prompt), str(prompt), str(prompt))


def scheduled_from_template(prompt: str) -> ScheduledPrompt:
    """Fill coarse / mid / fine from one prompt with a fixed template.

    coarse = ``"a simple rough outline of {prompt}"``,
    mid    = ``"{prompt}, clear shapes and composition"``,
    fine   = ``"{prompt}, fine details, sharp, high quality"``.
    """
    base = prompt.fine if isinstance(prompt, ScheduledPrompt) else str(prompt)
    return ScheduledPrompt(
        COARSE_TEMPLATE.format(prompt=base), MID_TEMPLATE.format(prompt=base), FINE_TEMPLATE.format(prompt=base)
    )


def phase_of_step(k: int, num_steps: int, boundaries: Sequence[int | float] | None = None) -> int:
    """Phase (0 coarse, 1 mid, 2 fine) of sampling step ``k`` in ``0 .. num_steps-1``."""
    b1, b2 = resolve_boundaries(num_steps, boundaries)
    try:
        k = operator.index(k)
    except TypeError:
        raise ValueError(f"step k must be an int in [0, {num_steps - 1}], got {k!r}") from None
    if not (0 <= k < num_steps):
        raise ValueError(f"step k must be an int in [0, {num_steps - 1}], got {k!r}")
    if k < b1:
        return 0
    if k < b2:
        return 1
    return 2


def training_prompts(config: Any) -> list[str]:
    """The prompts a run draws its batches from: ``config.prompts``, as ``ScheduledPrompt`` when the
    config sets a coarse, mid or fine prompt (``config``: a ``TrainConfig``)."""
    return _schedule(config, list(config.prompts))


def evaluation_prompts(config: Any) -> list[str]:
    """One prompt per eval seed: ``config.eval_prompts`` (or the training prompts) cycled, scheduled like
    :func:`training_prompts`."""
    base = list(config.eval_prompts) or list(config.prompts)
    return _schedule(config, [base[i % len(base)] for i in range(len(config.eval_seeds))])


def _schedule(config: Any, prompts: list[str]) -> list[str]:
    if not any((config.coarse_prompt, config.mid_prompt, config.fine_prompt)):
        return prompts
    return [ScheduledPrompt(config.coarse_prompt or p, config.mid_prompt or p, config.fine_prompt or p) for p in prompts]
