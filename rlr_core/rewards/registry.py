"""The table of built-in rewards: names, descriptions, options (defaults, kinds, help, choices) and the
factory of each (models are imported only when a reward is built). ``rlr_core.rewards.get_reward`` builds
from it; :func:`list_rewards` gives it to the app as plain data. See docs/rewards.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from rlr_core.rewards.base import Reward

__all__ = ["RewardOption", "RewardInfo", "REGISTRY", "PLUGIN_OPTIONS", "reward_names", "list_rewards",
           "default_clip_model"]


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
        import rlr_core.rewards.simple as simple

        return getattr(simple, cls_name)(**kw)

    return make


def _composition(cls_name: str) -> Callable[..., Reward]:
    def make(device: Any = None, **kw: Any) -> Reward:
        import rlr_core.rewards.composition as composition

        return getattr(composition, cls_name)(**kw)

    return make


_PROMPT_COLOR_OPTION = RewardOption(
    True, bool, "measure the shape against the colour its prompt names ('a red circle ...'), so a faded or recoloured "
    "shape counts as partial or off-colour; false, or prompts without a colour word: the image's dominant colour"
)

REGISTRY: dict[str, RewardInfo] = {
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
            "mode=direct runs through rlr_core.training.clicks.PreferenceSession.",
            True,
            False,
            _preference,
            {
                "mode": RewardOption("learned", str, "learned = fitted head; direct = clicks are the reward", ("learned", "direct")),
                "log_path": RewardOption("clicks.jsonl", str, "JSONL click log to fit on"),
                "features": RewardOption("auto", str, "image features of the head", ("auto", "clip", "tiny-clip", "pixels", "layout", "tiny-clip+grid", "tiny-clip+grid+colour",
                                                                                           "tiny-clip+grid+object-colour")),
                "clip_model": RewardOption("ViT-L-14-quickgelu", str, "open_clip architecture for features=clip/auto"),
                "pretrained": RewardOption("openai", str, "open_clip pretrained tag for features=clip/auto"),
                "l2": RewardOption(None, float, "L2 penalty of the Bradley-Terry fit (none: 0.3 for a head that weighs its "
                                                  "feature groups, else 0.01)"),
                "scaling": RewardOption("per-feature", str, "feature scaling before the fit", ("per-feature", "global")),
                "differentiable": RewardOption(True, bool, "false: the head's scores reach the update through likelihood ratios only"),
                "selection": RewardOption("auto", str, "weights of the feature groups: all alike, or by how they predict "
                                          "held-out rounds, the best weighting or all blended (auto: cross-validated for "
                                          "tiny-clip+grid+colour and tiny-clip+grid+object-colour)",
                                          ("auto", "all", "cross-validated", "averaged", "cross-validated-1se")),
                "solver": RewardOption("newton", str, "how the fit is solved: Newton's method, or L-BFGS (the solver of "
                                       "click logs made before Newton's)", ("newton", "lbfgs")),
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

"""Every built-in reward by name."""

PLUGIN_OPTIONS = {
    "function": RewardOption("", str, "function name (default: the one after ':' or 'reward' in a .py file)"),
    "differentiable": RewardOption(None, bool, "whether the function is differentiable in the pixels"),
}
"""The options of a plug-in reward (``"module:function"`` or ``"file.py"``)."""



def reward_names() -> list[str]:
    """Registered reward names (plug-ins excluded)."""
    return list(REGISTRY)


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
        for info in REGISTRY.values()
    ]
