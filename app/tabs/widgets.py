"""The Train form's widgets: one Gradio component per field of :data:`app.form.FIELDS`, and the reward help."""

from __future__ import annotations

import json
from typing import Any

import gradio as gr

from .. import form as train_form
from ..form import FORM_DEFAULTS, Field
from ..settings import DEFAULT_PROMPTS, MODEL_PRESETS, hosted_models

__all__ = ["make_widget", "default_reward", "reward_help", "FLOAT_SLIDERS"]

FLOAT_SLIDERS = ("eta",)
"""Float fields shown as a slider (step 0.05); other floats (learning rate, weights: values that span decades)
are typed numbers. Integer fields with bounds up to 1000 are sliders."""


def make_widget(field: Field, hosted: bool) -> Any:
    """The Gradio component of one form field."""
    common = {"label": field.label, "elem_id": field.key.replace("_", "-")}
    if field.info:
        common["info"] = field.info
    default = FORM_DEFAULTS[field.key]
    if field.is_estimator_option:
        visible = FORM_DEFAULTS["estimator"] in field.estimators
        value = train_form.estimator_field_values(FORM_DEFAULTS["estimator"])[field.key]
        if field.kind == "choice":
            return gr.Dropdown(choices=list(field.choices), value=value, visible=visible, **common)
        if field.kind == "int-or-auto":
            return gr.Dropdown(choices=["auto", "1", "2", "3", "4", "6", "8"], value=value, allow_custom_value=True,
                               visible=visible, **common)
        if field.kind in ("int", "float"):
            return gr.Number(value=value, precision=0 if field.kind == "int" else None, visible=visible, **common)
        return gr.Textbox(value=value or "", visible=visible, **common)
    if field.key == "model":
        choices = MODEL_PRESETS + [(m, m) for m in hosted_models() if m not in dict(MODEL_PRESETS).values()] if hosted else MODEL_PRESETS
        return gr.Dropdown(choices=choices, value=default, allow_custom_value=not hosted, scale=2, **common)
    if field.key == "reward":
        from rlr_core.rewards import reward_names

        return gr.Dropdown(choices=reward_names(), value=default, allow_custom_value=not hosted, scale=2, **common)
    if field.key == "heldout_reward":  # auto, none or a reward name; a plug-in may be typed in (local only)
        return gr.Dropdown(choices=list(field.choices), value=default, allow_custom_value=not hosted, **common)
    if field.key == "lora_targets":  # a named set, or module-name suffixes typed in ("attn2.to_k, attn2.to_v")
        return gr.Dropdown(choices=list(field.choices), value=default, allow_custom_value=True, **common)
    if field.kind == "choice":
        return gr.Dropdown(choices=list(field.choices), value=default, **common)
    if field.kind == "bool":
        return gr.Checkbox(value=default, **common)
    if field.kind == "lines":
        return gr.Textbox(value=default, lines=3, placeholder=DEFAULT_PROMPTS, **common)
    if field.kind in ("int", "float"):
        maximum = field.maximum_for(hosted)
        slider = field.kind == "int" or field.key in FLOAT_SLIDERS
        if slider and field.minimum is not None and maximum is not None and maximum <= 1000:
            shown_max = min(maximum, 100) if field.kind == "int" else maximum
            return gr.Slider(field.minimum, shown_max, value=default, step=1 if field.kind == "int" else 0.05, **common)
        return gr.Number(value=default, precision=0 if field.kind == "int" else None, minimum=field.minimum,
                         maximum=maximum, **common)
    if field.key == "reward_options":
        return gr.Textbox(value=reward_help(default_reward())[1], **common)
    return gr.Textbox(value="" if default is None else default, placeholder="model default" if default is None else None,
                      **common)


def default_reward() -> str:
    return FORM_DEFAULTS["reward"]


def reward_help(name: str) -> tuple[str, str]:
    from rlr_core.rewards import list_rewards

    for info in list_rewards():
        if info["name"] == name:
            lines = [f"**{name}** — {info['description']}"]
            for key, opt in info["options"].items():
                choices = f" (one of {', '.join(map(str, opt['choices']))})" if opt.get("choices") else ""
                lines.append(f"- `{key}` ({opt['type']}, default `{opt['default']!r}`): {opt['help']}{choices}")
            defaults = {k: o["default"] for k, o in info["options"].items()}
            return "\n".join(lines), json.dumps(defaults) if defaults else "{}"
    return f"**{name}**: plug-in reward (`module:function` or `file.py`); options `function`, `differentiable`.", "{}"
