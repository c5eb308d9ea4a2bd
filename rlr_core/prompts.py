"""Prompt scheduling ("diffusive chain-of-thought", SPEC-RLR §5).

Sampling goes coarse to fine: a ``ScheduledPrompt`` carries three texts (coarse = outline,
mid = structure, fine = detail), each conditioning its part of the T sampling steps. The
split is given by ``prompt_boundaries``: two step indices ``(b1, b2)`` or two fractions of T;
step k belongs to phase 0 (coarse) when k < b1, phase 1 (mid) when b1 <= k < b2, phase 2
(fine) otherwise. Default: thirds.
"""

from __future__ import annotations

import operator
from typing import Sequence

DEFAULT_PROMPT_BOUNDARIES: tuple[float, float] = (1.0 / 3.0, 2.0 / 3.0)

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


def resolve_boundaries(num_steps: int, boundaries: Sequence[int | float] | None = None) -> tuple[int, int]:
    """Validate ``prompt_boundaries`` and return them as two step indices ``0 <= b1 <= b2 <= num_steps``.

    ``boundaries`` is two ints (step indices in [0, num_steps]) or two floats in (0, 1)
    (fractions of num_steps, rounded to the nearest step); ``None`` means thirds.
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")
    if boundaries is None:
        boundaries = DEFAULT_PROMPT_BOUNDARIES
    try:
        values = list(boundaries)
    except TypeError:
        raise ValueError(
            f"prompt_boundaries must be two step indices in [0, {num_steps}] or two fractions in (0, 1), "
            f"got {boundaries!r}"
        ) from None
    if len(values) != 2:
        raise ValueError(
            f"prompt_boundaries must have exactly two values (step indices in [0, {num_steps}] or fractions "
            f"in (0, 1)), got {len(values)}: {boundaries!r}"
        )
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        b1, b2 = int(values[0]), int(values[1])
        if not (0 <= b1 <= b2 <= num_steps):
            raise ValueError(
                f"prompt_boundaries as step indices must satisfy 0 <= b1 <= b2 <= num_steps={num_steps}, "
                f"got {boundaries!r}"
            )
        return b1, b2
    if all(isinstance(v, float) for v in values):
        f1, f2 = float(values[0]), float(values[1])
        if not (0.0 < f1 < 1.0 and 0.0 < f2 < 1.0 and f1 <= f2):
            raise ValueError(
                f"prompt_boundaries as fractions must be two floats in (0, 1) with b1 <= b2, got {boundaries!r}"
            )
        return int(round(f1 * num_steps)), int(round(f2 * num_steps))
    raise ValueError(
        f"prompt_boundaries must be two ints (step indices in [0, {num_steps}]) or two floats in (0, 1), "
        f"not a mix or other types, got {boundaries!r}"
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
