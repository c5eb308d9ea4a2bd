"""Estimates without training, without Gradio: the memory prediction of the form's settings (before Start)
and the Diagnostics tab's probe of estimators on the session's model and reward. Parts are built with
``rlr_core.run.build_reward`` / ``build_estimator`` (no whole training run), the memory prediction is
``rlr_core.memory.prediction``.
"""

from __future__ import annotations

from typing import Any

from rlr_core.cancel import cancellable
from rlr_core.estimators import list_estimators
from rlr_core.hub import WeightsUnavailableError
from rlr_core.memory.prediction import CUDA_OVERHEAD_GB, free_memory_gb, predict
from rlr_core.run import build_estimator, build_reward

from . import formatting, runs
from .clicks import noise_group_batch
from .errors import FieldError
from .form import config_from_form, field_error, parse_int
from .locks import WORK_LOCK
from .settings import caps
from .training import create_run

__all__ = ["predict_memory", "diagnostics"]


def predict_memory(session: str, form: dict[str, Any], hosted: bool) -> str:
    """The memory model's prediction for one estimate of the form's settings (before Start)."""
    config = config_from_form(form, hosted)
    chain = runs.MODELS.get(config, session).variant(config)
    try:
        with WORK_LOCK:  # h: auto traces the loaded chain
            reward = build_reward(config, device=chain.device, hosted=hosted)
            estimator = build_estimator(config, chain, reward)
    except WeightsUnavailableError as error:
        raise FieldError("Reward", str(error)) from None
    except ValueError as error:
        raise field_error(error) from None
    options = {k: getattr(estimator, k) for k in ("h", "k", "k_max", "jumps") if hasattr(estimator, k)}
    with WORK_LOCK:
        try:
            prediction = predict(chain, estimator, config.batch_size, reward=reward)  # all of its options count
        except (ValueError, NotImplementedError) as error:
            raise FieldError("Estimator", f"no memory prediction for this setting: {error}") from None
    device = chain.device
    overhead = CUDA_OVERHEAD_GB if device.type == "cuda" else 0.0
    chosen = getattr(estimator, "auto_choice", None)
    what = ", ".join(f"{k}={v}" for k, v in options.items())
    text = (f"Predicted for one {config.estimator} estimate ({what}, batch {config.batch_size}): "
            f"graph {formatting.format_megabytes(prediction.graph_mb)}, peak {formatting.format_sig(prediction.peak_gb + overhead)} GB "
            f"on {device.type}; free now {formatting.format_sig(free_memory_gb(device))} GB.")
    if chosen:
        text += f" h: auto chose h = {chosen['h']}" + (" with gradient checkpointing." if chosen["gradient_checkpointing"] else ".")
    return text


def diagnostics(session: str, form: dict[str, Any], hosted: bool, estimators: list[str], repeats: int) -> list[dict]:
    """``rlr_core.diagnostics.probe`` on the session's model (with its LoRA) and reward."""
    from rlr_core.diagnostics import probe  # looked up per call (tests replace it)

    if not estimators:
        raise FieldError("Estimators", "pick at least one estimator")
    if isinstance(estimators, str):
        estimators = [estimators]
    unknown = [str(name)[:40] for name in estimators if name not in list_estimators()]
    if unknown:
        raise FieldError("Estimators", f"unknown {unknown[0]!r}; allowed values: {', '.join(list_estimators())}")
    estimators = list(dict.fromkeys(estimators))  # each estimator once
    repeats = parse_int("Repeats", repeats, 2, caps(hosted)["probe_repeats"])
    run = runs.session_run(session)
    if run is None:
        run = create_run(session, config_from_form(form, hosted), hosted)
    if run.running:
        raise FieldError("diagnostics", "training is running in this session; stop it first")
    reward = run.reward
    if run.kind != "train":  # clicks have no reward function: probe the click run's LoRA with the form's reward
        chosen = config_from_form(form, hosted)
        probe_config = run.config.replace(reward=chosen.reward, reward_options=chosen.reward_options)
        try:
            reward = build_reward(probe_config, device=getattr(run.chain, "device", None), hosted=hosted)
        except ValueError as error:
            raise field_error(error) from None
    config = run.config
    prompts = noise_group_batch(run, config.batch_size, bool(reward.differentiable), "Batch size", caps(hosted)["batch_size"])
    specs: list[Any] = [(name, dict(config.estimator_options)) if name == config.estimator else name
                        for name in dict.fromkeys(estimators)]
    with runs.using(run) as chain, cancellable(runs.fresh_abort_event(session)):
        try:
            stats = probe(chain, reward, specs, prompts, repeats=repeats, seed=config.seed)
        except ValueError as error:
            raise FieldError("diagnostics", str(error)) from None
    return [s.row() for s in stats]
