"""Weight-free rewards: no downloads, work offline, cheap enough for the tiny CPU model.

All take images [B, 3, H, W] in [0, 1] and return float32 [B] on the images' device.
``saturation``, ``brightness``, ``target-color`` and ``symmetry`` are differentiable;
the JPEG rewards (as in DDPO) are not.
"""

from __future__ import annotations

import io

import numpy as np
import torch

# Named colours accepted by ``target-color`` (RGB in [0, 1]).
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "cyan": (0.0, 1.0, 1.0),
    "magenta": (1.0, 0.0, 1.0),
    "orange": (1.0, 0.5, 0.0),
    "purple": (0.5, 0.0, 0.5),
    "pink": (1.0, 0.75, 0.8),
    "brown": (0.6, 0.3, 0.1),
    "white": (1.0, 1.0, 1.0),
    "black": (0.0, 0.0, 0.0),
    "gray": (0.5, 0.5, 0.5),
}


def check_images(images: torch.Tensor, prompts: list[str] | None = None) -> None:
    """ValueError unless ``images`` is [B, 3, H, W] (and ``prompts`` has B entries when given)."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a tensor [B, 3, H, W] in [0, 1], got {shape}")
    if prompts is not None and len(prompts) != images.shape[0]:
        raise ValueError(f"prompts must have one entry per image: {len(prompts)} prompts for {images.shape[0]} images")


class SaturationReward:
    """Colourfulness (Hasler & Suesstrunk 2003) on [0, 1] pixels: gray = 0, vivid images about 0.3-1.

    M = sqrt(std(rg)^2 + std(yb)^2) + 0.3 * sqrt(mean(rg)^2 + mean(yb)^2), rg = R - G,
    yb = (R + G) / 2 - B, statistics over the pixels of each image.
    """

    name = "saturation"
    differentiable = True

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        check_images(images, prompts)
        x = images.float()
        r, g, b = x[:, 0], x[:, 1], x[:, 2]
        rg = (r - g).flatten(1)
        yb = (0.5 * (r + g) - b).flatten(1)
        eps = 1e-8
        spread = torch.sqrt(rg.var(dim=1, unbiased=False) + yb.var(dim=1, unbiased=False) + eps)
        offset = torch.sqrt(rg.mean(dim=1) ** 2 + yb.mean(dim=1) ** 2 + eps)
        return (spread + 0.3 * offset).float()


class BrightnessReward:
    """Mean luma (Rec. 601: 0.299 R + 0.587 G + 0.114 B), in [0, 1]."""

    name = "brightness"
    differentiable = True

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        check_images(images, prompts)
        w = torch.tensor([0.299, 0.587, 0.114], device=images.device, dtype=torch.float32).view(1, 3, 1, 1)
        return (images.float() * w).sum(dim=1).flatten(1).mean(dim=1)


def parse_color(color: object) -> tuple[float, float, float]:
    """A colour name, '#rrggbb', 'r,g,b' or a 3-sequence -> RGB in [0, 1].

    Components are read on the 0-255 scale when any of them exceeds 1, else on the 0-1 scale.
    """
    allowed = f"a name in {sorted(COLORS)}, '#rrggbb', 'r,g,b' or [r, g, b] (0-255, or 0-1 floats)"
    values: list[float]
    if isinstance(color, str):
        text = color.strip().lower()
        if text in COLORS:
            return COLORS[text]
        if text.startswith("#") and len(text) == 7:
            try:
                return tuple(int(text[i : i + 2], 16) / 255.0 for i in (1, 3, 5))  # type: ignore[return-value]
            except ValueError:
                raise ValueError(f"color={color!r} is not a colour; allowed: {allowed}") from None
        try:
            values = [float(v) for v in text.strip("()[] ").split(",")]
        except ValueError:
            raise ValueError(f"color={color!r} is not a colour; allowed: {allowed}") from None
    elif isinstance(color, (list, tuple)) and all(isinstance(v, (int, float)) for v in color):
        values = [float(v) for v in color]
    else:
        raise ValueError(f"color={color!r} is not a colour; allowed: {allowed}")
    if len(values) != 3:
        raise ValueError(f"color={color!r} must have 3 components; allowed: {allowed}")
    if any(v > 1.0 for v in values):  # any component above 1 means the 0-255 scale
        values = [v / 255.0 for v in values]
    if any(v < 0.0 or v > 1.0 for v in values):
        raise ValueError(f"color={color!r} has components outside 0-255; allowed: {allowed}")
    return (values[0], values[1], values[2])


class TargetColorReward:
    """Closeness of every pixel to one colour: -mean_pixels ||pixel - color||_2 / sqrt(3), in [-1, 0]."""

    name = "target-color"
    differentiable = True

    def __init__(self, color: object = "red") -> None:
        self.color = parse_color(color)

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        check_images(images, prompts)
        c = torch.tensor(self.color, device=images.device, dtype=torch.float32).view(1, 3, 1, 1)
        dist = torch.sqrt(((images.float() - c) ** 2).sum(dim=1) + 1e-8)
        return -(dist.flatten(1).mean(dim=1) / 3**0.5)


class SymmetryReward:
    """Left-right mirror symmetry: -mean |image - flip(image)|, in [-1, 0] (0 = perfectly symmetric)."""

    name = "symmetry"
    differentiable = True

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        check_images(images, prompts)
        x = images.float()
        return -(x - torch.flip(x, dims=[-1])).abs().flatten(1).mean(dim=1)


def jpeg_size_kb(images: torch.Tensor, quality: int = 95) -> torch.Tensor:
    """JPEG file size in kB (1 kB = 1000 bytes) of each image, encoded with PIL at ``quality``."""
    from PIL import Image

    pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    sizes = []
    for array in pixels:
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="JPEG", quality=quality)
        sizes.append(buffer.tell() / 1000.0)
    return torch.tensor(sizes, dtype=torch.float32, device=images.device)


class JpegCompressibilityReward:
    """Minus the JPEG size in kB (quality 95, as in DDPO): simpler images score higher. Not differentiable."""

    name = "jpeg-compressibility"
    differentiable = False
    sign = -1.0

    def __init__(self, quality: int = 95) -> None:
        if not 1 <= int(quality) <= 100:
            raise ValueError(f"quality={quality!r} is out of range; allowed values: integers 1-100")
        self.quality = int(quality)

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        check_images(images, prompts)
        return self.sign * jpeg_size_kb(images, self.quality)


class JpegIncompressibilityReward(JpegCompressibilityReward):
    """The JPEG size in kB (quality 95, as in DDPO): detailed images score higher. Not differentiable."""

    name = "jpeg-incompressibility"
    sign = 1.0
