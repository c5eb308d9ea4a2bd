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
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

import torch

from rlr_core.hub import WeightsUnavailableError
from rlr_core.rewards.plugin import HOSTED_ENV, PluginReward, hosted_mode, is_plugin_spec

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


@runtime_checkable
class Reward(Protocol):
    """What estimators and the trainer need from a reward (names are binding)."""

    name: str
    differentiable: bool

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """float32 [B] on ``images.device``; differentiable in ``images`` when ``differentiable``."""
        ...


@dataclass(frozen=True)
class RewardOption:
    """One option of a reward: default, kind (for UI widgets and string coercion), help, choices."""

    default: Any
    kind: type
    help: str
    choices: tuple | None = None


@dataclass(frozen=True)
class RewardInfo:
    """A registered reward."""

    name: str
    description: str
    differentiable: bool
    needs_weights: bool
    factory: Callable[..., Reward]
    options: dict[str, RewardOption] = field(default_factory=dict)


_CLIP_OPTIONS = {
    "clip_model": RewardOption("ViT-L-14-quickgelu", str, "open_clip architecture (open_clip.list_models()), or 'tiny-clip' (bundled, offline; pretrained ignored)"),
    "pretrained": RewardOption("openai", str, "open_clip pretrained tag, or a local checkpoint file"),
    "precision": RewardOption("fp32", str, "CLIP weights precision", ("fp32", "fp16", "bf16")),
    "cache_dir": RewardOption("", str, "download cache folder ('' = the Hugging Face / open_clip defaults)"),
}


def _aesthetic(**kw: Any) -> Reward:
    from rlr_core.rewards.aesthetic import AestheticReward

    return AestheticReward(**kw)


def _clip(model: str = "", **kw: Any) -> Reward:
    from rlr_core.rewards.aesthetic import ClipScoreReward

    if model:  # alias of clip_model: get_reward("clip", model="tiny-clip")
        kw["clip_model"] = model
    return ClipScoreReward(**kw)


def _pickscore(**kw: Any) -> Reward:
    from rlr_core.rewards.pickscore import PickScoreReward

    return PickScoreReward(**kw)


def _hpsv2(**kw: Any) -> Reward:
    from rlr_core.rewards.hpsv2 import HPSv2Reward

    return HPSv2Reward(**kw)


def default_clip_model(base_model: str) -> str:
    """Default ``clip_model`` of the CLIP-based rewards for ``base_model``: "tiny-clip" for the tiny model."""
    from rlr_core.rewards.clip_models import default_clip_model as default

    return default(base_model)


def _preference(**kw: Any) -> Reward:
    from rlr_core.rewards.preference import PreferenceReward

    return PreferenceReward.from_options(**kw)


def _simple(cls_name: str) -> Callable[..., Reward]:
    def make(device: Any = None, **kw: Any) -> Reward:
        from rlr_core.rewards import simple

        return getattr(simple, cls_name)(**kw)

    return make


def _composition(cls_name: str) -> Callable[..., Reward]:
    def make(device: Any = None, **kw: Any) -> Reward:
        from rlr_core.rewards import composition

        return getattr(composition, cls_name)(**kw)

    return make


_PROMPT_COLOR_OPTION = RewardOption(
    True, bool, "measure the shape against the colour its prompt names ('a red circle ...'), so a faded or recoloured "
    "shape counts as partial or off-colour; false, or prompts without a colour word: the image's dominant colour"
)

_REGISTRY: dict[str, RewardInfo] = {
    info.name: info
    for info in [
        RewardInfo(
            "aesthetic",
            "LAION aesthetic predictor (MLP on CLIP ViT-L/14 embeddings), about 1-10. Downloads weights.",
            True,
            True,
            _aesthetic,
            {**_CLIP_OPTIONS, "head_path": RewardOption("", str, "local sac+logos+ava1-l14-linearMSE.pth ('' = download)")},
        ),
        RewardInfo(
            "clip",
            "CLIP score: scale x cosine(image, prompt) embeddings. Downloads weights.",
            True,
            True,
            _clip,
            {
                **_CLIP_OPTIONS,
                "scale": RewardOption(100.0, float, "multiplier of the cosine"),
                "clamp": RewardOption(False, bool, "use max(cos, 0) as in the CLIPScore metric (zero gradient below 0)"),
                "text": RewardOption("", str, "score every image against this text instead of its prompt ('' = the prompt)"),
                "negative_text": RewardOption("", str, "subtract the cosine to this text: scale x (cos(text) - cos(negative_text)) ('' = none)"),
                "contrast_texts": RewardOption(
                    "", str, "captions separated by '|': the reward becomes log p(text | image) among text and these, log_softmax(scale x cos) ('' = none)"
                ),
                "probability": RewardOption(False, bool, "with contrast_texts: p(text | image) in [0, 1] instead of its log"),
                "model": RewardOption("", str, "alias of clip_model, e.g. 'tiny-clip' ('' = use clip_model)"),
            },
        ),
        RewardInfo(
            "pickscore",
            "PickScore v1 (CLIP ViT-H/14 tuned on Pick-a-Pic): 100 x cosine(image, prompt), about 18-23. Downloads weights (3.9 GB).",
            True,
            True,
            _pickscore,
            {
                "model": RewardOption("yuvalkirstain/PickScore_v1", str, "Hub repo id or local folder of the CLIPModel"),
                "processor": RewardOption("laion/CLIP-ViT-H-14-laion2B-s32B-b79K", str, "Hub repo id or local folder of the CLIPProcessor"),
                "precision": RewardOption("fp32", str, "weights precision", ("fp32", "fp16", "bf16")),
                "cache_dir": RewardOption("", str, "download cache folder ('' = the Hugging Face default)"),
            },
        ),
        RewardInfo(
            "hpsv2",
            "HPSv2 / HPSv2.1 (open_clip ViT-H-14 tuned on human preferences): cosine(image, prompt), about 0.2-0.3. Downloads weights (1.9 GB).",
            True,
            True,
            _hpsv2,
            {
                "version": RewardOption("v2.1", str, "HPS checkpoint version", ("v2.0", "v2.1")),
                "checkpoint": RewardOption("", str, "local HPS_v2_compressed.pt / HPS_v2.1_compressed.pt ('' = download from xswu/HPSv2)"),
                "clip_model": RewardOption("ViT-H-14", str, "open_clip architecture of the checkpoint"),
                "precision": RewardOption("fp32", str, "weights precision", ("fp32", "fp16", "bf16")),
                "cache_dir": RewardOption("", str, "download cache folder ('' = the Hugging Face default)"),
            },
        ),
        RewardInfo(
            "preference",
            "Human clicks. mode=learned: Bradley-Terry head refitted on the click log (differentiable); "
            "mode=direct runs through rlr_core.rewards.preference.PreferenceSession.",
            True,
            False,
            _preference,
            {
                "mode": RewardOption("learned", str, "learned = fitted head; direct = clicks are the reward", ("learned", "direct")),
                "log_path": RewardOption("clicks.jsonl", str, "JSONL click log to fit on"),
                "features": RewardOption("auto", str, "image features of the head", ("auto", "clip", "tiny-clip", "pixels")),
                "clip_model": RewardOption("ViT-L-14-quickgelu", str, "open_clip architecture for features=clip/auto"),
                "pretrained": RewardOption("openai", str, "open_clip pretrained tag for features=clip/auto"),
                "l2": RewardOption(1e-2, float, "L2 penalty of the Bradley-Terry fit"),
            },
        ),
        RewardInfo("saturation", "Colourfulness (Hasler-Suesstrunk); gray = 0. Weight-free.", True, False, _simple("SaturationReward")),
        RewardInfo("brightness", "Mean luma in [0, 1]. Weight-free.", True, False, _simple("BrightnessReward")),
        RewardInfo(
            "target-color",
            "Closeness of the pixels to one colour, in [-1, 0]. Weight-free.",
            True,
            False,
            _simple("TargetColorReward"),
            {"color": RewardOption("red", str, "colour name, '#rrggbb' or 'r,g,b'")},
        ),
        RewardInfo("symmetry", "Left-right mirror symmetry, in [-1, 0]. Weight-free.", True, False, _simple("SymmetryReward")),
        RewardInfo(
            "shape-position",
            "Composition: minus the RMS distance of the foreground (pixels unlike the border's background) to a "
            "target point, with penalties for scattered, off-colour or faded pixels; about -1.6 (noise) to -0.22 (on target). "
            "Weight-free.",
            True,
            False,
            _composition("ShapePositionReward"),
            {
                "target": RewardOption("left", str, "where the shape should sit: left, right, top, bottom, center, top-left, "
                                       "top-right, bottom-left, bottom-right, or 'x,y' in [0, 1] (x right, y down)"),
                "prompt_color": _PROMPT_COLOR_OPTION,
            },
        ),
        RewardInfo(
            "shape-size",
            "Composition: minus |ln(foreground area / target_area)|, with penalties for a scattered, non-compact, "
            "off-colour or faded foreground; 0 = an opaque compact shape of the target area. Weight-free.",
            True,
            False,
            _composition("ShapeSizeReward"),
            {
                "target_area": RewardOption(0.08, float, "fraction of the image the shape should cover, in (0, 0.9] "
                                            "(0.08 = a circle of radius 0.16 of the image side: smaller than the tiny model draws)"),
                "prompt_color": _PROMPT_COLOR_OPTION,
            },
        ),
        RewardInfo(
            "jpeg-compressibility",
            "Minus the JPEG size in kB (DDPO). Not differentiable. Weight-free.",
            False,
            False,
            _simple("JpegCompressibilityReward"),
            {"quality": RewardOption(95, int, "JPEG quality 1-100")},
        ),
        RewardInfo(
            "jpeg-incompressibility",
            "The JPEG size in kB (DDPO). Not differentiable. Weight-free.",
            False,
            False,
            _simple("JpegIncompressibilityReward"),
            {"quality": RewardOption(95, int, "JPEG quality 1-100")},
        ),
    ]
}

_PLUGIN_OPTIONS = {
    "function": RewardOption("", str, "function name (default: the one after ':' or 'reward' in a .py file)"),
    "differentiable": RewardOption(None, bool, "whether the function is differentiable in the pixels"),
}

_CACHE: "OrderedDict[tuple, Reward]" = OrderedDict()
_LOCK = threading.RLock()
MAX_CACHED_REWARDS = 8
"""Reward objects kept by :func:`get_reward` (least recently used dropped first). The models behind
them have their own bounded caches (``clip_models.MAX_CACHED_CLIPS`` and the PickScore / HPSv2 ones)."""

HOSTED_OPTION_VALUES: dict[str, dict[str, tuple]] = {
    "aesthetic": {"clip_model": ("ViT-L-14-quickgelu",), "pretrained": ("openai",), "precision": ("fp32",),
                  "cache_dir": ("",), "head_path": ("",)},
    "clip": {"clip_model": ("ViT-L-14-quickgelu", "tiny-clip"), "model": ("", "tiny-clip", "ViT-L-14-quickgelu"),
             "pretrained": ("openai",), "precision": ("fp32",), "cache_dir": ("",)},
    "pickscore": {"model": ("yuvalkirstain/PickScore_v1",), "processor": ("laion/CLIP-ViT-H-14-laion2B-s32B-b79K",),
                  "precision": ("fp32",), "cache_dir": ("",)},
    "hpsv2": {"version": ("v2.1",), "checkpoint": ("",), "clip_model": ("ViT-H-14",), "precision": ("fp32",),
              "cache_dir": ("",)},
}
"""Hosted mode: the only values of the options that choose a model, a file or a folder. Anything else
would read server files (``head_path``, ``checkpoint``, ``cache_dir``) or load one more large model per
distinct value (``clip_model``, ``pretrained``, ``precision``, ...), so it is refused before loading."""

HOSTED_TEXT_LIMIT = 500
"""Hosted mode: longest text of a string option (texts to score against), in characters."""
HOSTED_MAX_TEXTS = 64
"""Hosted mode: most captions in ``contrast_texts``."""

HOSTED_REFUSED_REWARDS = {"preference": "its click log is a server file; use the Preference tab, which keeps its own log"}


def reward_names() -> list[str]:
    """Registered reward names (plug-ins excluded)."""
    return list(_REGISTRY)


def list_rewards() -> list[dict[str, Any]]:
    """Every registered reward with its description and options (plain data for the UI)."""
    return [
        {
            "name": info.name,
            "description": info.description,
            "differentiable": info.differentiable,
            "needs_weights": info.needs_weights,
            "options": {
                key: {"default": opt.default, "type": opt.kind.__name__, "help": opt.help, "choices": list(opt.choices) if opt.choices else None}
                for key, opt in info.options.items()
            },
        }
        for info in _REGISTRY.values()
    ]


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
    if name in _REGISTRY:
        info = _REGISTRY[name]
        allowed = info.options
    elif is_plugin_spec(name):
        if hosted_mode(hosted):
            raise ValueError(
                f"reward={name!r} is a plug-in, and plug-ins (arbitrary code) are disabled in hosted mode "
                f"({HOSTED_ENV}=1 or hosted=True); allowed values here: {reward_names()}"
            )
        info = None
        allowed = _PLUGIN_OPTIONS
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
