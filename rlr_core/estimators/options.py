"""Estimator options as dataclasses: each field declares its default, its allowed values or bounds
and its help, and the options object checks and normalises every value when it is built.

An estimator names its options class (``Estimator.Options``); ``get_estimator(name, **options)``
builds it, ``estimator_options(name)`` lists its defaults and ``option_specs(name)`` its declarations
(docs/estimators.md is the reference of every option). A bad value raises ValueError naming the option
and what it allows, e.g. "remaining must be one of ['zo', 'lr', 'none'], got 'zoo'".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Callable

BASELINES = ("loo", "none", "prompt")


@dataclass(frozen=True)
class OptionSpec:
    """What one option allows. ``kind``: "int", "number", "bool", "choice" or "custom" (``check`` decides).

    ``auto``: the option also takes the string "auto"; ``none``: it also takes None. ``note`` follows the
    bound in error messages (what the number counts)."""

    help: str
    kind: str
    choices: tuple = ()
    min: float | None = None
    min_open: bool = False  # min excluded (x > min)
    max: float | None = None
    max_open: bool = False
    auto: bool = False
    none: bool = False
    note: str = ""
    check: Callable[[str, Any], Any] | None = None  # custom: (name, value) -> normalised value, or ValueError

    def allowed(self) -> str:
        """The allowed values in words, as error messages state them."""
        if self.kind == "choice":
            return f"one of {list(self.choices)}"
        if self.kind == "bool":
            return "true, false or 'auto'" if self.auto else "true or false"
        if self.kind == "int":
            return f"an integer >= {self.min:g}{self.note}"
        if self.min is not None and self.max is not None:
            left, right = "(" if self.min_open else "[", ")" if self.max_open else "]"
            words = f"a number in {left}{self.min:g}, {self.max:g}{right}"
        elif self.min is not None:
            words = f"a finite number {'>' if self.min_open else '>='} {self.min:g}"
        else:
            words = "a finite number"
        return f"'auto' or {words}" if self.auto else words

    def normalise(self, name: str, value: Any) -> Any:
        """``value`` as the estimator uses it (ints stay ints, numbers become floats); ValueError otherwise."""
        if self.auto and value == "auto" and isinstance(value, str):
            return "auto"
        if self.none and value is None:
            return None
        if self.kind == "custom":
            return self.check(name, value)
        if self.kind == "choice":
            if value not in self.choices:
                raise ValueError(f"{name} must be one of {list(self.choices)}, got {value!r}")
            return value
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be {self.allowed()}, got {value!r}")
            return value
        if self.kind == "int":
            if isinstance(value, bool) or not isinstance(value, int) or value < self.min:
                raise ValueError(f"{name} must be {self.allowed()}, got {value!r}")
            return int(value)
        return self._number(name, value)

    def _number(self, name: str, value: Any) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be {self.allowed()}, got {value!r}") from None
        low_ok = self.min is None or (number > self.min if self.min_open else number >= self.min)
        high_ok = self.max is None or (number < self.max if self.max_open else number <= self.max)
        if not (math.isfinite(number) and low_ok and high_ok):
            raise ValueError(f"{name} must be {self.allowed()}, got {value!r}")
        return number


def option(default: Any, help: str, kind: str, **spec: Any) -> Any:
    """A dataclass field declaring one option (see :class:`OptionSpec` for ``spec``)."""
    return field(default=default, metadata={"option": OptionSpec(help=help, kind=kind, **spec)})


def integer(default: Any, help: str, min: int = 1, note: str = "", none: bool = False) -> Any:
    return option(default, help, "int", min=min, note=note, none=none)


def number(default: Any, help: str, min: float | None = 0.0, min_open: bool = True, max: float | None = None,
           max_open: bool = True, auto: bool = False) -> Any:
    """A finite number, > ``min`` (``min_open``) or >= ``min``, and below ``max`` when given."""
    return option(default, help, "number", min=min, min_open=min_open, max=max, max_open=max_open, auto=auto)


def flag(default: Any, help: str, auto: bool = False) -> Any:
    return option(default, help, "bool", auto=auto)


def choice(default: str, help: str, choices: tuple) -> Any:
    return option(default, help, "choice", choices=tuple(choices))


def custom(default: Any, help: str, check: Callable[[str, Any], Any], none: bool = False) -> Any:
    return option(default, help, "custom", check=check, none=none)


def baseline_option() -> Any:
    return choice("loo", "what the likelihood-ratio advantages subtract: leave-one-out mean of the batch (loo), "
                  "nothing (none), or a per-prompt running mean of earlier iterations (prompt)", BASELINES)


def normalize_option(default: bool = False) -> Any:
    return flag(default, "divide the whole gradient by the batch's reward standard deviation")


@dataclass(frozen=True)
class EstimatorOptions:
    """Base of every estimator's options: checks and normalises each declared field after ``__init__``,
    then the checks across fields (``check_together``)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            spec = f.metadata.get("option")
            if spec is not None:
                object.__setattr__(self, f.name, spec.normalise(f.name, getattr(self, f.name)))
        self.check_together()

    def check_together(self) -> None:
        """Subclasses: ValueError when two options contradict each other."""

    def as_dict(self) -> dict[str, Any]:
        """The options as plain values, in declaration order."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def defaults_of(options_class: type) -> dict[str, Any]:
    """Default of every option of ``options_class``, in declaration order."""
    return {f.name: f.default for f in fields(options_class)}


def specs_of(options_class: type) -> dict[str, OptionSpec]:
    """The declaration of every option of ``options_class``."""
    return {f.name: f.metadata["option"] for f in fields(options_class) if "option" in f.metadata}


def choices_of(options_class: type) -> dict[str, tuple]:
    """Allowed values of the options that take one of a list (for dropdowns)."""
    return {name: spec.choices for name, spec in specs_of(options_class).items() if spec.kind == "choice"}
