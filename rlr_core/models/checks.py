"""Argument checks shared by the model modules."""

from __future__ import annotations

import math
from typing import Any


def check_number(name: str, value: Any, low: float, high: float = math.inf, integer: bool = False) -> None:
    """ValueError unless ``value`` is a finite number (an int when ``integer``) in [low, high]."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))
    if integer:
        ok = ok and isinstance(value, int)
    if not ok or not (low <= float(value) <= high):
        kind = "an int" if integer else "a number"
        upper = "" if high == math.inf else f", {high}"
        bracket = ")" if high == math.inf else "]"
        raise ValueError(f"{name} must be {kind} in [{low}{upper or ', inf'}{bracket}, got {value!r}")
