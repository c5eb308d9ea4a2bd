"""The config checks that a field's spec alone cannot say: named forms (``device``, ``lora_targets``), and the
checks across fields (``report_samples`` <= ``batch_size``, ``kl_weight`` needs ``eta`` > 0, ``keep_best``'s
diversity figure needs enough evaluation images per prompt). ``TrainConfig.validate`` runs
:data:`FIELD_RULES` in field order; a rule raises ValueError naming the field and its allowed values.
"""

from __future__ import annotations

from typing import Any, Callable

from .schema import DEVICES, FieldSpec, check_value, resolve_boundaries, resolve_lora_targets, shown

__all__ = ["FIELD_RULES", "check_value_of", "MIN_IMAGES_PER_PROMPT"]

MIN_IMAGES_PER_PROMPT = 4
"""Evaluation images per prompt the diversity figure needs when ``keep_best`` checks ``min_diversity``."""


def check_value_of(config: Any, field_: FieldSpec) -> None:
    """The generic check: the field's value against its spec (type, bounds, choices)."""
    check_value(field_, getattr(config, field_.name))


def _got(field_: FieldSpec, value: Any) -> str:
    return shown(field_.name, value, field_.default)


def _check_lora_targets(config: Any, field_: FieldSpec) -> None:
    resolve_lora_targets(config.lora_targets)


def _check_device(config: Any, field_: FieldSpec) -> None:
    device = config.device
    if not isinstance(device, str) or not (device in ("auto", "cpu", "cuda", "mps") or
                                           (device.startswith("cuda:") and device[5:].isdigit())):
        raise ValueError(f"device must be one of {', '.join(DEVICES)}; got {_got(field_, device)}")


def _check_boundaries(config: Any, field_: FieldSpec) -> None:
    value = config.prompt_boundaries
    if not isinstance(value, list):
        raise ValueError("prompt_boundaries must be a list of two step indices (integers in [0, num_steps]) "
                         f"or two fractions (floats in (0, 1)); got {_got(field_, value)}")
    resolve_boundaries(config.num_steps, value)


def _check_report_samples(config: Any, field_: FieldSpec) -> None:
    check_value(field_, config.report_samples)
    if config.report_samples > config.batch_size:
        raise ValueError(f"report_samples must be an integer in [0, {config.batch_size}] (at most batch_size); "
                         f"got {config.report_samples}")


def _check_kl_weight(config: Any, field_: FieldSpec) -> None:
    check_value(field_, config.kl_weight)
    if config.kl_weight > 0 and config.eta <= 0:
        raise ValueError(f"kl_weight > 0 needs stochastic steps: eta must be > 0; got eta={config.eta!r}, "
                         f"kl_weight={config.kl_weight!r}")


def _check_min_diversity(config: Any, field_: FieldSpec) -> None:
    check_value(field_, config.min_diversity)
    if not (config.keep_best and config.min_diversity > 0):
        return
    prompts = len(config.eval_prompts or config.prompts)
    needed = MIN_IMAGES_PER_PROMPT * prompts
    if len(config.eval_seeds) < needed:
        raise ValueError(
            f"keep_best with min_diversity > 0 needs at least {MIN_IMAGES_PER_PROMPT} evaluation images per prompt "
            f"for its diversity figure: eval_seeds must have >= {needed} entries ({prompts} evaluation prompt(s)); "
            f"got {len(config.eval_seeds)}. Allowed: more eval_seeds, fewer eval_prompts, min_diversity: 0 or "
            "keep_best: false")


FIELD_RULES: dict[str, Callable[[Any, FieldSpec], None]] = {
    "lora_targets": _check_lora_targets, "device": _check_device, "prompt_boundaries": _check_boundaries,
    "report_samples": _check_report_samples, "kl_weight": _check_kl_weight, "min_diversity": _check_min_diversity,
}
"""Fields checked by their own rule instead of (or besides) the generic spec check."""
