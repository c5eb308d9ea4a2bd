"""Rewards: ``reward(images [B, 3, H, W] in [0, 1], prompts) -> float32 [B]`` on the images' device.

    reward = get_reward("aesthetic")                  # LAION aesthetic on CLIP ViT-L/14
    reward = get_reward("clip", clip_model="ViT-B-32", pretrained="openai")
    reward = get_reward("clip", model="tiny-clip", text="a red star on a white background")  # offline
    reward = get_reward("pickscore"); get_reward("hpsv2", version="v2.1")
    reward = get_reward("target-color", color="blue") # weight-free
    reward = get_reward("shape-position", target="left"); get_reward("shape-size", target_area=0.08)  # composition
    reward = get_reward("my_pkg.rewards:score")       # plug-in (refused in hosted mode)
    list_rewards()                                    # names, descriptions, options (for the UI)

Loaded rewards are cached per process, keyed by (name, options, device). Unknown names, unknown
options and bad option values raise ValueError naming the field and the allowed values; rewards
whose weights are not cached and cannot be downloaded raise
:class:`~rlr_core.hub.WeightsUnavailableError` within seconds.

The table of built-in rewards is :mod:`rlr_core.rewards.registry`; the hosted-mode limits on reward
options come from :mod:`rlr_core.hosted`. See docs/rewards.md.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import torch

from rlr_core.hosted import HOSTED_ENV, HOSTED_LIMITS, HOSTED_REFUSED_REWARDS, HOSTED_REWARD_OPTION_VALUES
from rlr_core.hub import WeightsUnavailableError
from rlr_core.rewards.base import Reward
from rlr_core.rewards.plugin import PluginReward, hosted_mode, is_plugin_spec
from rlr_core.rewards.registry import (PLUGIN_OPTIONS, REGISTRY, RewardInfo, RewardOption, default_clip_model,
                                       list_rewards, reward_names)

__all__ = [
    "Reward",
    "RewardOption",
    "RewardInfo",
    "get_reward",
    "list_rewards",
    "reward_names",
    "clear_reward_cache",
    "WeightsUnavailableError",
    "HOSTED_ENV",
    "default_clip_model",
]

_CACHE: "OrderedDict[tuple, Reward]" = OrderedDict()
_LOCK = threading.RLock()
MAX_CACHED_REWARDS = 8
"""Reward objects kept by :func:`get_reward` (least recently used dropped first). The models behind
them have their own bounded caches (``clip_models.MAX_CACHED_CLIPS`` and the PickScore / HPSv2 ones)."""

HOSTED_OPTION_VALUES: dict[str, dict[str, tuple]] = HOSTED_REWARD_OPTION_VALUES
"""Hosted mode: the only values of the options that choose a model, a file or a folder
(``rlr_core.hosted.HOSTED_REWARD_OPTION_VALUES``)."""

HOSTED_TEXT_LIMIT = HOSTED_LIMITS["reward_text_chars"]
"""Hosted mode: longest text of a string option (texts to score against), in characters."""
HOSTED_MAX_TEXTS = HOSTED_LIMITS["reward_texts"]
"""Hosted mode: most captions in ``contrast_texts``."""


def clear_reward_cache() -> None:
    """Forget every cached reward (and the open_clip models they loaded)."""
    from rlr_core.rewards.clip_models import clear_clip_cache

    with _LOCK:
        _CACHE.clear()
    clear_clip_cache()


def _coerce(reward: str, key: str, value: Any, opt: RewardOption) -> Any:
    """Convert strings from a UI / YAML to the option's kind and check choices."""
    if value is None:
        return None
    kind = opt.kind
    try:
        if kind is bool:
            if isinstance(value, str):
                lowered = value.strip().lower()
                if lowered not in {"true", "false", "1", "0", "yes", "no"}:
                    raise ValueError(value)
                value = lowered in {"true", "1", "yes"}
            elif not isinstance(value, (bool, int)):
                raise ValueError(value)
            value = bool(value)
        elif kind is float:
            if isinstance(value, bool):
                raise ValueError(value)
            value = float(value)
        elif kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            value = int(value)
        elif kind is str and key == "color" and isinstance(value, (list, tuple)):
            value = tuple(value)  # target-color accepts an RGB triple too
        elif kind is str and key == "contrast_texts" and isinstance(value, (list, tuple)):
            value = "|".join(str(v) for v in value)  # clip accepts a list of captions too
        elif kind is str:
            value = str(value)
    except (TypeError, ValueError):
        raise ValueError(f"{reward} option {key}={value!r} must be a {kind.__name__}") from None
    if opt.choices and value not in opt.choices:
        raise ValueError(f"{reward} option {key}={value!r} is not allowed; allowed values: {list(opt.choices)}")
    return value


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _freeze(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    return value


def get_reward(
    name: str,
    *,
    device: str | torch.device | None = None,
    hosted: bool | None = None,
    **options: Any,
) -> Reward:
    """The reward ``name`` configured by ``options`` (cached per process by name, options, device).

    ``name`` is a registered reward (see :func:`list_rewards`), or a plug-in ``"module:function"``
    or ``"/path/file.py"`` (refused when ``hosted`` is true or ``RLR_STUDIO_HOSTED=1``).
    ``device`` is where models are loaded first ("auto"/None: cuda if available); rewards follow the
    images' device when called.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"reward={name!r} is not allowed; allowed values: {reward_names()} or a plug-in 'module:function' / 'file.py'")
    name = name.strip()
    if name in REGISTRY:
        info = REGISTRY[name]
        allowed = info.options
    elif is_plugin_spec(name):
        if hosted_mode(hosted):
            raise ValueError(
                f"reward={name!r} is a plug-in, and plug-ins (arbitrary code) are disabled in hosted mode "
                f"({HOSTED_ENV}=1 or hosted=True); allowed values here: {reward_names()}"
            )
        info = None
        allowed = PLUGIN_OPTIONS
    else:
        raise ValueError(f"reward={name!r} is not allowed; allowed values: {reward_names()} or a plug-in 'module:function' / 'file.py'")

    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"reward {name!r} has no option {', '.join(map(repr, unknown))}; allowed options: {sorted(allowed) or 'none'}")
    values = {key: _coerce(name, key, options.get(key, opt.default), opt) for key, opt in allowed.items()}
    if hosted_mode(hosted):
        check_hosted_options(name, values)
    dev = _resolve_device(device)
    key = (name, _freeze(values), str(dev))
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
        if info is None:
            reward: Reward = PluginReward(name, values["function"], values["differentiable"])
        else:
            kwargs = dict(values)
            if "cache_dir" in kwargs:
                kwargs["cache_dir"] = kwargs["cache_dir"] or None
            reward = info.factory(device=dev, **kwargs)
        _CACHE[key] = reward
        while len(_CACHE) > MAX_CACHED_REWARDS:
            _CACHE.popitem(last=False)
        return reward


def check_hosted_options(name: str, values: dict[str, Any]) -> None:
    """Refuse, before anything loads, what hosted mode does not allow: the rewards of
    ``HOSTED_REFUSED_REWARDS``, option values outside ``HOSTED_OPTION_VALUES`` (paths and model
    choices) and string options longer than ``HOSTED_TEXT_LIMIT``. ValueError naming the option."""
    if name in HOSTED_REFUSED_REWARDS:
        raise ValueError(f"reward={name!r} is not available in hosted mode: {HOSTED_REFUSED_REWARDS[name]}")
    for option, allowed in HOSTED_OPTION_VALUES.get(name, {}).items():
        if option in values and values[option] not in allowed:
            raise ValueError(f"{name} option {option}={str(values[option])[:80]!r} is not allowed in hosted mode; "
                             f"allowed values: {list(allowed)}")
    for option, value in values.items():
        if not isinstance(value, str):
            continue
        texts = value.split("|") if option == "contrast_texts" else [value]  # one caption each
        if len(texts) > HOSTED_MAX_TEXTS:
            raise ValueError(f"{name} option {option} takes at most {HOSTED_MAX_TEXTS} texts in hosted mode; got {len(texts)}")
        longest = max(len(text) for text in texts)
        if longest > HOSTED_TEXT_LIMIT:
            raise ValueError(f"{name} option {option} must be at most {HOSTED_TEXT_LIMIT} characters per text in hosted mode; "
                             f"got {longest}")
