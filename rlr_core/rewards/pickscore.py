"""PickScore (Kirstain et al. 2023, Pick-a-Pic) as a differentiable reward.

    reward = get_reward("pickscore")                       # downloads once, then cached
    reward = get_reward("pickscore", model="/path/PickScore_v1", processor="/path/CLIP-ViT-H-14")

Score = ``logit_scale.exp() * cos(image_embedding, prompt_embedding)`` of a transformers
``CLIPModel`` (CLIP ViT-H/14 fine-tuned on Pick-a-Pic; ``logit_scale.exp()`` is about 100, typical
scores are about 18-23), exactly as the reference ``calc_probs`` of github.com/yuvalkirstain/PickScore
computes it before its softmax.

Where the weights come from:
- model: the Hugging Face Hub repo ``yuvalkirstain/PickScore_v1`` (``config.json`` and
  ``model.safetensors`` or ``pytorch_model.bin``, about 3.9 GB), or option ``model`` = a local folder
  with those files;
- processor: ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` (``preprocessor_config.json`` and the CLIP
  tokenizer files, a few MB), or option ``processor`` = a local folder saved by ``CLIPProcessor``.

The image side of the processor (resize the shortest edge to 224 with bicubic resampling, centre
crop 224, rescale to [0, 1], normalise with CLIP's mean/std) is done in torch from the settings in
``preprocessor_config.json``, so gradients reach the pixels; the text side uses the processor's
tokenizer (padding, truncation at 77 tokens). Weights are frozen, not detached.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from rlr_core.hub import WeightsUnavailableError, cached_hf_file, fetch_hf_file
from rlr_core.rewards.clip_models import BoundedCache, TextEmbeddingCache
from rlr_core.rewards.simple import check_images

PICKSCORE_REPO = "yuvalkirstain/PickScore_v1"
PROCESSOR_REPO = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
MODEL_FILES = ("model.safetensors", "pytorch_model.bin")
PROCESSOR_FILES = ("preprocessor_config.json", "tokenizer_config.json", "vocab.json", "merges.txt")  # + special_tokens_map.json if present
PROCESSOR_CONFIGS = ("preprocessor_config.json", "processor_config.json")  # transformers 4 / 5 save formats
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_RESAMPLE = {2: "bilinear", 3: "bicubic"}  # PIL codes used by CLIPImageProcessor


@dataclass(frozen=True)
class ImageSettings:
    """The image side of a ``CLIPImageProcessor`` (``preprocessor_config.json``)."""

    shortest_edge: int = 224
    crop: tuple[int, int] = (224, 224)
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    interpolation: str = "bicubic"
    center_crop: bool = True

    @classmethod
    def from_folder(cls, folder: str) -> "ImageSettings":
        """Read a processor folder: ``preprocessor_config.json``, or ``processor_config.json`` ("image_processor")."""
        path = os.path.join(folder, PROCESSOR_CONFIGS[0])
        if os.path.isfile(path):
            cfg = json.loads(open(path, encoding="utf-8").read())
        else:
            path = os.path.join(folder, PROCESSOR_CONFIGS[1])
            cfg = json.loads(open(path, encoding="utf-8").read()).get("image_processor", {})
        size = cfg.get("size", {"shortest_edge": 224})
        edge = int(size.get("shortest_edge", size.get("height", 224))) if isinstance(size, dict) else int(size)
        crop = cfg.get("crop_size", edge)
        crop_hw = (int(crop.get("height", edge)), int(crop.get("width", edge))) if isinstance(crop, dict) else (int(crop), int(crop))
        resample = int(cfg.get("resample", 3))
        if resample not in _RESAMPLE:
            raise ValueError(f"{path}: resample={resample} is not supported; allowed values: {sorted(_RESAMPLE)} (bilinear, bicubic)")
        return cls(edge, crop_hw, tuple(cfg.get("image_mean", cls.mean)), tuple(cfg.get("image_std", cls.std)),
                   _RESAMPLE[resample], bool(cfg.get("do_center_crop", True)))


def clip_processor_transform(images: torch.Tensor, settings: ImageSettings) -> torch.Tensor:
    """CLIPImageProcessor's resize-shortest-edge, centre crop and normalisation, in torch (differentiable).

    ``images`` is [B, 3, H, W] in [0, 1]; the result is the ``pixel_values`` the model expects.
    """
    x = images.float()
    h, w = x.shape[-2:]
    short, long = (h, w) if h <= w else (w, h)
    new_short, new_long = settings.shortest_edge, int(settings.shortest_edge * long / short)
    size = (new_short, new_long) if h <= w else (new_long, new_short)
    if size != (h, w):
        x = F.interpolate(x, size=size, mode=settings.interpolation, antialias=True, align_corners=False)
    if settings.center_crop:
        th, tw = settings.crop
        nh, nw = x.shape[-2:]
        if nh < th or nw < tw:  # the processor pads with zeros before cropping
            ph, pw = max(th - nh, 0), max(tw - nw, 0)
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
            nh, nw = x.shape[-2:]
        top, left = (nh - th) // 2, (nw - tw) // 2
        x = x[..., top : top + th, left : left + tw]
    mean = torch.tensor(settings.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(settings.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def _hub_folder(repo_id: str, files: tuple[str, ...], weights: str, cache_dir: str | None, alternatives: bool = False) -> str:
    """Snapshot folder holding ``files`` of ``repo_id`` (``alternatives``: the first of ``files`` that exists)."""
    if alternatives:
        for name in files:
            found = cached_hf_file(repo_id, name, cache_dir)
            if found:
                return os.path.dirname(found)
        last: WeightsUnavailableError | None = None
        for name in files:
            try:
                return os.path.dirname(fetch_hf_file(repo_id, name, weights, cache_dir))
            except WeightsUnavailableError as exc:
                if "is set" in exc.reason or "could not be reached" in exc.reason:
                    raise  # offline: no point trying the other file names
                last = exc
        assert last is not None
        raise last
    folder = ""
    for name in files:
        folder = os.path.dirname(fetch_hf_file(repo_id, name, weights, cache_dir))
    return folder


def _local_or_hub(value: str, option: str, required: tuple[str, ...]) -> str | None:
    """``value`` as a local folder (checked: one of ``required`` must be in it), or None when it is a Hub repo id."""
    if os.path.isdir(value):
        if not any(os.path.isfile(os.path.join(value, f)) for f in required):
            raise ValueError(f"{option}={value!r} is a folder without {' or '.join(required)}; give a folder saved by save_pretrained or a Hub repo id")
        return value
    if value.count("/") != 1 or os.path.exists(value):
        raise ValueError(f"{option}={value!r} is neither a local folder nor a Hugging Face repo id ('org/name')")
    return None


_CACHE = BoundedCache(1)  # one pickscore model per process (several GB each)
_LOCK = threading.Lock()


def load_pickscore(model: str = PICKSCORE_REPO, processor: str = PROCESSOR_REPO, device: str | torch.device = "cpu",
                   precision: str = "fp32", cache_dir: str | None = None) -> tuple[Any, Any, ImageSettings]:
    """(frozen CLIPModel, tokenizer, image settings), cached per process.

    Raises WeightsUnavailableError within seconds when the files are not cached and the hub cannot be reached.
    """
    from transformers import CLIPModel, CLIPTokenizer

    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not allowed; allowed values: {list(PRECISIONS)}")
    device = torch.device(device)
    key = (model, processor, str(device), precision, cache_dir)
    with _LOCK:
        cached = _CACHE.get(key)
        if cached is not None:
            return cached
        model_dir = _local_or_hub(model, "model", ("config.json",))
        if model_dir is None:
            name = f"PickScore ({model}: config.json + model weights, about 3.9 GB)"
            _hub_folder(model, ("config.json",), name, cache_dir)
            model_dir = _hub_folder(model, MODEL_FILES, name, cache_dir, alternatives=True)
        proc_dir = _local_or_hub(processor, "processor", PROCESSOR_CONFIGS)
        if proc_dir is None:
            proc_dir = _hub_folder(processor, PROCESSOR_FILES, f"the PickScore processor ({processor}: tokenizer + preprocessor config)", cache_dir)
            with contextlib.suppress(WeightsUnavailableError):  # optional; the tokenizer defaults agree with it
                fetch_hf_file(processor, "special_tokens_map.json", "the PickScore processor", cache_dir)
        clip = CLIPModel.from_pretrained(model_dir, dtype=PRECISIONS[precision]).to(device).eval().requires_grad_(False)
        tokenizer = CLIPTokenizer.from_pretrained(proc_dir)
        settings = ImageSettings.from_folder(proc_dir)
        return _CACHE.put(key, (clip, tokenizer, settings))


def _features(output: Any) -> torch.Tensor:
    """get_*_features returns a tensor (transformers 4) or an output whose pooler_output is projected (5)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class PickScoreReward:
    """PickScore: ``logit_scale.exp() * cos(image, prompt)`` (about 18-23 for SD images). Differentiable."""

    name = "pickscore"
    differentiable = True

    def __init__(self, model: str = PICKSCORE_REPO, processor: str = PROCESSOR_REPO, precision: str = "fp32",
                 cache_dir: str | None = None, device: str | torch.device = "cpu") -> None:
        self.model_id, self.processor_id = str(model), str(processor)
        self.precision, self.cache_dir = precision, cache_dir or None
        self.device = torch.device(device)
        self._load(self.device)  # fail at get_reward time
        self._text_cache = TextEmbeddingCache()

    def _load(self, device: torch.device) -> tuple[Any, Any, ImageSettings]:
        return load_pickscore(self.model_id, self.processor_id, device, self.precision, self.cache_dir)

    def text_embeddings(self, prompts: list[str], device: torch.device) -> torch.Tensor:
        """Normalised prompt embeddings [B, D] (cached per prompt and device; no gradient)."""
        def encode(texts: list[str]) -> torch.Tensor:
            clip, tokenizer, _ = self._load(device)
            tokens = tokenizer(texts, padding=True, truncation=True, max_length=77, return_tensors="pt").to(device)
            with torch.no_grad():
                emb = _features(clip.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])).float()
            return emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-12)

        return self._text_cache.get(prompts, device, encode)

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        check_images(images, prompts)
        clip, _, settings = self._load(images.device)
        pixels = clip_processor_transform(images, settings).to(next(clip.parameters()).dtype)
        img = _features(clip.get_image_features(pixel_values=pixels)).float()
        img = img / img.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        txt = self.text_embeddings(list(prompts), images.device)
        scale = float(clip.logit_scale.detach().float().exp())
        if not math.isfinite(scale):
            raise ValueError(f"model={self.model_id!r} has a non-finite logit_scale")
        return (scale * (img * txt).sum(dim=-1)).float()
