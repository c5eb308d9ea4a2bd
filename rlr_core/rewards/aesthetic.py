"""The LAION aesthetic predictor and the CLIP score, on open_clip (see docs/rewards.md).

Both are differentiable with respect to the pixels: preprocessing is done in torch
(:func:`rlr_core.rewards.clip_models.preprocess`) and the CLIP weights are frozen, not detached.

Where the weights come from:
- CLIP ViT-L/14 (OpenAI): open_clip's ``openai`` tag, i.e. the Hugging Face Hub repo
  ``timm/vit_large_patch14_clip_224.openai`` (open_clip falls back to OpenAI's URL without
  huggingface_hub).
- LAION head ``sac+logos+ava1-l14-linearMSE.pth``: the Hub copy ``trl-lib/ddpo-aesthetic-predictor``
  (file ``aesthetic-model.pth``, the one TRL's DDPO trainer uses), else the original file in
  https://github.com/christophschuhmann/improved-aesthetic-predictor; option ``head_path`` for a
  local copy.
"""

from __future__ import annotations

import os
import threading

import torch
from torch import nn

from rlr_core.rewards.clip_models import (
    DEFAULT_CLIP_MODEL,
    LoadedClip,
    TextEmbeddingCache,
    encode_images,
    encode_texts,
    load_clip,
)
from rlr_core.hub import WeightsUnavailableError, fetch_hf_file, fetch_url
from rlr_core.rewards.simple import check_images

HEAD_HF_REPO = "trl-lib/ddpo-aesthetic-predictor"
HEAD_HF_FILE = "aesthetic-model.pth"
HEAD_GITHUB_URL = (
    "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/sac%2Blogos%2Bava1-l14-linearMSE.pth"
)
HEAD_NAME = "the LAION aesthetic head sac+logos+ava1-l14-linearMSE.pth"
DEFAULT_PRETRAINED = "openai"


class AestheticHead(nn.Module):
    """LAION's MLP: 768 -> 1024 -> 128 -> 64 -> 16 -> 1, dropouts between, no nonlinearities."""

    def __init__(self, input_dim: int = 768) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_dim, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """Score [B] from L2-normalised embeddings [B, 768]."""
        return self.layers(embedding).squeeze(-1)


_HEADS: dict[str, dict[str, torch.Tensor]] = {}
_HEAD_LOCK = threading.Lock()


def head_file(head_path: str = "", cache_dir: str | None = None) -> str:
    """Local path of the head weights: ``head_path`` if given, else the Hub copy, else GitHub."""
    if head_path:
        if not os.path.isfile(head_path):
            raise ValueError(f"head_path={head_path!r} is not a file; give the path of sac+logos+ava1-l14-linearMSE.pth or '' to download it")
        return head_path
    try:
        return fetch_hf_file(HEAD_HF_REPO, HEAD_HF_FILE, HEAD_NAME, cache_dir)
    except WeightsUnavailableError as hub_error:
        if "is set" in hub_error.reason or "could not be reached" in hub_error.reason:
            raise  # offline: the GitHub copy is unreachable too; fail fast with the Hub message
        try:
            return fetch_url(HEAD_GITHUB_URL, HEAD_NAME, cache_dir)
        except WeightsUnavailableError:
            raise hub_error from None


def load_head(head_path: str = "", cache_dir: str | None = None) -> AestheticHead:
    """A frozen, eval-mode :class:`AestheticHead` with the LAION weights (state dict cached per process)."""
    path = head_file(head_path, cache_dir)
    with _HEAD_LOCK:
        if path not in _HEADS:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or "layers.0.weight" not in state:
                raise ValueError(f"head_path={path!r} is not a LAION aesthetic head state dict (keys layers.0/2/4/6/7)")
            _HEADS[path] = {k: v.float() for k, v in state.items()}
        state = _HEADS[path]
    head = AestheticHead(int(state["layers.0.weight"].shape[1]))
    head.load_state_dict(state)
    return head.eval().requires_grad_(False)


class _ClipReward:
    """Shared part: resolve the open_clip model per device (loaded at construction on ``device``)."""

    def __init__(self, clip_model: str, pretrained: str, precision: str, cache_dir: str | None, device: str | torch.device) -> None:
        self.clip_model = clip_model
        self.pretrained = pretrained
        self.precision = precision
        self.cache_dir = cache_dir or None
        self.device = torch.device(device)
        self._clip_for(self.device)  # load now: bad names / missing weights fail at get_reward time

    def _clip_for(self, device: torch.device) -> LoadedClip:
        return load_clip(self.clip_model, self.pretrained, device, self.precision, self.cache_dir)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised CLIP embeddings [B, D] of ``images`` (no gradient): the feature space in which the
        reward-hacking guard measures how different a prompt's images are (``rlr_core.training.guard``)."""
        with torch.no_grad():
            return encode_images(self._clip_for(images.device), images)


class AestheticReward(_ClipReward):
    """LAION aesthetic score (about 1-10; base SD 1.4 images score about 4.4-5.5). Differentiable."""

    name = "aesthetic"
    differentiable = True

    def __init__(
        self,
        clip_model: str = DEFAULT_CLIP_MODEL,
        pretrained: str = DEFAULT_PRETRAINED,
        head_path: str = "",
        precision: str = "fp32",
        cache_dir: str | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self._head = load_head(head_path, cache_dir or None)  # small: fetch it first
        super().__init__(clip_model, pretrained, precision, cache_dir, device)
        dim = self._clip_for(self.device).embed_dim
        expected = self._head.layers[0].in_features
        if dim != expected:
            raise ValueError(
                f"clip_model={clip_model!r} gives {dim}-d embeddings but the aesthetic head expects {expected}-d "
                "(CLIP ViT-L/14); allowed clip_model values: ViT-L-14-quickgelu or ViT-L-14 (OpenAI weights)"
            )
        self._heads: dict[str, AestheticHead] = {}

    def head(self, device: torch.device) -> AestheticHead:
        """The head on ``device``."""
        key = str(device)
        if key not in self._heads:
            head = AestheticHead(self._head.layers[0].in_features)
            head.load_state_dict(self._head.state_dict())
            self._heads[key] = head.to(device).eval().requires_grad_(False)
        return self._heads[key]

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        check_images(images, prompts)
        emb = encode_images(self._clip_for(images.device), images)
        return self.head(images.device)(emb).float()


def parse_contrast_texts(contrast_texts: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The captions of the ``contrast_texts`` option: a ``|``-separated string or a list ('' = none)."""
    if isinstance(contrast_texts, str):
        parts = contrast_texts.split("|")
    elif isinstance(contrast_texts, (list, tuple)) and all(isinstance(t, str) for t in contrast_texts):
        parts = list(contrast_texts)
    else:
        raise ValueError(
            f"contrast_texts={contrast_texts!r} is not allowed; allowed values: captions separated by '|' "
            "(or a list of strings), '' = none"
        )
    return tuple(dict.fromkeys(t.strip() for t in parts if t.strip()))


class ClipScoreReward(_ClipReward):
    """CLIP score: ``scale * cos(image, text)`` (``clamp=True``: ``scale * max(cos, 0)``). Differentiable.

    ``text`` is the caption every image is scored against ('' = each image's own prompt), so a run
    can ask for something the prompt does not say. ``negative_text`` (optional) is subtracted:
    ``scale * (cos(image, text) - cos(image, negative_text))``, a direction between two captions
    (changes that raise both cosines, e.g. a drifting background, cancel out). ``contrast_texts``
    (optional, captions separated by ``|``) turns the score into a classification: the log-probability
    of ``text`` (or the prompt) among it and the contrast captions, ``log_softmax(scale * cos)[text]``,
    in (-inf, 0]; a change that raises every caption's cosine alike (background, colour) gains
    nothing. ``probability=True`` (with ``contrast_texts``) returns the probability itself, in [0, 1]:
    an image that is merely "less of a competitor" (an erased or noisy one) then gains almost nothing
    over a confident competitor, since both are near 0. ``clip_model="tiny-clip"`` uses the bundled offline tiny-clip (``pretrained`` and
    ``precision`` are then ignored).
    """

    name = "clip"
    differentiable = True

    def __init__(
        self,
        clip_model: str = DEFAULT_CLIP_MODEL,
        pretrained: str = DEFAULT_PRETRAINED,
        scale: float = 100.0,
        clamp: bool = False,
        text: str = "",
        negative_text: str = "",
        contrast_texts: str = "",
        probability: bool = False,
        precision: str = "fp32",
        cache_dir: str | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.scale = float(scale)
        if not self.scale > 0:
            raise ValueError(f"scale={scale!r} is not allowed; allowed values: a number > 0")
        if not isinstance(text, str):
            raise ValueError(f"text={text!r} is not allowed; allowed values: a string ('' = score against the prompt)")
        super().__init__(clip_model, pretrained, precision, cache_dir, device)
        if not isinstance(negative_text, str):
            raise ValueError(f"negative_text={negative_text!r} is not allowed; allowed values: a string ('' = none)")
        self.clamp = bool(clamp)
        self.text = text.strip()
        self.negative_text = negative_text.strip()
        self.contrast_texts = parse_contrast_texts(contrast_texts)
        if self.contrast_texts and (self.negative_text or self.clamp):
            raise ValueError(
                "contrast_texts cannot be combined with negative_text or clamp; allowed: contrast_texts alone "
                "(a log-probability among captions), or negative_text / clamp without contrast_texts"
            )
        if not isinstance(probability, bool):
            raise ValueError(f"probability={probability!r} is not allowed; allowed values: true or false")
        if probability and not self.contrast_texts:
            raise ValueError("probability=true needs contrast_texts (it is p(text | image) among the captions); "
                             "allowed: probability with contrast_texts, or probability=false")
        self.probability = probability
        self._text_cache = TextEmbeddingCache()

    def text_embeddings(self, prompts: list[str], device: torch.device) -> torch.Tensor:
        """Normalised prompt embeddings [B, D] (cached per prompt and device)."""
        return self._text_cache.get(prompts, device, lambda texts: encode_texts(self._clip_for(device), texts, device))

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        check_images(images, prompts)
        img = encode_images(self._clip_for(images.device), images)
        txt = self.text_embeddings([self.text] * len(prompts) if self.text else list(prompts), images.device)
        cos = (img * txt).sum(dim=-1)
        if self.contrast_texts:  # classification: log p(text | image) among text and the contrast captions
            others = self.text_embeddings(list(self.contrast_texts), images.device)
            logits = self.scale * torch.cat([cos[:, None], img @ others.T], dim=1)
            log_p = torch.log_softmax(logits, dim=1)[:, 0].float()
            return log_p.exp() if self.probability else log_p
        if self.clamp:
            cos = cos.clamp_min(0.0)
        if self.negative_text:  # directional: toward text, away from negative_text
            neg = self.text_embeddings([self.negative_text] * len(prompts), images.device)
            cos = cos - (img * neg).sum(dim=-1)
        return (self.scale * cos).float()
