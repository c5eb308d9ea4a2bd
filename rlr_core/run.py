"""One run object: a config turned into chain, reward, estimator and Trainer, the same way everywhere.

``rlr-train``, the app's Train tab, its click rounds and its diagnostics all build a run here::

    run = TrainingRun.from_config(TrainConfig.from_file("run.yaml"))
    for report in run.trainer.run():
        print(report.step, report.reward_mean)

This module is the one builder: :func:`check_config` checks a config once (fields, hosted limits, tracker,
output folder), :func:`build_chain`, :func:`build_reward` and :func:`build_estimator` build the parts, and
``TrainingRun.from_config`` all of them plus the Trainer. Bad settings raise :class:`ConfigError` (a
ValueError) whose ``field`` names the config field (``"reward_options"``, ``"batch_size"``, ...), so every
front end can point at the right input.
Model and reward weights that cannot be fetched raise ``rlr_core.hub.WeightsUnavailableError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .chain import Chain
from .config import ConfigError, TrainConfig
from .estimators import Estimator, estimator_options, get_estimator
from .hosted import HOSTED_ESTIMATOR_LIMITS, HOSTED_WORK_LIMIT, check_hosted
from .hub import WeightsUnavailableError
from .rewards import Reward, default_clip_model, get_reward
from .rewards.preference import features_for
from .tracking import check_report_to
from .trainer import Trainer

__all__ = ["ConfigError", "TrainingRun", "check_config", "build_chain", "build_reward", "build_heldout_reward",
           "build_estimator", "reward_options_for", "check_hosted_work", "HOSTED_WORK_LIMIT", "HOSTED_ESTIMATOR_LIMITS"]


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
                    reward: Reward | None = None, checked: bool = False) -> "TrainingRun":
        """Check ``config`` (:func:`check_config`, once) and build the run.

        ``chain``: an already loaded chain with this config's model settings (the app's model cache);
        :func:`build_chain` otherwise. ``reward``: a reward object to use instead of ``config.reward``
        (the clicks of a preference run). ``hosted=True`` applies the hosted limits and refuses reward
        plug-ins. ``checked=True``: the caller ran ``check_config(config, hosted)`` already (the CLI does,
        before it joins other processes). Raises ConfigError naming the field, or WeightsUnavailableError
        when a model or reward needs weights that cannot be fetched.
        """
        if not checked:
            check_config(config, hosted=hosted, output_dir=chain is None)
        options = dict(config.estimator_options)
        auto_h = options.get("h") == "auto"
        if auto_h:
            options.pop("h")  # the other options are checked now, h once the model is loaded
        estimator = _named("estimator_options", get_estimator, config.estimator, options)  # before the model loads
        if chain is None:
            chain = build_chain(config)
        if reward is None:
            reward = build_reward(config, device=getattr(chain, "device", None), hosted=hosted)
        if auto_h:
            estimator = _with_auto_h(config, chain, reward, options)
        note = ""
        try:
            heldout = build_heldout_reward(config, device=getattr(chain, "device", None), hosted=hosted)
        except WeightsUnavailableError as error:
            if config.heldout_reward != "auto":
                raise
            heldout, note = None, (f"heldout_reward auto is off for this run: {error} (set heldout_reward: none to "
                                   "skip it, or a reward whose weights are here)")
        try:
            trainer = Trainer(chain, reward, estimator, config, heldout_reward=heldout)
        except ValueError as error:
            raise ConfigError(_leading_field(str(error), "estimator_options"), str(error)) from None
        trainer.guard_note = note
        return cls(config, chain, reward, estimator, trainer)

    def parts(self) -> tuple[Chain, Reward, Estimator]:
        """``(chain, reward, estimator)``."""
        return self.chain, self.reward, self.estimator


def check_config(config: TrainConfig, hosted: bool = False, output_dir: bool = True) -> TrainConfig:
    """Everything that can be checked before a model loads, each once: ``config.validate()``, the estimator
    name, the hosted limits (``hosted=True``, ``rlr_core.hosted.check_hosted``), the tracker of ``report_to``
    and (with ``output_dir``) that ``output_dir`` is writable. Returns ``config``; ConfigError naming the field."""
    config.validate()
    try:
        defaults = estimator_options(config.estimator)
    except ValueError as error:  # "estimator must be one of ..., got ..."
        raise ConfigError("estimator", str(error)) from None
    if hosted:
        check_hosted(config, defaults)
    try:  # a tracker that cannot run fails at once
        check_report_to(config.report_to)
    except ValueError as error:
        raise ConfigError("report_to", str(error)) from None
    if output_dir:
        config.check_output_dir()  # before the (slow) model load
    return config


def check_hosted_work(config: TrainConfig) -> TrainConfig:
    """``rlr_core.hosted.check_hosted`` with the estimator's default options (its default PPO epochs count)."""
    try:
        defaults = estimator_options(config.estimator)
    except ValueError:
        defaults = {}
    return check_hosted(config, defaults)


def build_chain(config: TrainConfig) -> Chain:
    """The chain of ``config``: ``load_model`` with its model and sampler settings (a DiffusersChain)."""
    from .models import load_model

    return load_model(
        config.model,
        num_steps=config.num_steps,
        lora_rank=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_targets=config.lora_targets,
        guidance_scale=config.guidance_scale,
        eta=config.eta,
        device=config.device,
        dtype=config.dtype,
        gradient_checkpointing=config.gradient_checkpointing,
        prompt_boundaries=list(config.prompt_boundaries) if config.uses_prompt_schedule else None,
    )


def build_reward(config: TrainConfig, device: Any = None, hosted: bool = False) -> Reward:
    """The reward of ``config`` (``get_reward`` with :func:`reward_options_for`); ConfigError naming
    ``reward`` (an unknown name) or ``reward_options``. ``hosted=True`` refuses plug-ins and server files."""
    return _named("reward_options", get_reward, config.reward, reward_options_for(config), device=device,
                  hosted=True if hosted else None)


def build_heldout_reward(config: TrainConfig, device: Any = None, hosted: bool = False) -> Reward | None:
    """The reward-hacking guard's held-out reward (``config.heldout_reward``): None for ``none``; ``auto``: the
    CLIP score of the prompt (tiny-clip for the tiny model); else the named reward with
    ``heldout_reward_options`` (CLIP-based ones default to tiny-clip for the tiny model, as the training reward).
    ConfigError naming ``heldout_reward`` or ``heldout_reward_options``."""
    name = config.heldout_reward
    if name == "none":
        return None
    name = "clip" if name == "auto" else name
    options = _with_clip_model(name, dict(config.heldout_reward_options), config.model)
    try:
        return _named("heldout_reward_options", get_reward, name, options, device=device,
                      hosted=True if hosted else None)
    except ConfigError as error:
        if str(error).startswith(("reward=", "reward must be one of")):  # the registry's words for an unknown name
            raise ConfigError("heldout_reward", f"heldout_reward: {error}") from None
        raise


def build_estimator(config: TrainConfig, chain: Chain | None = None, reward: Reward | None = None) -> Estimator:
    """The estimator of ``config``; ConfigError naming ``estimator`` (an unknown name, with the allowed ones)
    or ``estimator_options``. ``h: auto`` needs the loaded ``chain`` and ``reward``: the largest h whose
    predicted peak memory fits ``config.memory_budget_gb`` (gradient checkpointing is switched on when that
    lets a larger h fit)."""
    options = dict(config.estimator_options)
    if options.get("h") != "auto":
        return _named("estimator_options", get_estimator, config.estimator, options)
    options.pop("h")
    _named("estimator_options", get_estimator, config.estimator, options)  # the name and the other options
    if chain is None or reward is None:
        raise ConfigError("estimator_options", "h: auto needs the loaded model: build_estimator(config, chain, reward)")
    return _with_auto_h(config, chain, reward, options)


def reward_options_for(config: TrainConfig) -> dict[str, Any]:
    """``config.reward_options`` with the base model's defaults filled in: with the tiny model ``clip`` uses the
    bundled tiny-clip and ``preference`` features "auto" mean ``TINY_MODEL_FEATURES``."""
    options = _with_clip_model(config.reward, dict(config.reward_options), config.model)
    if config.reward == "preference":
        features = features_for(options.get("features", "auto"), config.model)
        if features != "auto":
            options["features"] = features
    return options


def _with_clip_model(reward: str, options: dict[str, Any], base_model: str) -> dict[str, Any]:
    """``options`` of reward ``reward`` with the base model's CLIP (tiny-clip for the tiny model) when it is the
    ``clip`` reward and names no model."""
    if reward == "clip" and not options.get("model") and "clip_model" not in options:
        options["clip_model"] = default_clip_model(base_model)
    return options


def _with_auto_h(config: TrainConfig, chain: Chain, reward: Reward, options: dict[str, Any]) -> Estimator:
    """``h: auto``: the largest h whose predicted peak memory fits ``config.memory_budget_gb``
    (rlr_core.memory.prediction.choose_h); gradient checkpointing is switched on when that lets a larger h fit."""
    from .memory.prediction import choose_h

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
