"""Image helpers shared by the trainer, the CLI and the app: tensors to PIL, grids of PIL images."""

from __future__ import annotations

import math
from typing import Any

import torch


def to_pil(images: torch.Tensor | None) -> list[Any] | None:
    """[B, C, H, W] tensors in [0, 1] (C = 1 or 3) as PIL images; None for non-image chains."""
    if images is None or not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] not in (1, 3):
        return None
    from PIL import Image

    array = (images.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    array = array.permute(0, 2, 3, 1).numpy()
    if array.shape[-1] == 1:
        return [Image.fromarray(a[..., 0], mode="L").convert("RGB") for a in array]
    return [Image.fromarray(a) for a in array]


def image_grid(images: list[Any], columns: int | None = None) -> Any:
    """Paste PIL images (same size) into one grid image, row by row."""
    from PIL import Image

    if not images:
        raise ValueError("image_grid needs at least one image")
    columns = columns or min(len(images), 8)
    rows = math.ceil(len(images) / columns)
    width, height = images[0].size
    grid = Image.new("RGB", (columns * width, rows * height), "white")
    for i, image in enumerate(images):
        grid.paste(image.convert("RGB"), ((i % columns) * width, (i // columns) * height))
    return grid
