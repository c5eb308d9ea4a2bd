"""The vocabulary of the config schema: field specs, allowed values, the generic field check and the docs table.

Each ``TrainConfig`` field is declared with ``field(default=..., metadata=spec(help=..., min=..., max=...,
choices=...))``; ``rlr_core.config.FIELD_SPECS`` turns that metadata into one :class:`FieldSpec` per field.
``validate()``, the app's Train form and the table of docs/config.md are all derived from those specs.
Standard library only.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

__all__ = ["FieldSpec", "spec", "check_value", "allowed_text", "markdown_table", "shown", "lr_factor",
           "resolve_lora_targets", "resolve_boundaries", "DTYPES", "DEVICES", "LR_SCHEDULES", "KL_KINDS", "KL_TRAJECTORIES",
           "REPORT_TO",
           "LORA_TARGET_SETS", "AUTO_LORA_TARGETS", "MAX_SEED", "DEFAULT_PROMPT_BOUNDARIES"]

DTYPES = ("auto", "float32", "float16", "bfloat16")
"""Allowed values of ``TrainConfig.dtype`` ("auto": float16 on CUDA, float32 elsewhere, chosen by load_model)."""

DEVICES = ("auto", "cpu", "cuda", "cuda:<index>", "mps")
"""Allowed forms of ``TrainConfig.device``."""

LR_SCHEDULES = ("constant", "cosine", "linear")
"""Allowed values of ``TrainConfig.lr_schedule`` (see :func:`lr_factor`)."""

KL_KINDS = ("trajectory", "local")
"""Allowed values of ``TrainConfig.kl_kind``: what the KL regulariser counts (``rlr_core.kl``), the whole trajectory
KL, or only its local part (a uniform shift of a channel over the image, a colour change of a pixel-space model, is
free)."""

KL_TRAJECTORIES = ("own", "sampled")
"""Allowed values of ``TrainConfig.kl_trajectories``: where the KL's trajectories come from, the estimate's own batch
(where its estimator keeps their states: rlr without ZO steps; the others sample) or a batch sampled for the KL."""

REPORT_TO = ("none", "tensorboard", "wandb")
"""Allowed values of ``TrainConfig.report_to`` (the same tuple as ``rlr_core.tracking.REPORT_TO``)."""

LORA_TARGET_SETS: dict[str, tuple[str, ...]] = {
    # every attention projection (self- and cross-attention): the most freedom
    "attention": ("to_q", "to_k", "to_v", "to_out.0"),
    # only the two projections that read the text (cross-attention keys and values): the LoRA changes
    # what the UNet hears the prompt say, not how it draws (images tend to stay on the model's distribution)
    "cross-attention": ("attn2.to_k", "attn2.to_v"),
    # every attention projection and both 3x3 convolutions of every ResNet block: convolutions see where things
    # are in the image (attention alone is blind to position), so the LoRA can move where a shape sits
    "attention+conv": ("to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"),
}
"""Named values of ``lora_targets`` (module-name suffixes LoRA adapters are added to)."""

AUTO_LORA_TARGETS = "attention"
"""What ``lora_targets="auto"`` means for a model whose folder names no ``lora_targets`` of its own (its
``rlr_studio.json``; the bundled tiny model names ``attention+conv``)."""

MAX_SEED = 2**32 - 1
"""Largest ``seed`` / ``eval_seeds`` entry: what torch and numpy generators accept."""

DEFAULT_PROMPT_BOUNDARIES: tuple[float, float] = (1.0 / 3.0, 2.0 / 3.0)
"""``prompt_boundaries`` when none are given: thirds of the chain."""

_SHOWN_CHARS = 200  # a bad value is shown up to this many characters (a toast, a log line)
_NO_DEFAULT = object()


@dataclass(frozen=True)
class FieldSpec:
    """What one config field accepts.

    ``type``: the annotation (``"int"``, ``"float | None"``, ``"list[str]"``, ...). ``min`` / ``max``: bounds of a
    number, or of each entry of a list of numbers (``min_exclusive``: the lower bound itself is refused).
    ``interval``: error messages show the range as ``[min, max]`` (a range with a meaning: a fraction, a 32-bit
    seed) rather than ``>= min, at most max`` (a lower limit and a sanity cap). ``choices``: the allowed values
    (``open_choices``: named values, other forms checked by the field's own rule). ``max_items``: longest list.
    """

    name: str
    type: str
    default: Any
    help: str
    min: float | None = None
    max: float | None = None
    min_exclusive: bool = False
    interval: bool = False
    choices: tuple = ()
    open_choices: bool = False
    non_empty: bool = False
    max_items: int | None = None

    @property
    def optional(self) -> bool:
        """``None`` (YAML ``null``) is allowed."""
        return self.type.endswith("| None")

    @property
    def base_type(self) -> str:
        return self.type.removesuffix("| None").strip()

    @property
    def is_number(self) -> bool:
        return self.base_type in ("int", "float")


def spec(help: str, min: float | None = None, max: float | None = None, choices: Iterable[Any] = (),  # noqa: A002
         **extra: Any) -> dict[str, Any]:
    """The dataclass-field metadata of a config field (``extra``: the other :class:`FieldSpec` attributes)."""
    return {"spec": {"help": help, "min": min, "max": max, "choices": tuple(choices), **extra}}


def _number(value: float | None) -> str:
    """4294967295 as 4294967295, 1e-3 as 0.001, 100000 as 100000."""
    if value is None:
        return "-"
    if float(value).is_integer() and abs(value) < 1e16:
        return str(int(value))
    return f"{value:g}"


def allowed_text(field: FieldSpec, upper: bool = True) -> str:
    """What ``field`` accepts, as error messages and the docs table say it (``upper=False``: a value that is
    not a number or too small is told the lower bound only, ``>= 1``, unless the range is an interval)."""
    if field.choices and not field.open_choices:
        return "one of " + ", ".join(map(str, field.choices))
    base = field.base_type
    kind = {"int": "an integer", "float": "a number", "bool": "true or false", "list[int]": "a list of integers",
            "list[float]": "a list of numbers", "list[str]": "a list of non-empty strings",
            "dict[str, Any]": "a mapping of option name: value"}.get(base, "a non-empty string" if field.non_empty else "a string")
    if field.min is not None and field.max is not None and field.interval:
        text = f"{kind} in {'(' if field.min_exclusive else '['}{_number(field.min)}, {_number(field.max)}]"
    else:
        parts = [f"{'>' if field.min_exclusive else '>='} {_number(field.min)}"] if field.min is not None else []
        parts += [f"at most {_number(field.max)}"] if field.max is not None and (upper or field.min is None) else []
        text = f"{kind} {', '.join(parts)}" if parts else kind
    if field.max_items is not None:
        text += f" (at most {field.max_items:,} entries)"
    return text + (", or null" if field.optional else "")


def shown(name: str, value: Any, default: Any = _NO_DEFAULT) -> str:
    """A bad value as an error message shows it (shortened); ``null`` (YAML ``key:`` with nothing after
    it) with the field's default."""
    if value is None and default is not _NO_DEFAULT:
        return f"null (leave {name} out to get the default, {default!r})"
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else f"{text[:_SHOWN_CHARS]}... ({len(text):,} characters)"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _in_bounds(field: FieldSpec, value: Any) -> bool:
    integer = field.base_type.startswith(("int", "list[int]"))
    if not (_is_int(value) if integer else _is_number(value) and math.isfinite(value)):
        return False
    if field.min is not None and (value <= field.min if field.min_exclusive else value < field.min):
        return False
    return field.max is None or value <= field.max


def check_value(field: FieldSpec, value: Any) -> None:
    """ValueError naming ``field`` and what it accepts when ``value`` has the wrong type, lies outside the
    bounds or is not one of the choices (``open_choices`` aside)."""
    if value is None and field.optional:
        return
    got = shown(field.name, value, field.default)
    too_high = _is_number(value) and field.max is not None and value > field.max
    bad = ValueError(f"{field.name} must be {allowed_text(field, upper=too_high)}; got {got}")
    base = field.base_type
    if field.choices and not field.open_choices:
        if not isinstance(value, str) or value not in field.choices:
            raise bad
    elif base in ("int", "float"):
        if not _in_bounds(field, value):
            raise bad
    elif base == "bool":
        if not isinstance(value, bool):
            raise bad
    elif base == "str":
        if not isinstance(value, str) or (field.non_empty and not value.strip()):
            raise bad
    elif base == "dict[str, Any]":
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise bad
    elif base.startswith("list["):
        if not isinstance(value, list):
            raise bad
        if field.non_empty and not value:
            raise ValueError(f"{field.name} must contain at least one entry; got []")
        if field.max_items is not None and len(value) > field.max_items:
            raise ValueError(f"{field.name} must have at most {field.max_items:,} entries; got {len(value):,}")
        for index, item in enumerate(value):
            if base == "list[str]" and not (isinstance(item, str) and item.strip()):
                raise bad
            if base in ("list[int]", "list[float]") and not _in_bounds(field, item):
                raise ValueError(f"{field.name} must be {allowed_text(field, upper=False)}: {field.name}[{index}] must be "
                                 f"{allowed_text(FieldSpec(field.name, base[5:-1], None, '', field.min, field.max, field.min_exclusive, True))}; "
                                 f"got {shown(field.name, item)}")


def markdown_table(specs: Iterable[FieldSpec]) -> str:
    """The field reference of docs/config.md: one row per field (name, type, default, allowed values, meaning)."""
    rows = ["| Field | Type | Default | Allowed | Meaning |", "| --- | --- | --- | --- | --- |"]
    for field in specs:
        default = json.dumps(field.default)
        allowed = allowed_text(field)
        if field.choices:
            allowed = "one of " + ", ".join(f"`{c}`" for c in field.choices) + (" or another form (see Meaning)"
                                                                                  if field.open_choices else "")
        cells = [f"`{field.name}`", f"`{field.type}`", f"`{default}`", allowed, field.help]
        rows.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(rows) + "\n"


def lr_factor(schedule: str, step: int, steps: int) -> float:
    """The learning-rate multiplier of iteration ``step`` (1-based) of ``steps``: 1 for "constant";
    with t = (step - 1) / steps, ``0.5 * (1 + cos(pi * t))`` for "cosine" and ``1 - t`` for "linear"
    (the first iteration gets the full lr, the last one lr / steps or so, never 0)."""
    if schedule == "constant":
        return 1.0
    t = min(max((int(step) - 1) / max(int(steps), 1), 0.0), 1.0)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "linear":
        return 1.0 - t
    raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}; got {schedule!r}")


def resolve_lora_targets(lora_targets: str | list[str] | tuple[str, ...], auto: str = AUTO_LORA_TARGETS) -> list[str]:
    """Module-name suffixes of ``lora_targets``: ``"auto"`` (what ``auto`` names: the model's own default), a name
    of :data:`LORA_TARGET_SETS`, a comma-separated list of module-name suffixes (``"attn2.to_k, attn2.to_v,
    ff.net.2"``) or a list of them. ValueError naming the field and the allowed values otherwise."""
    if isinstance(lora_targets, str):
        text = lora_targets.strip()
        if text == "auto":
            text = auto
        if text in LORA_TARGET_SETS:
            return list(LORA_TARGET_SETS[text])
        items = [part.strip() for part in text.split(",")]
    elif isinstance(lora_targets, (list, tuple)):
        items = list(lora_targets)
    else:
        items = []
    if not items or not all(isinstance(t, str) and t.strip() and not t.strip().startswith(".") for t in items):
        got = shown("lora_targets", lora_targets, "attention")
        raise ValueError(f"lora_targets must be one of {['auto', *LORA_TARGET_SETS]} or a list of module-name suffixes "
                         f"(e.g. 'attn2.to_k, attn2.to_v'); got {got}")
    return [t.strip() for t in items]


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
