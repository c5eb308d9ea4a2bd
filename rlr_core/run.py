"""One run object: a config turned into chain, reward, estimator and Trainer, the same way everywhere.

``rlr-train``, the app's Train tab, its click rounds and its diagnostics all build a run here::

    run = TrainingRun.from_config(TrainConfig.from_file("run.yaml"))
    for report in run.trainer.run():
        print(report.step, report.reward_mean)

Bad settings raise :class:`ConfigError` (a ValueError) whose ``field`` names the config field
(``"reward_options"``, ``"batch_size"``, ...), so every front end can point at the right input.
Model and reward weights that cannot be fetched raise ``rlr_core.hub.WeightsUnavailableError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .chain import Chain
from .config import TrainConfig
from .estimators import Estimator, estimator_options, get_estimator
from .hub import WeightsUnavailableError
from .rewards import Reward, default_clip_model, get_reward
from .tracking import check_report_to
from .trainer import Trainer

__all__ = ["ConfigError", "TrainingRun", "check_hosted_work", "HOSTED_WORK_LIMIT"]


class ConfigError(ValueError):
    """A bad config value; ``field`` is the TrainConfig field it belongs to."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name


@dataclass
class TrainingRun:
    """Everything one training run needs, built from one TrainConfig."""

    config: TrainConfig
    chain: Chain
    reward: Reward
    estimator: Estimator
    trainer: Trainer

    @classmethod
    def from_config(cls, config: TrainConfig, hosted: bool = False, chain: Chain | None = None,
                    reward: Reward | None = None) -> "TrainingRun":
        """Validate ``config`` and build the run.

        ``chain``: an already loaded chain with this config's model settings (the app's model
        cache); loaded with ``config.load_chain()`` otherwise. ``reward``: a reward object to use
        instead of ``config.reward`` (the clicks of a preference run). ``hosted=True`` applies the hosted
        limits and refuses reward plug-ins. Raises ConfigError naming the field, or
        WeightsUnavailableError when a model or reward needs weights that cannot be fetched.
        """
        try:
            config.validate(hosted=hosted)
        except ValueError as error:
            raise ConfigError(_leading_field(str(error), "config"), str(error)) from None
        if hosted:
            check_hosted_work(config)
        try:  # before loading a model: a tracker that cannot run fails at once
            check_report_to(config.report_to)
        except ValueError as error:
            raise ConfigError("report_to", str(error)) from None
        options = dict(config.estimator_options)
        auto_h = options.get("h") == "auto"
        if auto_h:
            options.pop("h")  # the other options are checked now, h once the model is loaded
        estimator = _named("estimator_options", get_estimator, config.estimator, options)
        if chain is None:
            try:
                config.check_output_dir()  # before the (slow) model load
            except ValueError as error:
                raise ConfigError("output_dir", str(error)) from None
            chain = config.load_chain()
        if reward is None:
            reward = _named("reward_options", get_reward, config.reward, reward_options_for(config),
                            device=getattr(chain, "device", None), hosted=True if hosted else None)
        if auto_h:
            estimator = _with_auto_h(config, chain, reward, options)
        try:
            trainer = Trainer(chain, reward, estimator, config)
        except ValueError as error:
            raise ConfigError(_leading_field(str(error), "estimator_options"), str(error)) from None
        return cls(config, chain, reward, estimator, trainer)

    def parts(self) -> tuple[Chain, Reward, Estimator]:
        """``(chain, reward, estimator)``."""
        return self.chain, self.reward, self.estimator


HOSTED_WORK_LIMIT = 100_000
"""Hosted mode: most image-steps one run may ask for, iterations x batch x sampling steps x
(PPO epochs + 1). 100,000 is the default tiny run (50 x 4 x 20) 25 times over, or 500 iterations
of SD at batch 8 and 25 steps."""

HOSTED_ESTIMATOR_LIMITS: dict[str, int] = {"inner_epochs": 8, "lr_samples": 16, "chain_len": 1000, "h": 1000, "k": 1000,
                                           "k_max": 1000, "n": 8, "jumps": 50, "cv_jumps": 50}
"""Hosted mode: largest values of the estimator options that multiply the work of an iteration."""


def check_hosted_work(config: TrainConfig) -> None:
    """ConfigError naming the field when ``config`` asks more of a shared server than hosted mode
    allows (``HOSTED_ESTIMATOR_LIMITS``, ``HOSTED_WORK_LIMIT``)."""
    options = config.estimator_options
    for name, limit in HOSTED_ESTIMATOR_LIMITS.items():
        value = options.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > limit:
            raise ConfigError("estimator_options", f"estimator_options {name} must be at most {limit} on a hosted Space; got {value:g}")
    try:
        defaults = estimator_options(config.estimator)
    except ValueError:
        defaults = {}
    epochs = {**defaults, **options}.get("inner_epochs", 1)
    epochs = int(epochs) if isinstance(epochs, (int, float)) and not isinstance(epochs, bool) and epochs >= 1 else 1
    work = config.steps * config.batch_size * config.num_steps * (epochs + 1)
    if work > HOSTED_WORK_LIMIT:
        raise ConfigError("steps", f"steps x batch_size x num_steps x (PPO epochs + 1) must be at most {HOSTED_WORK_LIMIT:,} "
                                   f"on a hosted Space; got {config.steps} x {config.batch_size} x {config.num_steps} x "
                                   f"{epochs + 1} = {work:,} (fewer iterations, a smaller batch or fewer sampling steps)")


def reward_options_for(config: TrainConfig) -> dict[str, Any]:
    """``config.reward_options`` with the base model's defaults filled in: the CLIP-based rewards
    (``clip``; ``preference`` features "auto") use the bundled tiny-clip when the model is the tiny one."""
    options = dict(config.reward_options)
    clip_default = default_clip_model(config.model)
    if config.reward == "clip" and not options.get("model") and "clip_model" not in options:
        options["clip_model"] = clip_default
    if config.reward == "preference" and options.get("features", "auto") == "auto" and clip_default == "tiny-clip":
        options["features"] = "tiny-clip"
    return options


def _with_auto_h(config: TrainConfig, chain: Chain, reward: Reward, options: dict[str, Any]) -> Estimator:
    """``h: auto``: the largest h whose predicted peak memory fits ``config.memory_budget_gb``
    (rlr_core.memory_model.choose_h); gradient checkpointing is switched on when that lets a larger h fit."""
    from .memory_model import choose_h

    if "h" not in getattr(get_estimator(config.estimator), "ui_options", ()):
        raise ConfigError("estimator_options", f"h: auto applies to rlr and rlr-paper, not {config.estimator!r}")
    try:
        h, checkpointing, predicted_gb = choose_h(chain, config.batch_size, config.memory_budget_gb, reward=reward,
                                                  estimator=config.estimator, options=options)
    except ValueError as error:
        raise ConfigError("estimator_options", str(error)) from None
    if checkpointing:
        chain.gradient_checkpointing = True
    estimator = _named("estimator_options", get_estimator, config.estimator, {**options, "h": h})
    estimator.auto_choice = {"h": h, "gradient_checkpointing": checkpointing, "predicted_gb": predicted_gb}
    return estimator


def _named(field_name: str, factory: Any, name: str, options: dict[str, Any], **extra: Any) -> Any:
    """``factory(name, **options, **extra)`` with errors as ConfigError naming the field."""
    kind = field_name.removesuffix("_options")
    clash = sorted(set(options) & set(extra))
    if clash:
        raise ConfigError(field_name, f"{field_name} must not set {', '.join(clash)} (set by the config itself)")
    try:
        return factory(name, **options, **extra)
    except WeightsUnavailableError:
        raise
    except TypeError as error:
        raise ConfigError(field_name, f"{field_name} for {kind} {name!r} are invalid: {error}") from None
    except (ValueError, ImportError) as error:
        message = str(error)
        names_the_kind = message.startswith((f"{kind}=", f"{kind} must be one of"))  # an unknown name
        raise ConfigError(kind if names_the_kind else field_name, message) from None


def _leading_field(message: str, default: str) -> str:
    """The config field a message starts with ("batch_size must be ..."), else ``default``."""
    head = message.split(" ", 1)[0].strip(":'\"")
    return head if head in TrainConfig.field_names() else default
