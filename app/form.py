"""The Train form in one table: every field's key, label, kind and default (bounds and choices of config
fields come from ``rlr_core.config.field_spec``, the hosted caps from ``rlr_core.hosted``; see app.form_fields).

The widgets of the Train tab, the parameters of the ``/train`` API endpoint, the defaults, the
parsing of form values into a ``TrainConfig`` (:func:`config_from_form`) and its inverse
(:func:`form_from_config`) all come from :data:`FIELDS`. Estimator options that get their own
field are the ones the estimators declare (``Estimator.ui_options``); the rest go in the
"More estimator options" JSON. No Gradio here: ``app.ui`` turns the table into widgets.
"""

from __future__ import annotations

import json
from typing import Any

from rlr_core.config import TrainConfig, field_spec
from rlr_core.config.rules import MIN_IMAGES_PER_PROMPT
from rlr_core.estimators import estimator_options, list_estimators, option_choices, ui_options
from rlr_core.hosted import check_hosted
from rlr_core.models import model_defaults
from rlr_core.rewards import reward_names

from .form_fields import MAX_JSON_DEPTH, Field, parse_float, parse_int, parse_seed, parse_value  # noqa: F401 - re-exported
from .settings import (DEFAULT_PROMPTS, HOSTED_MODELS_ENV, MODEL_PRESETS, TINY_MISSING_MESSAGE, caps, hosted_models,
                       tiny_model_available)
from .errors import FieldError


# Labels of the estimator options estimators may declare (``Estimator.ui_options``).
OPTION_LABELS: dict[str, tuple[str, str]] = {
    "h": ("h (HO sub-chain length)", "rlr: steps backpropagated inside the half-order sub-chain; auto = the largest that fits in memory"),
    "remaining": ("Remaining steps", "rlr: none = dropped (default), zo = unbiased, lr = likelihood ratio"),
    "zo_scale": ("ZO scale", "rlr: parameter perturbation size of the ZO part"),
    "window": ("Start window", "rlr: allowed starts of the HO sub-chain, refl: steps to predict the final state from; "
               "'a, b' as step indices, or fractions of the chain like '0.0, 0.4' (empty = the estimator's default)"),
    "k": ("k (steps backpropagated)", "truncated-bp: backprop through the last k steps"),
    "k_min": ("Shortest tail", "alignprop: backprop through the last K steps, K drawn in [k_min, k_max] (k_max: JSON, default T)"),
    "n": ("Re-noisings", "draft-lv: last-step gradients averaged over n re-noisings of the final image"),
    "jumps": ("Prediction calls", "refl: model calls of the prediction of the final image (1 = one-step x0)"),
    "inner_epochs": ("PPO epochs", "ddpo: PPO epochs per rollout"),
    "clip_range": ("PPO clip range", "ddpo: per-dimension ratio clip"),
    "scale": ("Perturbation scale", "zo: parameter perturbation size"),
    "chain_len": ("LR steps", "rlr-released: random single-step likelihood-ratio terms"),
}


AUTO_OPTIONS = {"h"}  # options that also take "auto" (rlr_core.run: h from the memory model)


def _estimator_option_fields() -> list[Field]:
    takers: dict[str, list[str]] = {}
    kinds: dict[str, str] = {}
    choices: dict[str, tuple] = {}
    for name in list_estimators():
        for option, default in ui_options(name).items():
            takers.setdefault(option, []).append(name)
            kinds.setdefault(option, _option_kind(default))
            choices.update({k: tuple(v) for k, v in option_choices(name).items() if k == option})
    fields = []
    for option, names in takers.items():
        label, info = OPTION_LABELS.get(option, (option, ""))
        kind = "choice" if option in choices else kinds[option]
        if option in AUTO_OPTIONS:
            kind = "int-or-auto"
        minimum = 1 if kind == "int" else None
        fields.append(Field(option, label, kind, None, minimum=minimum, info=info, choices=choices.get(option, ()),
                            estimators=tuple(names), section="estimator"))
    return fields


def _option_kind(default: Any) -> str:
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "int"
    if isinstance(default, float):
        return "float"
    if default is None or isinstance(default, (list, tuple)):
        return "pair"
    return "text"


FIELDS: list[Field] = [
    Field("model", "Model", "choice", "tiny", "model", choices=tuple(v for _, v in MODEL_PRESETS),
          info="a preset, a Hugging Face Hub id or a local diffusers folder"),
    Field("reward", "Reward", "choice", "saturation", "reward", choices=tuple(reward_names()),
          info="built-in, or a plug-in 'module:function' / file.py (local only)"),
    Field("reward_options", "Reward options (JSON)", "json", "{}", "reward_options"),
    Field("prompt", "Prompts (one per line)", "lines", DEFAULT_PROMPTS.splitlines()[0], "prompts", cap="prompts"),
    Field("coarse_prompt", "Coarse prompt (first steps)", "text", "", "coarse_prompt", section="schedule"),
    Field("mid_prompt", "Mid prompt", "text", "", "mid_prompt", section="schedule"),
    Field("fine_prompt", "Fine prompt (last steps)", "text", "", "fine_prompt", section="schedule"),
    Field("prompt_boundaries", "Prompt boundaries", "pair", "1/3, 2/3", "prompt_boundaries", section="schedule",
          info="two step indices 'a, b' or fractions '1/3, 2/3'"),
    Field("estimator", "Estimator", "choice", "rlr", "estimator", choices=tuple(list_estimators()), section="estimator",
          info="rlr (default), rlr-paper (the exactly unbiased RLR) or a baseline"),
    *_estimator_option_fields(),
    Field("estimator_options", "More estimator options (JSON)", "json", "{}", "estimator_options", section="estimator",
          info='e.g. {"lr_samples": 4} for rlr, {"baseline": "prompt"} for ddpo'),
    Field("num_steps", "Sampling steps", "int", model_defaults("tiny")["num_steps"], "num_steps", cap="num_steps",
          section="sampling", info="default: the model's own"),
    Field("eta", "eta", "float", 1.0, "eta", section="sampling"),
    Field("guidance_scale", "Guidance", "optional-float", None, "guidance_scale", section="sampling",
          info="empty = the model's default"),
    Field("batch_size", "Batch size", "int", 4, "batch_size", cap="batch_size", section="sampling",
          info="a multiple of the estimator's noise groups"),
    Field("lr", "Learning rate", "float", 1e-3, "lr", section="optimization"),
    Field("lr_schedule", "LR schedule", "choice", "constant", "lr_schedule", section="optimization",
          info="cosine / linear: decay from the learning rate toward 0 over the iterations"),
    Field("lora_rank", "LoRA rank", "int", 4, "lora_rank", cap="lora_rank", section="optimization"),
    Field("lora_targets", "LoRA targets", "choice", "auto", "lora_targets", section="optimization",
          info="auto: the model's own (tiny: attention+conv, others: attention); attention: every attention layer; "
               "cross-attention: only what reads the prompt (the model keeps drawing its own shapes); "
               "attention+conv: also the convolutions (can move where things sit)"),
    Field("kl_weight", "KL to the base model", "float", 0.0, "kl_weight", section="optimization",
          info="0 = off; > 0 pulls the run back toward what the base model draws (against reward hacking; needs eta > 0)"),
    Field("steps", "Iterations", "int", 50, "steps", cap="steps", section="optimization"),
    Field("seed", "Seed", "int", 0, "seed", section="optimization"),
    Field("eval_every", "Refresh 'after' every N iterations", "int", 5, "eval_every", section="optimization"),
    Field("continue_lora", "Continue from the current LoRA (same model and rank)", "bool", False, section="optimization"),
    # the reward-hacking guard (docs/guard.md); keep_best is on in the app (the library's default is off)
    Field("keep_best", "Keep the best guarded LoRA", "bool", True, "keep_best", section="guard",
          info="export the LoRA of the evaluation with the best eval-reward gain whose held-out reward and diversity "
               "held up (the base model if none); the last iteration's LoRA goes to lora-last"),
    Field("heldout_reward", "Held-out reward", "choice", field_spec("heldout_reward").default, "heldout_reward",
          choices=("auto", "none", *reward_names()), section="guard",
          info="scored at every evaluation, never trained on: auto = CLIP score of the prompt (tiny-clip for the "
               "tiny model), none = off"),
    Field("heldout_reward_options", "Held-out reward options (JSON)", "json", "{}", "heldout_reward_options",
          section="guard", info='e.g. {"text": "a red shape"} to score every image against one text'),
    Field("guard_tolerance", "Held-out tolerance", "float", field_spec("guard_tolerance").default, "guard_tolerance",
          section="guard", info="refuse an evaluation whose held-out reward fell more than this fraction of |base| "
                                "below the base model's"),
    Field("min_diversity", "Minimum diversity", "float", field_spec("min_diversity").default, "min_diversity",
          section="guard", info="refuse an evaluation whose diversity (base model = 1.0) is below this; 0 = no check"),
    Field("early_stop_patience", "Early-stop patience", "int", field_spec("early_stop_patience").default,
          "early_stop_patience", section="guard",
          info="end the run after N evaluations without a better guarded score; 0 = never"),
]

FIELD_BY_KEY = {f.key: f for f in FIELDS}
FORM_KEYS = [f.key for f in FIELDS]
FORM_DEFAULTS: dict[str, Any] = {f.key: f.default for f in FIELDS}
_LABEL_OF_CONFIG = {f.config: f.label for f in FIELDS if f.config}


def estimator_option_values(estimator: str, values: dict[str, Any], hosted: bool) -> dict[str, Any]:
    """The estimator-option fields that are set, as options of ``estimator``; FieldError for a
    field set for an estimator that does not take it."""
    options: dict[str, Any] = {}
    for field in FIELDS:
        if not field.is_estimator_option:
            continue
        value = values.get(field.key)
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        if estimator not in field.estimators:
            raise FieldError(field.label, f"only applies to estimator {' / '.join(field.estimators)}, not {estimator!r}; "
                                          f"leave it empty")
        parsed = parse_value(field, value, hosted)
        if field.kind == "pair" and parsed is not None:
            if "." in str(value):  # '0.0, 0.4': fractions of the chain
                if not all(0.0 <= float(v) <= 1.0 for v in parsed):
                    raise FieldError(field.label, f"fractions of the chain must lie in [0, 1]; got {value!r}")
                parsed = [float(v) for v in parsed]
            elif not all(float(v).is_integer() for v in parsed):
                raise FieldError(field.label, f"must be two integer step indices 'a, b' or two fractions '0.0, 0.4'; "
                                              f"got {value!r}")
            else:
                parsed = [int(v) for v in parsed]
        if field.kind == "choice" and field.choices and parsed not in field.choices:
            raise FieldError(field.label, f"must be one of {', '.join(field.choices)}; got {parsed!r}")
        default = ui_options(estimator)[field.key]
        if parsed != (list(default) if isinstance(default, tuple) else default):  # the default needs no config entry
            options[field.key] = parsed
    return options


def config_from_form(values: dict[str, Any], hosted: bool, output_dir: str = "runs/app") -> TrainConfig:
    """A validated TrainConfig from Train-form values (UI or /train); missing keys take the defaults."""
    v = {**FORM_DEFAULTS, **{k: val for k, val in values.items() if k in FIELD_BY_KEY}}
    if v["model"] == "tiny" and not tiny_model_available():
        raise FieldError("Model", TINY_MISSING_MESSAGE)
    data: dict[str, Any] = {}
    for field in FIELDS:
        if field.config is not None:
            data[field.config] = parse_value(field, v[field.key], hosted)
    if not data["model"]:
        raise FieldError("Model", "choose a preset or enter a Hub id / local diffusers folder")
    if hosted and data["model"] not in hosted_models():
        raise FieldError("Model", f"this server offers {', '.join(hosted_models())}; got {data['model'][:100]!r} "
                                  f"(the operator adds Hub ids with {HOSTED_MODELS_ENV})")
    if data["prompt_boundaries"] is None:
        data["prompt_boundaries"] = [1 / 3, 2 / 3]
    knobs = estimator_option_values(data["estimator"], v, hosted) if data["estimator"] in list_estimators() else {}
    data["estimator_options"] = {**knobs, **data["estimator_options"]}
    data.update(eval_seeds=evaluation_seeds(data, hosted), checkpoint_every=0, log_every=1, output_dir=output_dir)
    if data["estimator"] not in list_estimators():  # names are the builder's to check; the form knows its choices
        raise FieldError("Estimator", f"estimator must be one of {', '.join(list_estimators())}; got {data['estimator']!r}")
    heldout = FIELD_BY_KEY["heldout_reward"]
    plugin = ":" in data["heldout_reward"] or data["heldout_reward"].endswith(".py")  # the builder checks plug-ins
    if data["heldout_reward"] not in heldout.choices and not plugin:
        raise FieldError(heldout.label, f"must be one of {', '.join(heldout.choices)} (or a plug-in 'module:function' / "
                                        f"file.py, local only); got {data['heldout_reward'][:100]!r}")
    try:
        config = TrainConfig.from_dict(data, validate=False).validate()
        return check_hosted(config, estimator_options(config.estimator)) if hosted else config
    except ValueError as error:
        raise field_error(error) from None


def evaluation_seeds(data: dict[str, Any], hosted: bool) -> list[int]:
    """The evaluation seeds of a run from the form: MIN_IMAGES_PER_PROMPT (4) images per prompt (the diversity
    figure of the guard compares the images of one prompt), at most ``caps(hosted)["eval_seeds"]``. When keep_best
    checks the diversity and the cap leaves fewer than 4 images per prompt, only the first prompts are evaluated
    (``data["eval_prompts"]`` is set to them), 4 images each."""
    prompts = list(data["prompts"])
    limit = caps(hosted)["eval_seeds"]
    wanted = MIN_IMAGES_PER_PROMPT * len(prompts)
    if wanted > limit and data["keep_best"] and data["min_diversity"] > 0:
        data["eval_prompts"] = prompts[: max(limit // MIN_IMAGES_PER_PROMPT, 1)]
        wanted = MIN_IMAGES_PER_PROMPT * len(data["eval_prompts"])
    return list(range(min(wanted, limit)))


def field_error(error: ValueError) -> FieldError:
    """A library ValueError (ConfigError or a message starting with the field) as a FieldError with the form's label."""
    field = getattr(error, "field", None) or str(error).split(" ", 1)[0].strip(":'\"")
    return FieldError(_LABEL_OF_CONFIG.get(field, field if field.replace("_", "").isalnum() else "config"), str(error))


def form_from_config(config: TrainConfig) -> dict[str, Any]:
    """Form values that reproduce ``config`` (the inverse of :func:`config_from_form`)."""
    options = dict(config.estimator_options)
    defaults = ui_options(config.estimator) if config.estimator in list_estimators() else {}
    form: dict[str, Any] = {}
    for field in FIELDS:
        if field.is_estimator_option:
            form[field.key] = _show(field, options.pop(field.key, defaults[field.key])) if field.key in defaults else None
        elif field.config is not None and field.config != "estimator_options":
            form[field.key] = _show(field, getattr(config, field.config))
    form["estimator_options"] = json.dumps(options)
    form["continue_lora"] = False
    return form


def _number_text(value: float | int) -> str:
    """'1' for an integer, '0.4' / '0.0' for a float (its point kept: a pair of floats reads as fractions)."""
    text = f"{value:g}"
    return text + ".0" if isinstance(value, float) and text.lstrip("-").isdigit() else text


def _show(field: Field, value: Any) -> Any:
    if field.kind == "choice" and isinstance(value, (list, tuple)):  # lora_targets given as a list of module names
        return ", ".join(map(str, value))
    if field.kind == "json":
        return json.dumps(value)
    if field.kind == "lines":
        return "\n".join(value)
    if field.kind == "pair":  # floats keep their point ('0.0, 0.4': fractions), integers are step indices
        return "" if value is None else ", ".join(_number_text(v) for v in value)
    if field.kind == "optional-float":
        return "" if value is None else value
    if field.kind == "int-or-auto":
        return None if value is None else str(value)
    return value


def estimator_field_values(estimator: str) -> dict[str, Any]:
    """Estimator-option field values for ``estimator``: its defaults where it takes the option, None elsewhere."""
    defaults = ui_options(estimator) if estimator in list_estimators() else {}
    return {f.key: _show(f, defaults[f.key]) if f.key in defaults else None for f in FIELDS if f.is_estimator_option}


def batch_step(estimator: str, reward: str) -> int:
    """The batch sizes the estimator accepts with this reward are multiples of this (its noise groups)."""
    from rlr_core.estimators import get_estimator
    from rlr_core.rewards import list_rewards

    differentiable = next((r["differentiable"] for r in list_rewards() if r["name"] == reward), False)
    try:
        return int(get_estimator(estimator).noise_groups(bool(differentiable)))
    except ValueError:
        return 1


def minimum_batch(estimator: str, reward: str) -> int:
    """The smallest batch the estimator accepts with its default options and this reward."""
    step = batch_step(estimator, reward)
    options = estimator_options(estimator) if estimator in list_estimators() else {}
    from rlr_core.estimators import get_estimator

    try:
        uses_baseline = get_estimator(estimator).uses_baseline() and options.get("baseline", "loo") == "loo"
    except ValueError:
        uses_baseline = False
    return 2 * step if uses_baseline else step
