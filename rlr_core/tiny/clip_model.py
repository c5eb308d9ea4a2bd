"""tiny-clip: a small image-text contrastive model for the 32x32 procedural shapes (offline).

    from rlr_core.tiny.clip_model import load_tiny_clip
    model = load_tiny_clip()                       # assets/tiny-clip, frozen, eval mode
    img = model.encode_image(images)               # images [B,3,H,W] in [0,1] -> normalised [B, D]
    txt = model.encode_text(["a red star on a white background"])
    cos = img @ txt.T

Architecture (``TinyClipConfig``):

* image tower: a CNN on 32x32 pixels (3x3 convolutions, GroupNorm, SiLU: one convolution at
  32 px, then two per stage at 16, 8 and 4 px, the first of each with stride 2), global mean pool, linear projection to ``embed_dim``. Inputs of another size
  are resized (antialiased) to 32x32 first; pixel values are mapped from [0, 1] to [-1, 1].
* text tower: the real CLIP BPE tokenizer (49,408 tokens, built offline by
  :func:`rlr_core.tokenizer.build_clip_tokenizer`), token + position embeddings, a small
  pre-norm transformer (bidirectional, padding masked), the hidden state at the end-of-text
  token, linear projection to ``embed_dim``.
* both embeddings are L2-normalised; the logit scale is learned (CLIP's ``exp(t)``, capped at 100).

Everything is smooth (SiLU / GELU, no max pooling), so the image embedding has useful gradients
with respect to the pixels (the ``clip`` reward backpropagates through it).
"""

from __future__ import annotations

import json
import math
import tempfile
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ASSET_DIR = Path(__file__).resolve().parents[2] / "assets" / "tiny-clip"
NAME = "tiny-clip"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
EOT_TOKEN = 49407  # CLIP's <|endoftext|>, also its padding token


@dataclass
class TinyClipConfig:
    """Sizes of the two towers (saved as ``config.json`` next to the weights)."""

    embed_dim: int = 64
    image_size: int = 32
    channels: tuple[int, ...] = (16, 32, 64, 128)
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 4
    max_length: int = 32
    vocab_size: int = 49408
    logit_scale_init: float = math.log(1 / 0.07)
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """Plain-data form (tuples as lists)."""
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_json(cls, data: dict) -> "TinyClipConfig":
        """Inverse of :meth:`to_json` (unknown keys are refused by the dataclass)."""
        d = dict(data)
        d["channels"] = tuple(d.get("channels", cls.channels))
        return cls(**d)


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    groups = 8 if cout % 8 == 0 else 1
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1),
        nn.GroupNorm(groups, cout),
        nn.SiLU(),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.GroupNorm(groups, cout),
        nn.SiLU(),
    )


class ImageTower(nn.Module):
    """CNN: 32 px -> 16 -> 8 -> 4, mean pool, linear projection."""

    def __init__(self, cfg: TinyClipConfig) -> None:
        super().__init__()
        chans = list(cfg.channels)
        stem = nn.Sequential(nn.Conv2d(3, chans[0], 3, padding=1), nn.GroupNorm(8 if chans[0] % 8 == 0 else 1, chans[0]), nn.SiLU())
        blocks = [stem]
        for cin, cout in zip(chans[:-1], chans[1:]):
            blocks.append(_block(cin, cout, 2))
        self.blocks = nn.Sequential(*blocks)
        self.proj = nn.Linear(chans[-1], cfg.embed_dim)
        self.image_size = cfg.image_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Unnormalised embeddings [B, D] of images [B, 3, H, W] in [0, 1]."""
        x = images.float()
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True, align_corners=False)
        h = self.blocks(x * 2.0 - 1.0)
        return self.proj(h.mean(dim=(-2, -1)))


class TextTower(nn.Module):
    """Token + position embeddings, pre-norm transformer, end-of-text pooling, projection."""

    def __init__(self, cfg: TinyClipConfig) -> None:
        super().__init__()
        self.token = nn.Embedding(cfg.vocab_size, cfg.text_width)
        self.position = nn.Parameter(torch.zeros(cfg.max_length, cfg.text_width))
        layer = nn.TransformerEncoderLayer(
            cfg.text_width, cfg.text_heads, 4 * cfg.text_width, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.transformer = nn.TransformerEncoder(layer, cfg.text_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.text_width)
        self.proj = nn.Linear(cfg.text_width, cfg.embed_dim)
        nn.init.normal_(self.token.weight, std=0.02)
        nn.init.normal_(self.position, std=0.01)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Unnormalised embeddings [B, D] of token ids [B, L] with attention mask [B, L] (1 = token)."""
        h = self.token(ids) + self.position[: ids.shape[1]]
        h = self.transformer(h, src_key_padding_mask=mask == 0)
        h = self.norm(h)
        last = mask.long().sum(dim=1).clamp_min(1) - 1  # the end-of-text token
        return self.proj(h[torch.arange(h.shape[0], device=h.device), last])


class TinyClip(nn.Module):
    """The two towers, the tokenizer and the logit scale."""

    def __init__(self, cfg: TinyClipConfig, tokenizer=None) -> None:
        super().__init__()
        self.config = cfg
        self.visual = ImageTower(cfg)
        self.text = TextTower(cfg)
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.logit_scale_init)))
        self.tokenizer = tokenizer if tokenizer is not None else clip_tokenizer(cfg.max_length)

    def tokenize(self, texts: list[str], device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids [B, L], attention mask [B, L]) with the CLIP tokenizer, padded to ``max_length``."""
        enc = self.tokenizer(
            list(texts), padding="max_length", max_length=self.config.max_length, truncation=True, return_tensors="pt"
        )
        device = device if device is not None else self.logit_scale.device
        return enc["input_ids"].to(device), enc["attention_mask"].to(device)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings [B, D] of images [B, 3, H, W] in [0, 1] (differentiable)."""
        emb = self.visual(images)
        return emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def encode_text(self, texts: list[str] | torch.Tensor) -> torch.Tensor:
        """L2-normalised text embeddings [B, D] of strings, or of token ids [B, L] from :meth:`tokenize`.

        For ids the mask is recovered from the end-of-text token (CLIP pads with it): every position
        up to and including the first end-of-text token is attended.
        """
        if isinstance(texts, torch.Tensor):
            ids = texts.to(self.logit_scale.device)
            eot = (ids == EOT_TOKEN).long()
            mask = ((eot.cumsum(dim=1) - eot) == 0).long()
        else:
            ids, mask = self.tokenize(texts)
        emb = self.text(ids, mask)
        return emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def scale(self) -> torch.Tensor:
        """exp(logit_scale), capped at 100 like CLIP."""
        return self.logit_scale.exp().clamp(max=100.0)


_TOKENIZERS: dict[int, object] = {}
_TOK_LOCK = threading.Lock()


def clip_tokenizer(max_length: int = 32):
    """The offline CLIP BPE tokenizer with ``model_max_length=max_length`` (built once per process)."""
    from rlr_core.tokenizer import build_clip_tokenizer

    with _TOK_LOCK:
        if max_length not in _TOKENIZERS:
            with tempfile.TemporaryDirectory(prefix="tiny-clip-tok-") as tmp:
                _TOKENIZERS[max_length] = build_clip_tokenizer(tmp, model_max_length=max_length)
        return _TOKENIZERS[max_length]


def save_tiny_clip(model: TinyClip, out_dir: str | Path, extra: dict | None = None, half: bool = True) -> Path:
    """Write ``model.safetensors`` (fp16 when ``half``) and ``config.json`` into ``out_dir``."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dtype = torch.float16 if half else torch.float32
    state = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    state["logit_scale"] = model.logit_scale.detach().float().reshape(())  # keep the scale exact
    save_file(state, str(out / WEIGHTS_FILE))
    meta = {"architecture": "TinyClip", "config": model.config.to_json(), "weights_dtype": str(dtype).replace("torch.", "")}
    if extra:
        meta.update(extra)
    (out / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return out


_MODELS: dict[tuple[str, str], TinyClip] = {}
_MODEL_LOCK = threading.Lock()


def load_tiny_clip(path: str | Path | None = None, device: str | torch.device = "cpu") -> TinyClip:
    """The frozen, eval-mode, float32 tiny-clip from ``path`` (default ``assets/tiny-clip``), cached per process."""
    from safetensors.torch import load_file

    folder = Path(path) if path else ASSET_DIR
    device = torch.device(device)
    key = (str(folder.resolve()), str(device))
    with _MODEL_LOCK:
        if key in _MODELS:
            return _MODELS[key]
        cfg_path, weights = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        if not cfg_path.is_file() or not weights.is_file():
            raise FileNotFoundError(f"tiny-clip weights not found: expected {cfg_path} and {weights}")
        meta = json.loads(cfg_path.read_text())
        model = TinyClip(TinyClipConfig.from_json(meta["config"]))
        state = {k: v.float() for k, v in load_file(str(weights)).items()}
        model.load_state_dict(state)
        model = model.to(device).eval().requires_grad_(False)
        _MODELS[key] = model
        return model


def clear_tiny_clip_cache() -> None:
    """Forget the loaded tiny-clip models."""
    with _MODEL_LOCK:
        _MODELS.clear()


def tiny_clip_image_features(images: torch.Tensor, path: str | Path | None = None) -> torch.Tensor:
    """Normalised tiny-clip image embeddings [B, D] of ``images`` [B, 3, H, W] in [0, 1], on their device.

    Differentiable with respect to the pixels (the weights are frozen); the image features of the
    learned preference reward when the base model is the tiny one.
    """
    return load_tiny_clip(path, images.device).encode_image(images)


@torch.no_grad()
def zero_shot(model: TinyClip, images: torch.Tensor, candidates: list[list[str]]) -> list[int]:
    """Index of the highest-cosine caption among ``candidates[i]`` for each image ``i``."""
    img = model.encode_image(images)
    picks = []
    for i, texts in enumerate(candidates):
        txt = model.encode_text(texts)
        picks.append(int((txt @ img[i]).argmax()))
    return picks
