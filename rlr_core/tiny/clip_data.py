"""Training and evaluation images of tiny-clip (``python -m rlr_core.tiny.clip_train``): label-preserving
augmentations, the extra robust-training samples (empty canvas, blob, tiny shape, pixel noise) with their
captions, the off-distribution versions of the robust loss, and rendered held-out sets.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from .captions import EMPTY, NOISE, NOISE_CAPTION, empty_caption
from .data import BLOB, Sample, ShapeSpec, blob_points, caption_for, make_sample

__all__ = ["augment", "empty_version", "blob_version", "tiny_version", "noise_version", "noise_image", "shrink",
           "off_distribution", "rendered_set"]


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Label-preserving augmentations of [B,3,32,32] in [0,1]: flip, blur, noise, colour gain/offset."""
    b = x.shape[0]
    flip = torch.rand(b, generator=g) < 0.5
    x = torch.where(flip.view(b, 1, 1, 1), x.flip(-1), x)
    kernel = torch.tensor([1.0, 2.0, 1.0])
    kernel = (kernel[:, None] * kernel[None, :] / 16.0).expand(3, 1, 3, 3)
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
    a = torch.rand(b, 1, 1, 1, generator=g) * 0.7
    x = (1 - a) * x + a * blurred
    gain = 1 + (torch.rand(b, 3, 1, 1, generator=g) - 0.5) * 0.12
    offset = (torch.rand(b, 3, 1, 1, generator=g) - 0.5) * 0.08
    sigma = torch.rand(b, 1, 1, 1, generator=g) * 0.06
    x = x * gain + offset + sigma * torch.randn(x.shape, generator=g)
    return x.clamp(0, 1)


def empty_version(sample: Sample) -> Sample:
    """``sample`` with its shapes removed (background only), captioned by :func:`empty_caption`."""
    return replace(sample, caption=empty_caption(sample.background), shape=EMPTY, count=0, size_word="", shapes=())


def blob_version(sample: Sample, rng: np.random.Generator) -> Sample:
    """``sample``'s colour and background with one irregular polygon (:func:`data.blob_points`) of any
    size (half extent 0.06-0.40, tiny included) instead of its shapes, captioned "a red blob on a white
    background": what a reward-hacking run draws when a spiky fragment reads as a star."""
    r = float(rng.uniform(0.06, 0.40))
    cx, cy = (float(v) for v in rng.uniform(r + 0.02, 1 - r - 0.02, size=2))
    spec = ShapeSpec(BLOB, sample.color, cx, cy, r, blob_points(rng))
    return replace(sample, caption=caption_for(sample.color, BLOB, sample.background), shape=BLOB, count=1, size_word="",
                   shapes=(spec,))


def tiny_version(sample: Sample, rng: np.random.Generator) -> Sample:
    """``sample``'s first shape redrawn tiny (half extent 0.07-0.17, below the data's "small" 0.18-0.22) at a
    random place, captioned with size word "small": a tiny star is a star, a tiny circle is not."""
    first = sample.shapes[0]
    r = float(rng.uniform(0.07, 0.17))
    cx, cy = (float(v) for v in rng.uniform(r + 0.04, 1 - r - 0.04, size=2))
    spec = replace(first, cx=cx, cy=cy, r=r)
    return replace(sample, caption=caption_for(sample.color, sample.shape, sample.background, 1, "small"), count=1,
                   size_word="small", shapes=(spec,))


def noise_version(sample: Sample) -> Sample:
    """``sample`` as a noise image (see :func:`noise_image`), captioned "a noisy image"."""
    return replace(sample, caption=NOISE_CAPTION, shape=NOISE, count=0, size_word="", shapes=())


def noise_image(background: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """[3,H,W] in [0,1]: ``background`` blended 30-100% toward uniform pixel noise (coloured or grey,
    sometimes blurred to blotches): what a run that breaks the diffusion model draws."""
    noise = torch.rand(background.shape, generator=g)
    if float(torch.rand(1, generator=g)) < 0.3:
        noise = noise.mean(0, keepdim=True).expand_as(background)
    if float(torch.rand(1, generator=g)) < 0.3:
        noise = F.avg_pool2d(noise[None], 3, stride=1, padding=1, count_include_pad=False)[0]
    a = 0.3 + 0.7 * float(torch.rand(1, generator=g))
    return ((1 - a) * background + a * noise).clamp(0, 1)


def shrink(x: torch.Tensor, g: torch.Generator, share: float = 0.5) -> torch.Tensor:
    """``share`` of the images scaled down to 40-90% about the centre, the rim filled with the corner pixel."""
    out = x.clone()
    size = x.shape[-1]
    for i in torch.nonzero(torch.rand(x.shape[0], generator=g) < share).flatten().tolist():
        side = max(int(round(size * (0.4 + 0.5 * float(torch.rand(1, generator=g))))), 4)
        small = F.interpolate(x[i : i + 1], size=(side, side), mode="bilinear", antialias=True, align_corners=False)[0]
        top = (size - side) // 2
        out[i] = x[i, :, :1, :1]
        out[i, :, top : top + side, top : top + side] = small
    return out


def off_distribution(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Images pushed off the data distribution but keeping their shape: what a reward-hacking run draws.

    Per image: half of them shrunk to 40-90% of their size about the centre (tiny shapes), a blend
    toward a random tint (0-60%: pink / washed-out backgrounds), per-channel gain
    (0.6-1.2) and offset (+-0.2) (dull or shifted colours), a loss of contrast toward the image mean
    (0-50%), then Gaussian noise (sigma 0-0.1). The shape itself is untouched.
    """
    b = x.shape[0]
    x = shrink(x, g)
    tint = torch.rand(b, 3, 1, 1, generator=g)
    a = torch.rand(b, 1, 1, 1, generator=g) * 0.6
    x = (1 - a) * x + a * tint
    gain = 0.6 + 0.6 * torch.rand(b, 3, 1, 1, generator=g)
    offset = (torch.rand(b, 3, 1, 1, generator=g) - 0.5) * 0.4
    x = x * gain + offset
    c = torch.rand(b, 1, 1, 1, generator=g) * 0.5
    x = (1 - c) * x + c * x.mean(dim=(1, 2, 3), keepdim=True)
    x = x + torch.rand(b, 1, 1, 1, generator=g) * 0.1 * torch.randn(x.shape, generator=g)
    return x.clamp(0, 1)


def rendered_set(seeds) -> tuple[torch.Tensor, list[tuple[str, str, str]]]:
    """Rendered single-shape images of ``seeds`` (multi-shape samples skipped) with their labels."""
    imgs, labels = [], []
    for s in seeds:
        arr, sp = make_sample(int(s))
        if sp.count != 1 or sp.size_word:
            continue
        imgs.append(arr)
        labels.append((sp.color, sp.shape, sp.background))
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255.0
    return x, labels
