"""open_clip models for the rewards: loading (offline-safe), one cache per process, torch preprocessing.

``load_clip(model, pretrained, device, precision, cache_dir)`` returns a frozen, eval-mode
:class:`LoadedClip` (model + tokenizer + the mean/std/interpolation of its pretrained tag). Loaded
models are shared by every reward in the process (the aesthetic and CLIP-score rewards use the same
ViT-L/14 by default).

``load_clip("tiny-clip", ...)`` returns the bundled offline tiny-clip (``rlr_core.tiny.clip_model``,
weights in ``assets/tiny-clip``) in the same form; ``pretrained`` and ``precision`` do not apply to it.
``default_clip_model(base_model)`` is "tiny-clip" for the bundled tiny model, ViT-L/14 otherwise.

``preprocess(images, size, mean, std)`` does CLIP's image transform in torch (resize the shorter
side, centre crop, normalise), so gradients reach the pixels: no PIL round trip.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from rlr_core.hub import (
    WeightsUnavailableError,
    cached_hf_file,
    ensure_can_download,
    hf_endpoint_host,
)

PRECISIONS = ("fp32", "fp16", "bf16")
TINY_CLIP = "tiny-clip"  # the bundled offline model (rlr_core.tiny.clip_model), not an open_clip name
DEFAULT_CLIP_MODEL = "ViT-L-14-quickgelu"
RANDOM_WEIGHTS = ("", "none", "random")  # pretrained tags meaning "random init" (tests, debugging)
_HF_WEIGHTS = "open_clip_pytorch_model.bin"
_HF_SAFE_WEIGHTS = "open_clip_model.safetensors"


@dataclass
class LoadedClip:
    """A frozen open_clip model with what its rewards need."""

    model: torch.nn.Module
    tokenizer: Callable[[list[str]], torch.Tensor]
    image_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    embed_dim: int
    name: str


class BoundedCache:
    """A least-recently-used cache of at most ``capacity`` entries (the reward models of one process).

    A reward object that was handed out keeps its model alive; the bound is on what the cache itself
    keeps, so distinct settings do not pile up models (hosted mode also allow-lists the settings)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = int(capacity)
        self._entries: OrderedDict[tuple, Any] = OrderedDict()

    def get(self, key: tuple) -> Any | None:
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        return None

    def put(self, key: tuple, value: Any) -> Any:
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: tuple) -> bool:
        return key in self._entries


MAX_CACHED_CLIPS = 2
_CACHE = BoundedCache(MAX_CACHED_CLIPS)
_LOCK = threading.Lock()


def clear_clip_cache() -> None:
    """Forget every loaded open_clip model (frees memory; the next use reloads)."""
    with _LOCK:
        _CACHE.clear()


def _check_model_name(model_name: str) -> None:
    import open_clip

    if model_name.startswith(("hf-hub:", "local-dir:")):
        return
    if open_clip.get_model_config(model_name) is None:
        known = open_clip.list_models()
        vit = [m for m in known if m.startswith("ViT-")][:12]
        raise ValueError(
            f"clip_model={model_name!r} is not an open_clip architecture; allowed values are {TINY_CLIP!r} (bundled, "
            f"offline) or the names in open_clip.list_models() ({len(known)} of them, e.g. {', '.join(vit)})"
        )


def is_tiny_base_model(base_model: str) -> bool:
    """True when ``base_model`` (a ``load_model`` name or path) is the bundled tiny model."""
    from rlr_core.tiny.clip_model import ASSET_DIR

    name = str(base_model or "").strip()
    if name == "tiny":
        return True
    tiny_dir = ASSET_DIR.parent / "tiny-shapes"
    try:
        return bool(name) and os.path.isdir(name) and os.path.samefile(name, tiny_dir)
    except OSError:
        return False


def default_clip_model(base_model: str) -> str:
    """The CLIP model a reward should use by default for ``base_model``: ``"tiny-clip"`` for the tiny model.

    The tiny model draws 32x32 shapes that ImageNet-scale CLIPs do not read well, and tiny-clip
    needs no download; every other base model gets ViT-L/14 (OpenAI), the default of the rewards.
    """
    return TINY_CLIP if is_tiny_base_model(base_model) else DEFAULT_CLIP_MODEL


def _load_tiny_clip(device: torch.device) -> LoadedClip:
    """tiny-clip as a :class:`LoadedClip` (its image tower maps [0, 1] to [-1, 1] itself: mean 0, std 1 here)."""
    from rlr_core.tiny.clip_model import load_tiny_clip

    model = load_tiny_clip(device=device)
    size = int(model.config.image_size)
    return LoadedClip(
        model,
        lambda texts: model.tokenize(list(texts))[0],
        (size, size),
        (0.0, 0.0, 0.0),
        (1.0, 1.0, 1.0),
        "bilinear",
        int(model.config.embed_dim),
        TINY_CLIP,
    )


def resolve_pretrained(model_name: str, pretrained: str, cache_dir: str | None = None) -> tuple[str | None, dict]:
    """Local checkpoint path for ``model_name``/``pretrained`` and the tag's config.

    Returns ``(None, {})`` for random weights. A local file path is returned as is. A known tag is
    looked up in the local cache first and downloaded only after a fast reachability check.
    """
    import open_clip

    if pretrained is None or str(pretrained).strip().lower() in RANDOM_WEIGHTS:
        return None, {}
    pretrained = str(pretrained)
    if os.path.isfile(pretrained):
        return pretrained, {}
    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        raise ValueError(
            f"pretrained={pretrained!r} is neither a file nor a known open_clip tag for {model_name!r}; "
            f"allowed values: {tags or ['a local checkpoint file']}"
        )
    weights = f"open_clip {model_name} ({pretrained})"
    hf_hub = cfg.get("hf_hub", "")
    url = cfg.get("url", "")
    if hf_hub:
        # open_clip's convention: "org/repo/" = default file names, "org/repo/file.pt" = that file
        if hf_hub.endswith("/"):
            repo_id, filename = hf_hub.rstrip("/"), ""
        else:
            repo_id, filename = os.path.split(hf_hub)
        candidates = [filename] if filename else [_HF_SAFE_WEIGHTS, _HF_WEIGHTS]
        if filename.endswith((".bin", ".pth")):
            candidates.insert(0, filename[:-4] + ".safetensors")
        for name in candidates:
            found = cached_hf_file(repo_id, name, cache_dir)
            if found:
                return found, cfg
        source = f"https://huggingface.co/{repo_id}"
        host = hf_endpoint_host()
    else:
        directory = cache_dir or os.path.expanduser("~/.cache/clip")
        local = os.path.join(directory, os.path.basename(url))
        if os.path.isfile(local):
            return local, cfg
        source = url
        import urllib.parse

        host = urllib.parse.urlparse(url).hostname or url
    ensure_can_download(weights, source, host)
    try:
        path = open_clip.download_pretrained(cfg, cache_dir=cache_dir)
    except Exception as exc:
        raise WeightsUnavailableError(weights, source, f"and the download failed ({exc})") from exc
    if not path:
        raise WeightsUnavailableError(weights, source, "and open_clip returned no file")
    return path, cfg


def load_clip(
    model_name: str,
    pretrained: str,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    cache_dir: str | None = None,
) -> LoadedClip:
    """A frozen open_clip model from the process cache (loaded on first use).

    Raises ValueError for an unknown architecture/tag/precision and WeightsUnavailableError when the
    weights are not cached and the hub cannot be reached (within a few seconds).
    """
    import open_clip

    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not allowed; allowed values: {list(PRECISIONS)}")
    if model_name == TINY_CLIP:
        return _load_tiny_clip(torch.device(device))  # bundled, float32; pretrained/precision do not apply
    _check_model_name(model_name)
    device = torch.device(device)
    key = (model_name, str(pretrained), str(device), precision, cache_dir)
    with _LOCK:
        cached = _CACHE.get(key)
        if cached is not None:
            return cached
        checkpoint, cfg = resolve_pretrained(model_name, pretrained, cache_dir)
        kwargs: dict[str, Any] = {}
        if cfg.get("quick_gelu"):
            kwargs["force_quick_gelu"] = True
        model = open_clip.create_model(
            model_name,
            pretrained=checkpoint,
            precision=precision,
            device=device,
            cache_dir=cache_dir,
            **kwargs,
        )
        model.eval().requires_grad_(False)
        try:
            tokenizer = open_clip.get_tokenizer(model_name, cache_dir=cache_dir)
        except Exception as exc:  # HF tokenizers (e.g. SigLIP) need the hub too
            raise WeightsUnavailableError(f"the tokenizer of {model_name}", "the Hugging Face Hub", f"loading failed ({exc})") from exc
        size = model.visual.image_size
        size = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
        pp = getattr(model.visual, "preprocess_cfg", {}) or {}
        mean = tuple(cfg.get("mean", pp.get("mean", open_clip.OPENAI_DATASET_MEAN)))
        std = tuple(cfg.get("std", pp.get("std", open_clip.OPENAI_DATASET_STD)))
        interpolation = cfg.get("interpolation", pp.get("interpolation", "bicubic"))
        embed_dim = getattr(model.visual, "output_dim", None)
        if not isinstance(embed_dim, int):
            with torch.no_grad():
                probe = torch.zeros(1, 3, *size, device=device, dtype=next(model.parameters()).dtype)
                embed_dim = int(model.encode_image(probe).shape[-1])
        loaded = LoadedClip(model, tokenizer, size, mean, std, interpolation, embed_dim, f"{model_name}/{pretrained}")
        return _CACHE.put(key, loaded)


def preprocess(
    images: torch.Tensor,
    size: tuple[int, int],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    interpolation: str = "bicubic",
) -> torch.Tensor:
    """CLIP's transform in torch: resize shorter side to ``size`` (antialiased), centre crop, normalise.

    ``images`` is [B, 3, H, W] in [0, 1]; the result is differentiable with respect to it.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [B, 3, H, W] in [0, 1], got shape {tuple(images.shape)}")
    mode = interpolation if interpolation in ("bicubic", "bilinear") else "bicubic"
    x = images.float()
    h, w = x.shape[-2:]
    th, tw = size
    scale = max(th / h, tw / w)
    nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode=mode, antialias=True, align_corners=False)
    top, left = (nh - th) // 2, (nw - tw) // 2
    x = x[..., top : top + th, left : left + tw]
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


def encode_images(clip: LoadedClip, images: torch.Tensor) -> torch.Tensor:
    """L2-normalised float32 image embeddings [B, D], differentiable with respect to ``images``."""
    x = preprocess(images, clip.image_size, clip.mean, clip.std, clip.interpolation)
    dtype = next(clip.model.parameters()).dtype
    emb = clip.model.encode_image(x.to(dtype)).float()
    return emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def encode_texts(clip: LoadedClip, prompts: list[str], device: torch.device) -> torch.Tensor:
    """L2-normalised float32 text embeddings [B, D] (no gradient)."""
    with torch.no_grad():
        tokens = clip.tokenizer(list(prompts)).to(device)
        emb = clip.model.encode_text(tokens).float()
    return emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-12)


class TextEmbeddingCache:
    """Text embeddings per (text, device), each computed once; cleared when it holds over 4096."""

    MAX_ENTRIES = 4096

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], torch.Tensor] = {}

    def get(self, texts: list[str], device: torch.device, encode: Callable[[list[str]], torch.Tensor]) -> torch.Tensor:
        """Embeddings [len(texts), D]; ``encode(missing texts)`` computes the ones not cached yet."""
        missing = [t for t in dict.fromkeys(texts) if (t, str(device)) not in self._entries]
        if missing:
            embeddings = encode(missing)
            if len(self._entries) > self.MAX_ENTRIES:
                self._entries.clear()
            for text, embedding in zip(missing, embeddings):
                self._entries[(text, str(device))] = embedding
        return torch.stack([self._entries[(t, str(device))] for t in texts])
