"""One input of the Train form (:class:`Field`) and the parsing of a form value into a config value.

A field that fills a TrainConfig field takes its bounds and choices from the config's spec
(``rlr_core.config.field_spec``); ``settings.caps`` may lower the maximum (hosted mode). Errors are
``FieldError``s naming the field's label. No Gradio here.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from rlr_core.config import MAX_SEED, field_spec, nested_deeper_than

from .settings import caps
from .errors import FieldError

__all__ = ["Field", "parse_value", "parse_int", "parse_float", "parse_seed", "MAX_JSON_DEPTH"]


@dataclass(frozen=True)
class Field:
    """One input of the Train form (and parameter of ``/train``).

    ``kind``: how the value is parsed: "text", "lines" (one entry per line), "json" (an object),
    "pair" (two numbers 'a, b'), "int", "float", "optional-float" (empty = None), "choice", "bool".
    ``config``: the TrainConfig field it fills (None for the estimator options and ``continue_lora``);
    a config field's bounds and choices come from its spec (``rlr_core.config.field_spec``), never written
    here. ``cap``: the key of ``settings.caps`` giving a lower maximum (hosted mode).
    """

    key: str
    label: str
    kind: str
    default: Any
    config: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    min_exclusive: bool = False
    cap: str | None = None
    info: str = ""
    choices: tuple = ()
    estimators: tuple[str, ...] = ()  # estimator option fields: the estimators that take it
    section: str = "main"  # where ui.py puts it: main, schedule, estimator, sampling, optimization

    def __post_init__(self) -> None:  # a config field's bounds and choices: its spec's
        spec = field_spec(self.config) if self.config and not self.estimators else None
        if spec is not None and spec.is_number:
            for name, value in (("minimum", spec.min), ("maximum", spec.max), ("min_exclusive", spec.min_exclusive)):
                object.__setattr__(self, name, value)
        if spec is not None and self.kind == "choice" and spec.choices and "<" not in "".join(spec.choices):
            object.__setattr__(self, "choices", tuple(spec.choices))

    @property
    def is_estimator_option(self) -> bool:
        return bool(self.estimators)

    def maximum_for(self, hosted: bool) -> float | None:
        """The maximum: the config's bound, or the cap of ``settings.caps(hosted)`` when lower."""
        limits = [v for v in (self.maximum, caps(hosted)[self.cap] if self.cap else None) if v is not None]
        return min(limits) if limits else None

    def slider_for(self, hosted: bool) -> bool:
        """Shown as a slider: an integer up to 1000, or a number in a closed unit-like range (eta)."""
        maximum = self.maximum_for(hosted)
        if self.minimum is None or maximum is None or self.kind not in ("int", "float"):
            return False
        return maximum <= 1000 if self.kind == "int" else (self.config is not None and field_spec(self.config).interval)

    @property
    def python_type(self) -> type:
        """The type of the ``/train`` parameter."""
        if self.is_estimator_option:  # None = the estimator's default
            return {"int": int, "float": float, "pair": str, "int-or-auto": int | str}.get(self.kind, str) | None  # type: ignore[return-value]
        return {"int": int, "float": float, "optional-float": float | None, "bool": bool}.get(self.kind, str)  # type: ignore[return-value]


# ----------------------------------------------------------------------------------- parsing
def _number(text: str) -> float | int:
    text = text.strip()
    if "/" in text:
        a, b = text.split("/", 1)
        return float(a) / float(b)
    value = float(text)
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def parse_value(field: Field, value: Any, hosted: bool) -> Any:
    """The value of one field, checked against its kind and limits; FieldError naming the label."""
    label = field.label
    if field.kind == "bool":
        return bool(value)
    if field.kind == "json":
        if value is None or value == "":
            return {}
        if isinstance(value, dict):
            value = json.dumps(value)  # measured and depth-checked like text
        text = _check_length(label, str(value), hosted, cap="json_chars")
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as error:
            raise FieldError(label, f'must be a JSON object like {{"key": value}}; {error.msg} at column {error.colno}') from None
        except RecursionError:
            raise FieldError(label, "is nested too deeply (options are a flat JSON object)") from None
        if nested_deeper_than(parsed, MAX_JSON_DEPTH):
            raise FieldError(label, f"is nested too deeply: at most {MAX_JSON_DEPTH} levels of lists / objects")
        if not isinstance(parsed, dict):
            raise FieldError(label, f'must be a JSON object like {{"key": value}}, got {type(parsed).__name__}')
        return parsed
    if field.kind == "lines":
        lines = [line.strip() for line in str(value or "").splitlines() if line.strip()]
        if not lines:
            raise FieldError(label, "enter at least one (one per line)")
        maximum = field.maximum_for(hosted)
        if maximum is not None and len(lines) > maximum:
            raise FieldError(label, f"at most {int(maximum)} here; got {len(lines)}")
        for line in lines:
            _check_length(label, line, hosted)
        return lines
    if field.kind in ("text", "choice"):
        return _check_length(label, str(value if value is not None else "").strip(), hosted)
    if field.kind == "pair":
        return _pair(label, value)
    if field.kind == "optional-float" and (value is None or str(value).strip() == ""):
        return None
    if field.kind == "int-or-auto":
        if str(value).strip().lower() == "auto":
            return "auto"
        try:
            return _bounded_number(Field(field.key, field.label, "int", None, minimum=1), value, hosted)
        except FieldError:
            raise FieldError(label, f"must be 'auto' or an integer >= 1; got {value!r}") from None
    return _bounded_number(field, value, hosted)


MAX_JSON_DEPTH = 8


def _check_length(label: str, text: str, hosted: bool, cap: str = "prompt_chars") -> str:
    """``text``, or FieldError naming ``label`` when it is longer than ``caps(hosted)[cap]`` characters."""
    limit = caps(hosted)[cap]
    if len(text) > limit:
        raise FieldError(label, f"must be at most {limit:,} characters here; got {len(text):,}")
    return text


def parse_seed(label: str, value: Any) -> int:
    """A seed: an integer in [0, MAX_SEED]; FieldError naming ``label``."""
    return parse_int(label, value, 0, MAX_SEED)


def parse_int(label: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer input outside the Train form (rounds, repeats, seeds); FieldError naming ``label``."""
    return int(_bounded_number(Field(label, label, "int", None, minimum=minimum, maximum=maximum), value, False))


def parse_float(label: str, value: Any, minimum: float | None = None, maximum: float | None = None) -> float:
    """A number input outside the Train form (a click session's learning rate); FieldError naming ``label``."""
    return float(_bounded_number(Field(label, label, "float", None, minimum=minimum, maximum=maximum), value, False))


def _bounded_number(field: Field, value: Any, hosted: bool) -> int | float:
    label, integer = field.label, field.kind == "int"
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise FieldError(label, f"must be {'an integer' if integer else 'a number'}; got {value!r}") from None
    if not math.isfinite(number) or (integer and not number.is_integer()):
        raise FieldError(label, f"must be {'an integer' if integer else 'a finite number'}; got {value!r}")
    low, high = field.minimum, field.maximum_for(hosted)
    too_low = low is not None and (number <= low if field.min_exclusive else number < low)
    if too_low or (high is not None and number > high):
        if field.min_exclusive:
            bounds = f"> {_plain(low)}" + (f" and at most {_plain(high)}" if high is not None else "")
        else:
            bounds = f"between {_plain(low)} and {_plain(high)}" if high is not None else f">= {_plain(low)}"
        raise FieldError(label, f"must be {bounds}; got {_plain(number)}")
    return int(number) if integer else number


def _plain(number: float | None) -> str:
    """1e30 as 1e+30, 4294967295 as 4294967295 (not 4.29497e+09), 0.001 as 0.001."""
    if number is None:
        return "-"
    return str(int(number)) if float(number).is_integer() and abs(number) < 1e16 else f"{number:g}"


def _pair(label: str, value: Any) -> list[float | int] | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    parts = list(value) if isinstance(value, (list, tuple)) else [p for p in str(value).replace(";", ",").split(",") if p.strip()]
    try:
        values = [_number(p) if isinstance(p, str) else p for p in parts]
    except (ValueError, ZeroDivisionError):
        values = []
    if len(values) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        raise FieldError(label, f"must be two numbers 'a, b'; got {value!r}")
    return values
