"""HPSv2 / HPSv2.1 (Wu et al. 2023, Human Preference Score v2) as a differentiable reward.

    reward = get_reward("hpsv2")                            # v2.1, downloads once, then cached
    reward = get_reward("hpsv2", version="v2.0")
    reward = get_reward("hpsv2", checkpoint="/path/HPS_v2.1_compressed.pt")

Score = ``cos(image_features, text_features)`` of open_clip ViT-H-14 with the HPS checkpoint
(typical scores are about 0.2-0.3), as in the reference ``score.py`` of github.com/tgxs002/HPSv2
(``image_features @ text_features.T`` of the normalised features, no logit scale).

Where the weights come from: the Hugging Face Hub repo ``xswu/HPSv2``, file
``HPS_v2_compressed.pt`` (version v2.0) or ``HPS_v2.1_compressed.pt`` (v2.1), about 1.9 GB; the
checkpoint holds the whole ViT-H-14 (``state_dict``), so no other CLIP weights are downloaded.
Option ``checkpoint`` = a local copy of that file.

Preprocessing is the reference's validation transform, in torch so gradients reach the pixels:
resize the LONGEST side to 224 (bicubic), pad the short side with black to 224 x 224, normalise
with the model's mean/std (OpenAI CLIP's). The tokenizer is open_clip's (bundled, offline).
"""

from __future__ import annotations

import os
import threading
import warnings
from typing import Any

import torch
import torch.nn.functional as F

from rlr_core.hub import fetch_hf_file
from rlr_core.rewards.clip_models import BoundedCache, TextEmbeddingCache
from rlr_core.rewards.simple import check_images

HPS_REPO = "xswu/HPSv2"
HPS_FILES = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}
HPS_ARCH = "ViT-H-14"
PRECISIONS = ("fp32", "fp16", "bf16")


def resize_longest_and_pad(images: torch.Tensor, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """HPSv2's validation transform in torch: longest side to ``size`` (bicubic, antialiased), pad with 0, normalise.

    ``images`` is [B, 3, H, W] in [0, 1]; the result is differentiable with respect to it.
    """
    x = images.float()
    h, w = x.shape[-2:]
    scale = size / float(max(h, w))
    if scale != 1.0:
        nh, nw = round(h * scale), round(w * scale)
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
        ph, pw = size - nh, size - nw
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=0.0)
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


def checkpoint_file(version: str = "v2.1", checkpoint: str = "", cache_dir: str | None = None) -> str:
    """Local path of the HPS checkpoint: ``checkpoint`` if given, else the Hub file of ``version``."""
    if version not in HPS_FILES:
        raise ValueError(f"version={version!r} is not allowed; allowed values: {list(HPS_FILES)}")
    if checkpoint:
        if not os.path.isfile(checkpoint):
            raise ValueError(f"checkpoint={checkpoint!r} is not a file; give the path of {HPS_FILES[version]} or '' to download it")
        return checkpoint
    filename = HPS_FILES[version]
    return fetch_hf_file(HPS_REPO, filename, f"HPS {version} ({filename}, open_clip {HPS_ARCH}, about 1.9 GB)", cache_dir)


_CACHE = BoundedCache(1)  # one hpsv2 model per process (several GB each)
_LOCK = threading.Lock()


def load_hps(version: str = "v2.1", checkpoint: str = "", clip_model: str = HPS_ARCH, device: str | torch.device = "cpu",
             precision: str = "fp32", cache_dir: str | None = None) -> tuple[Any, Any]:
    """(frozen open_clip model with the HPS weights, tokenizer), cached per process."""
    import open_clip

    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not allowed; allowed values: {list(PRECISIONS)}")
    if open_clip.get_model_config(clip_model) is None:
        raise ValueError(f"clip_model={clip_model!r} is not an open_clip architecture; allowed values: {HPS_ARCH!r} (the HPS checkpoints) "
                         "or a config registered with open_clip.add_model_config")
    device = torch.device(device)
    path = checkpoint_file(version, checkpoint, cache_dir)  # before building the (large) model
    key = (path, clip_model, str(device), precision)
    with _LOCK:
        cached = _CACHE.get(key)
        if cached is not None:
            return cached
        model = open_clip.create_model(clip_model, pretrained=None, precision=precision, device="cpu")
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        if not isinstance(state, dict):
            raise ValueError(f"checkpoint={path!r} is not an HPS checkpoint (a dict with 'state_dict')")
        state = {k.removeprefix("module."): v for k, v in state.items()}
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys:
            raise ValueError(f"checkpoint={path!r} does not fit open_clip {clip_model}: missing {result.missing_keys[:5]} ...")
        if result.unexpected_keys:
            warnings.warn(f"hpsv2: ignored checkpoint keys {result.unexpected_keys[:5]}")
        model = model.to(device).eval().requires_grad_(False)
        tokenizer = open_clip.get_tokenizer(clip_model)
        return _CACHE.put(key, (model, tokenizer))


class HPSv2Reward:
    """HPSv2 score: ``cos(image, prompt)`` of the HPS-tuned ViT-H-14 (about 0.2-0.3). Differentiable."""

    name = "hpsv2"
    differentiable = True

    def __init__(self, version: str = "v2.1", checkpoint: str = "", clip_model: str = HPS_ARCH, precision: str = "fp32",
                 cache_dir: str | None = None, device: str | torch.device = "cpu") -> None:
        self.version, self.checkpoint, self.clip_model = version, checkpoint, clip_model
        self.precision, self.cache_dir = precision, cache_dir or None
        self._load(torch.device(device))  # fail at get_reward time
        self._text_cache = TextEmbeddingCache()

    def _load(self, device: torch.device) -> tuple[Any, Any]:
        return load_hps(self.version, self.checkpoint, self.clip_model, device, self.precision, self.cache_dir)

    def text_embeddings(self, prompts: list[str], device: torch.device) -> torch.Tensor:
        """Normalised prompt embeddings [B, D] (cached per prompt and device; no gradient)."""
        def encode(texts: list[str]) -> torch.Tensor:
            model, tokenizer = self._load(device)
            with torch.no_grad():
                emb = model.encode_text(tokenizer(texts).to(device)).float()
            return emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-12)

        return self._text_cache.get(prompts, device, encode)

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        check_images(images, prompts)
        model, _ = self._load(images.device)
        size = model.visual.image_size
        size = int(size if isinstance(size, int) else size[0])
        pp = getattr(model.visual, "preprocess_cfg", {}) or {}
        import open_clip

        mean = tuple(pp.get("mean", open_clip.OPENAI_DATASET_MEAN))
        std = tuple(pp.get("std", open_clip.OPENAI_DATASET_STD))
        x = resize_longest_and_pad(images, size, mean, std).to(next(model.parameters()).dtype)
        img = model.encode_image(x).float()
        img = img / img.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        txt = self.text_embeddings(list(prompts), images.device)
        return (img * txt).sum(dim=-1).float()
