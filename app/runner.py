"""What the app does, without Gradio: form values -> TrainConfig, training streams, preference
rounds, diagnostics, export, generation. Every computation is a call into ``rlr_core``; this module
only orchestrates (which run, which lock, which files) and reports errors as ``FieldError``.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any, Iterator

from rlr_core.config import TrainConfig

from . import state
from .settings import TINY_MISSING_MESSAGE, caps, tiny_model_available
from .state import FieldError, Run


def rlr_knob_defaults() -> dict[str, Any]:
    """The library's defaults of the rlr knobs on the form (h, remaining, zo scale), so that the
    app's default estimator is exactly ``get_estimator("rlr")``."""
    from rlr_core.estimators import estimator_options

    options = estimator_options("rlr")
    return {"h": options["h"], "remaining": options["remaining"], "zo_scale": options["zo_scale"]}


# Default values of the Train form (also the defaults of the /train API endpoint). Small, so the
# first update appears within seconds with the tiny model on a CPU. The rlr knobs come from rlr_core.
FORM_DEFAULTS: dict[str, Any] = {
    "model": "tiny",
    "reward": "saturation",
    "reward_options": "{}",
    "prompt": "a red circle on a blue background",
    "coarse_prompt": "",
    "mid_prompt": "",
    "fine_prompt": "",
    "prompt_boundaries": "1/3, 2/3",
    "ho_window": "",
    "estimator": "rlr",
    **rlr_knob_defaults(),
    "estimator_options": "{}",
    "num_steps": 10,
    "eta": 1.0,
    "guidance_scale": None,
    "batch_size": 4,
    "lr": 1e-3,
    "lora_rank": 4,
    "steps": 50,
    "seed": 0,
    "eval_every": 5,
    "continue_lora": False,
}

EVAL_SEEDS = [0, 1, 2, 3]


# ----------------------------------------------------------------------------------- parsing
def _json_options(field_name: str, text: Any) -> dict[str, Any]:
    if text is None or text == "":
        return {}
    if isinstance(text, dict):
        return dict(text)
    try:
        value = json.loads(str(text))
    except json.JSONDecodeError as error:
        raise FieldError(field_name, f'must be a JSON object like {{"key": value}}; {error.msg} at column {error.colno}') from None
    if not isinstance(value, dict):
        raise FieldError(field_name, f'must be a JSON object like {{"key": value}}, got {type(value).__name__}')
    return value


def _number(text: str) -> float | int:
    text = text.strip()
    if "/" in text:
        a, b = text.split("/", 1)
        return float(a) / float(b)
    value = float(text)
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def _pair(field_name: str, text: Any, allowed: str) -> list[float | int] | None:
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    if isinstance(text, (list, tuple)):
        parts = list(text)
    else:
        parts = [p for p in str(text).replace(";", ",").split(",") if p.strip()]
    try:
        values = [_number(p) if isinstance(p, str) else p for p in parts]
    except (ValueError, ZeroDivisionError):
        raise FieldError(field_name, f"must be {allowed}; got {text!r}") from None
    if len(values) != 2:
        raise FieldError(field_name, f"must be {allowed}; got {text!r}")
    return values


def _int(field_name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    try:
        number = float(value)
        if not math.isfinite(number) or not number.is_integer():
            raise ValueError
    except (TypeError, ValueError):
        raise FieldError(field_name, f"must be an integer; got {value!r}") from None
    number = int(number)
    if minimum is not None and number < minimum or maximum is not None and number > maximum:
        bounds = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise FieldError(field_name, f"must be {bounds}; got {number}")
    return number


def _float(field_name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise FieldError(field_name, f"must be a number; got {value!r}") from None
    if not math.isfinite(number):
        raise FieldError(field_name, f"must be a finite number; got {value!r}")
    return number


def estimator_knobs(estimator: str, h: Any, remaining: Any, zo_scale: Any, ho_window: Any) -> dict[str, Any]:
    """The generic knobs of the form mapped to the options the chosen estimator accepts."""
    from rlr_core.estimators import estimator_options

    try:
        accepted = estimator_options(estimator)
    except ValueError as error:
        raise FieldError("estimator", str(error)) from None
    options: dict[str, Any] = {}
    if "h" in accepted and h not in (None, ""):
        options["h"] = _int("h", h, minimum=1)
    if "remaining" in accepted and remaining:
        options["remaining"] = str(remaining)
    if zo_scale not in (None, ""):
        if "zo_scale" in accepted:
            options["zo_scale"] = _float("zo scale", zo_scale)
        elif "scale" in accepted and estimator == "zo":
            options["scale"] = _float("zo scale", zo_scale)
    window = _pair("HO window", ho_window, "two step indices 'a, b' with a <= b (empty = every allowed start)")
    if window is not None:
        if "window" not in accepted:
            raise FieldError("HO window", f"only applies to estimator rlr, not {estimator!r}; leave it empty")
        if not all(isinstance(v, int) for v in window):
            raise FieldError("HO window", f"must be two integer step indices 'a, b'; got {ho_window!r}")
        options["window"] = [int(v) for v in window]
    return options


def config_from_form(values: dict[str, Any], hosted: bool, session: str = "") -> TrainConfig:
    """Build and validate a TrainConfig from Train-form values (UI or /train API)."""
    v = {**FORM_DEFAULTS, **{k: val for k, val in values.items() if val is not None or k == "guidance_scale"}}
    limit = caps(hosted)
    model = str(v["model"] or "").strip()
    if not model:
        raise FieldError("model", "choose a preset or enter a Hub id / local diffusers folder")
    if model == "tiny" and not tiny_model_available():
        raise FieldError("model", TINY_MISSING_MESSAGE)
    prompts = [line.strip() for line in str(v["prompt"] or "").splitlines() if line.strip()]
    if not prompts:
        raise FieldError("prompts", "enter at least one prompt (one per line)")
    if len(prompts) > limit["prompts"]:
        raise FieldError("prompts", f"at most {limit['prompts']} prompts here; got {len(prompts)}")
    reward = str(v["reward"] or "").strip()
    estimator = str(v["estimator"] or "").strip()
    estimator_options = {
        **estimator_knobs(estimator, v["h"], v["remaining"], v["zo_scale"], v["ho_window"]),
        **_json_options("estimator options", v["estimator_options"]),
    }
    boundaries = _pair("prompt boundaries", v["prompt_boundaries"],
                       "two step indices 'a, b' or two fractions like '1/3, 2/3'") or [1 / 3, 2 / 3]
    guidance = v["guidance_scale"]
    num_steps = _int("sampling steps", v["num_steps"], 2, limit["num_steps"])
    batch_size = _int("batch size", v["batch_size"], 1, limit["batch_size"])
    steps = _int("iterations", v["steps"], 1, limit["steps"])
    lora_rank = _int("LoRA rank", v["lora_rank"], 1, limit["lora_rank"])
    eval_every = _int("eval every", v["eval_every"], 0)
    data = {
        "model": model,
        "reward": reward,
        "reward_options": _json_options("reward options", v["reward_options"]),
        "estimator": estimator,
        "estimator_options": estimator_options,
        "prompts": prompts,
        "coarse_prompt": str(v["coarse_prompt"] or "").strip(),
        "mid_prompt": str(v["mid_prompt"] or "").strip(),
        "fine_prompt": str(v["fine_prompt"] or "").strip(),
        "prompt_boundaries": boundaries,
        "num_steps": num_steps,
        "eta": _float("eta", v["eta"]),
        "guidance_scale": None if guidance is None or str(guidance).strip() == "" else _float("guidance", guidance),
        "batch_size": batch_size,
        "lr": _float("learning rate", v["lr"]),
        "lora_rank": lora_rank,
        "steps": steps,
        "seed": _int("seed", v["seed"], 0),
        "eval_seeds": list(EVAL_SEEDS),
        "eval_every": eval_every,
        "checkpoint_every": 0,
        "log_every": 1,
        "output_dir": str(state.runs_root() / "pending"),
    }
    try:
        config = TrainConfig.from_dict(data, validate=False)
        config.validate(hosted=hosted)
    except ValueError as error:
        raise FieldError(_field_of(str(error)), str(error)) from None
    return config


_FIELD_LABELS = {
    "num_steps": "sampling steps", "batch_size": "batch size", "steps": "iterations", "lr": "learning rate",
    "lora_rank": "LoRA rank", "guidance_scale": "guidance", "prompt_boundaries": "prompt boundaries",
    "estimator_options": "estimator options", "reward_options": "reward options",
}


def _field_of(message: str) -> str:
    """The config field a ValueError message starts with, as the UI labels it."""
    head = message.split(" ", 1)[0].strip(":'\"")
    return _FIELD_LABELS.get(head, head if head.replace("_", "").isalnum() else "config")


# ----------------------------------------------------------------------------------- runs
def create_run(session: str, config: TrainConfig, hosted: bool, continue_lora: bool = False) -> Run:
    """Load (or reuse) the model, build reward, estimator and Trainer; register as the session's run."""
    from rlr_core.estimators import get_estimator
    from rlr_core.rewards import WeightsUnavailableError, get_reward
    from rlr_core.trainer import Trainer

    previous = state.session_run(session)
    try:
        estimator = get_estimator(config.estimator, **config.estimator_options)
    except (ValueError, TypeError) as error:
        raise FieldError("estimator", str(error)) from None
    entry = state.MODELS.get(config)
    try:
        reward = get_reward(config.reward, device=getattr(entry.chain, "device", None),
                            hosted=True if hosted else None, **config.reward_options)
    except WeightsUnavailableError as error:
        raise FieldError("reward", f"{error} Pick a weight-free reward (saturation, brightness, ...) offline.") from None
    except (ValueError, TypeError, ImportError) as error:
        raise FieldError("reward", str(error)) from None
    run_id = state.new_run_id()
    output_dir = state.run_dir(run_id)
    config = config.replace(output_dir=str(output_dir))
    lora = None
    if continue_lora and previous is not None:
        lora = state.current_lora(previous)
        if set(lora) != set(entry.initial_lora) or any(
            tuple(lora[k].shape) != tuple(entry.initial_lora[k].shape) for k in lora
        ):
            raise FieldError(
                "continue from current LoRA",
                f"the session's LoRA ({previous.config.model}, rank {previous.config.lora_rank}) does not fit "
                f"{config.model} with rank {config.lora_rank}; uncheck it or use the same model and LoRA rank",
            )
    run = Run(run_id, session, config, entry, reward, estimator, None, lora, output_dir)
    with state.using(run) as chain:
        try:
            run.trainer = Trainer(chain, reward, estimator, config)
        except ValueError as error:
            raise FieldError(_field_of(str(error)), str(error)) from None
    state.register(run)
    return run


def require_run(session: str, what: str) -> Run:
    run = state.session_run(session)
    if run is None:
        raise FieldError(what, "this session has no run yet: start training (or a preference round) first")
    return run


def train_stream(session: str, config: TrainConfig, hosted: bool, continue_lora: bool = False,
                 chunk: int | None = None) -> Iterator[Run]:
    """Create a run and yield it after each iteration (first: right after creation).

    The trainer is advanced one iteration at a time inside :func:`state.using`, so other sessions
    can use the same chain between iterations. Closing this generator stops the run and exports the
    LoRA. ``chunk``: on ZeroGPU, iterations per GPU call (see :mod:`app.zerogpu`).
    """
    from rlr_core.trainer import TrainingStepError

    from . import zerogpu

    run = create_run(session, config, hosted, continue_lora)
    run.status = "starting: sampling the before images (LoRA off), then iteration 1"
    run.running = True
    yield run
    stepper = zerogpu.stepper(run, chunk)
    try:
        for report in stepper:
            record_report(run, report)
            yield run
        run.finished = True
        run.status = _final_status(run)
        yield run
    except TrainingStepError as error:
        run.status = f"failed: {error}"
        raise FieldError("training", str(error)) from None
    finally:
        run.running = False
        if not run.finished:
            run.stop_requested = True
            run.trainer.stop()
            with state.using(run):
                stepper.close()


def record_report(run: Run, report: Any) -> None:
    """Store what the UI shows of a StepReport in the run (history rows, before/after images)."""
    from . import formatting

    row = report.to_json_dict()
    run.history.append(row)
    if report.before_images is not None and run.before is None:
        run.before = formatting.captioned(report.before_images, run.trainer.eval_prompts, report.before_rewards)
    if report.eval_images is not None:
        run.after = formatting.captioned(report.eval_images, run.trainer.eval_prompts, report.eval_rewards)
        run.after_step = report.step
    run.status = formatting.status_line(run, row)


def _final_status(run: Run) -> str:
    from . import formatting

    last = run.history[-1] if run.history else None
    stopped = run.step < run.config.steps
    head = f"stopped after iteration {run.step}" if stopped else f"finished {run.step} iterations"
    tail = formatting.status_line(run, last) if last else ""
    return f"{head}; LoRA kept ({run.output_dir / 'lora'}). {tail}"


def stop(session: str) -> str:
    run = state.session_run(session)
    if run is None or not run.running:
        return "nothing is running in this session"
    run.stop_requested = True
    run.trainer.stop()
    return f"stopping after iteration {run.step + 1} (the LoRA is kept)"


# ----------------------------------------------------------------------------------- generation
def generate(session: str, model: str, prompt: str, seed: int, use_lora: bool, hosted: bool,
             num_images: int = 4) -> list[tuple[Any, str]]:
    """Images for ``prompt`` from seeds seed, seed+1, ... with the session's LoRA or the base model."""
    from rlr_core.sampling import sample
    from rlr_core.trainer import to_pil

    prompt = str(prompt or "").strip()
    if not prompt:
        raise FieldError("prompt", "enter a prompt")
    seed = _int("seed", seed, 0)
    n = _int("number of images", num_images, 1, caps(hosted)["generate_images"])
    model = str(model or "").strip()
    seeds = [seed + i for i in range(n)]
    if use_lora:
        run = require_run(session, "use_lora")
        if model and model != run.config.model:
            raise FieldError("model", f"this session's LoRA was trained on {run.config.model!r}, not {model!r}; "
                                      f"pass that model or use_lora=false")
        with state.using(run) as chain:
            images = sample(chain, [prompt] * n, seeds=seeds)
        label = f"{run.config.model} + LoRA ({run.step} it)"
    else:
        config = config_from_form({"model": model or "tiny"}, hosted)
        run = state.session_run(session)
        if run is not None and run.config.model == config.model:
            config = run.config  # same sampler settings as the session's run
        entry = state.MODELS.get(config)
        with state.WORK_LOCK:
            disabled = getattr(entry.chain, "adapters_disabled", None)
            with disabled():
                images = sample(entry.chain, [prompt] * n, seeds=seeds)
        label = f"{config.model} (base)"
    return [(image, f"{label} · seed {s}") for image, s in zip(to_pil(images) or [], seeds)]


# ----------------------------------------------------------------------------------- batches
def noise_group_batch(run: Run, size: Any, differentiable_reward: bool, field_name: str, maximum: int) -> list[str]:
    """The run's prompts as a batch of ``size`` for its estimator's noise groups.

    The estimator splits the batch in g groups (samples i, i + n, i + 2n, ... share noise, n = size / g),
    and rows that share noise must share the prompt: n prompts, repeated g times
    (``rlr_core.estimators.base.grouped_prompts``). FieldError naming ``field_name`` unless size % g == 0.
    """
    from rlr_core.estimators.base import grouped_prompts

    groups = int(run.estimator.noise_groups(differentiable_reward))
    size = int(size)
    if size % groups:
        allowed = ", ".join(str(m) for m in range(groups, maximum + 1, groups)) or f"none up to {maximum}"
        raise FieldError(field_name, f"must be a multiple of {groups} for estimator {run.config.estimator!r} "
                                     f"(its batch is split in {groups} groups that share noise); "
                                     f"allowed: {allowed}; got {size}")
    return grouped_prompts(list(run.config.prompts), size, groups)


# ----------------------------------------------------------------------------------- preference
def preference_round(session: str, form: dict[str, Any], hosted: bool, k: int, mode: str,
                     features: str = "pixels") -> Run:
    """Show a new round of ``k`` images from the session's current model (a run is created if needed)."""
    from rlr_core.rewards.preference import ClickLog, PreferenceReward, PreferenceSession

    k = _int("images per round", k, 2, caps(hosted)["pref_k"])
    if mode not in ("direct", "learned"):
        raise FieldError("preference mode", f"must be 'direct' or 'learned'; got {mode!r}")
    run = state.session_run(session)
    if run is None:
        run = create_run(session, config_from_form(form, hosted), hosted)
    if run.running:
        raise FieldError("preference", "training is running in this session; stop it first")
    prompts = noise_group_batch(run, k, mode == "learned", "images per round", caps(hosted)["pref_k"])
    key = (mode, features)
    if run.preference is None or run.preference_key != key:
        log = ClickLog(run.output_dir / "clicks.jsonl")
        reward = PreferenceReward(log, features=features) if mode == "learned" else None
        run.preference = PreferenceSession(run.chain, run.estimator, run.trainer, log, mode=mode, k=None, reward=reward)
        run.preference_key = key
    seed = 10_000 + run.config.seed * 1000 + run.counters["rounds"]
    with state.using(run):
        run.round = run.preference.new_round(prompts, seed=seed)
    run.counters["rounds"] += 1
    return run


def preference_update(session: str, chosen: list[int], best_only: bool) -> tuple[Run, Any]:
    """Record the clicks of the round on screen and run one RLR step from them."""
    run = require_run(session, "preference")
    if run.round is None or run.round.updated:
        raise FieldError("preference", "no round on screen: click 'New round' first")
    chosen = sorted({int(i) for i in chosen})
    n = run.round.size
    if not chosen:
        raise FieldError("preferred images", "select at least one image (click it, or tick its number)")
    if best_only and len(chosen) != 1:
        raise FieldError("preferred images", f"'best one' mode: select exactly one image; got {len(chosen)}")
    if len(chosen) >= n:
        raise FieldError("preferred images", f"leave at least one image unselected (a preference needs a contrast); "
                                             f"selected {len(chosen)} of {n}")
    with state.using(run):
        try:
            run.preference.click(run.round, chosen=chosen)
        except ValueError as error:
            raise FieldError("preferred images", str(error)) from None
        update = run.preference.update(run.round)
    run.counters["clicks"] += len(chosen)
    run.counters["updates"] += 1
    return run, update


# ----------------------------------------------------------------------------------- diagnostics
def diagnostics(session: str, form: dict[str, Any], hosted: bool, estimators: list[str], repeats: int) -> list[dict]:
    """``rlr_core.diagnostics.probe`` on the session's model (with its LoRA) and reward."""
    from rlr_core.diagnostics import probe

    if not estimators:
        raise FieldError("estimators", "pick at least one estimator")
    repeats = _int("repeats", repeats, 2, caps(hosted)["probe_repeats"])
    run = state.session_run(session)
    if run is None:
        run = create_run(session, config_from_form(form, hosted), hosted)
    if run.running:
        raise FieldError("diagnostics", "training is running in this session; stop it first")
    config = run.config
    differentiable = bool(getattr(run.reward, "differentiable", False))
    prompts = noise_group_batch(run, config.batch_size, differentiable, "batch size", caps(hosted)["batch_size"])
    specs: list[Any] = [(name, dict(config.estimator_options)) if name == config.estimator else name for name in estimators]
    with state.using(run) as chain:
        try:
            stats = probe(chain, run.reward, specs, prompts, repeats=repeats, seed=config.seed)
        except ValueError as error:
            raise FieldError("diagnostics", str(error)) from None
    return [s.row() for s in stats]


# ----------------------------------------------------------------------------------- export / import
def export(session: str) -> tuple[Path, Path, str]:
    """Write the LoRA (.safetensors, via chain.save_lora) and the config (YAML); return paths + snippet."""
    run = require_run(session, "export")
    if run.running:
        raise FieldError("export", "training is running; stop it (the LoRA is kept) or wait for the end")
    folder = run.output_dir / "export" / f"step-{run.step:06d}"
    shutil.rmtree(folder, ignore_errors=True)
    with state.using(run) as chain:
        chain.save_lora(folder)
    weights = next(folder.glob("*.safetensors"))
    config_path = folder / "rlr_config.yaml"
    run.config.to_yaml(config_path)
    return weights, config_path, snippet(run)


def snippet(run: Run) -> str:
    model = run.config.model
    base = "path/to/assets/tiny-shapes" if model == "tiny" else model
    return (
        "```python\n"
        "import torch\n"
        "from diffusers import StableDiffusionPipeline\n\n"
        f"pipe = StableDiffusionPipeline.from_pretrained({base!r}, torch_dtype=torch.float16).to(\"cuda\")\n"
        "pipe.load_lora_weights(\"pytorch_lora_weights.safetensors\")  # the file downloaded here\n"
        f"image = pipe({run.config.prompts[0]!r}, num_inference_steps={run.config.num_steps}).images[0]\n"
        "```\n\n"
        "Or with rlr_core (also for the pixel-space tiny model, which has no VAE):\n\n"
        "```python\n"
        "from rlr_core.diffusers_chain import load_model\n"
        "from rlr_core.sampling import sample\n\n"
        f"chain = load_model({model!r}, lora_rank={run.config.lora_rank}, num_steps={run.config.num_steps})\n"
        "chain.load_lora(\"pytorch_lora_weights.safetensors\")\n"
        f"images = sample(chain, [{run.config.prompts[0]!r}] * 4, seeds=[0, 1, 2, 3])\n"
        "```"
    )


def load_config_file(path: str, hosted: bool) -> TrainConfig:
    try:
        return TrainConfig.from_file(path).validate(hosted=hosted)
    except ValueError as error:
        raise FieldError("config file", str(error)) from None


def form_from_config(config: TrainConfig) -> dict[str, Any]:
    """Train-form values that reproduce ``config`` (the inverse of :func:`config_from_form`)."""
    options = dict(config.estimator_options)
    form = {
        "model": config.model,
        "reward": config.reward,
        "reward_options": json.dumps(config.reward_options),
        "prompt": "\n".join(config.prompts),
        "coarse_prompt": config.coarse_prompt,
        "mid_prompt": config.mid_prompt,
        "fine_prompt": config.fine_prompt,
        "prompt_boundaries": ", ".join(f"{b:g}" for b in config.prompt_boundaries),
        "ho_window": ", ".join(str(w) for w in options.pop("window", None) or []),
        "estimator": config.estimator,
        "h": options.pop("h", FORM_DEFAULTS["h"]),
        "remaining": options.pop("remaining", FORM_DEFAULTS["remaining"]),
        "zo_scale": options.pop("zo_scale", options.pop("scale", FORM_DEFAULTS["zo_scale"])),
        "estimator_options": json.dumps(options),
        "num_steps": config.num_steps,
        "eta": config.eta,
        "guidance_scale": "" if config.guidance_scale is None else config.guidance_scale,
        "batch_size": config.batch_size,
        "lr": config.lr,
        "lora_rank": config.lora_rank,
        "steps": config.steps,
        "seed": config.seed,
        "eval_every": config.eval_every,
    }
    return form


def upload_lora(session: str, path: str, form: dict[str, Any], hosted: bool) -> Run:
    """Load an uploaded LoRA (.safetensors from Export / save_lora) into the session's run."""
    if not path or not str(path).endswith(".safetensors"):
        raise FieldError("LoRA file", f"must be a .safetensors file written by Export (save_lora); got {Path(str(path)).name!r}")
    run = state.session_run(session)
    if run is None or run.running:
        if run is not None and run.running:
            raise FieldError("LoRA file", "training is running in this session; stop it first")
        run = create_run(session, config_from_form(form, hosted), hosted)
    with state.using(run) as chain:
        try:
            chain.load_lora(path)
        except (ValueError, FileNotFoundError, OSError) as error:
            raise FieldError("LoRA file", str(error)) from None
    run.status = f"loaded LoRA {Path(path).name}; tick 'continue from current LoRA' and Start to train on"
    return run
