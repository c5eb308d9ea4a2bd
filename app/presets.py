"""Named presets of the Train form: ``PRESETS[name]`` holds the values of some form fields.

The keys are the field keys of :data:`app.form.FIELDS`; a preset leaves the fields it does not
name as they are. :func:`apply_preset` returns the form values with a preset filled in (what the
Train tab's "Preset" dropdown does). No Gradio here.

* "Star demo (tiny, offline)": the run of ``benchmarks/star_demo.yaml`` (docs/app.md; its results are in
  benchmarks/results/): the prompt draws a red circle, the tiny-clip reward asks for a red star (the
  log-probability of "a red star on a white background" among the captions that change one
  attribute, "a white background" and the 4 shapes drawn small), a cross-attention LoRA trained
  with full-bp (the exact gradient): 48 iterations turn the circles into clean stars.
* "Star demo, RLR (tiny, offline)": the same run with the default rlr (no hand-set options: its HO
  control variate runs wherever the reward is differentiable): benchmarks/results/star-demo-rlr/
  has what it draws.
"""

from __future__ import annotations

import json
from typing import Any

from rlr_core.tiny.captions import contrast_captions

from .form import FIELD_BY_KEY

NO_PRESET = "(none)"

STAR_TEXT = "a red star on a white background"
STAR_DEMO_REWARD_OPTIONS = {
    "model": "tiny-clip",
    "text": STAR_TEXT,
    "scale": 37.0,
    # 21 one-attribute changes, "a white background", and the 4 shapes drawn "small"
    "contrast_texts": contrast_captions("red", "star", "white", small=True),
}

PRESETS: dict[str, dict[str, Any]] = {
    "Star demo (tiny, offline)": {
        "model": "tiny",
        "reward": "clip",
        "reward_options": json.dumps(STAR_DEMO_REWARD_OPTIONS),
        "prompt": "a red circle on a white background",
        "estimator": "full-bp",
        "estimator_options": "{}",
        "num_steps": 20,
        "eta": 1.0,
        "batch_size": 8,
        "lr": 0.01,
        "lora_rank": 4,
        "lora_targets": "cross-attention",
        "steps": 48,
        "seed": 0,
        # the run is meant to leave the prompt (circles become stars): the held-out CLIP score of the prompt falls
        # by design, so keep_best would keep the base model; export the last LoRA, as star_demo.yaml does
        "keep_best": False,
    },
}
PRESETS["Star demo, RLR (tiny, offline)"] = {
    **PRESETS["Star demo (tiny, offline)"],
    "estimator": "rlr",
    "estimator_options": "{}",  # the default rlr, as the Train tab, click rounds and rlr-train use it
}


def preset_names() -> list[str]:
    """The choices of the Preset dropdown: "(none)" first, then the presets."""
    return [NO_PRESET, *PRESETS]


def apply_preset(name: str, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` (form values by field key) with the fields of preset ``name`` replaced.

    ``"(none)"`` or an empty name returns ``values`` unchanged. ValueError naming the field for an
    unknown preset.
    """
    if not name or name == NO_PRESET:
        return dict(values)
    if name not in PRESETS:
        raise ValueError(f"preset={name!r} is not allowed; allowed values: {preset_names()}")
    unknown = sorted(set(PRESETS[name]) - set(FIELD_BY_KEY))
    if unknown:
        raise ValueError(f"preset {name!r} names fields the form does not have: {unknown}; allowed: {sorted(FIELD_BY_KEY)}")
    return {**values, **PRESETS[name]}
