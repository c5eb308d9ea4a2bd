"""Weight-free differentiable image features of the click head (rlr_core.rewards.preference_head): pixel and colour
statistics, the colours of the content and of the background, and where the content sits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["pixel_features", "colour_features", "object_colour_features", "layout_features"]


def pixel_features(images: torch.Tensor, bins: int = 8) -> torch.Tensor:
    """Weight-free differentiable image features [B, 3*bins + 48 + 8].

    Soft per-channel colour histograms (Gaussian soft binning), a 4x4 average-pooled thumbnail,
    per-channel mean and std, mean chroma (max - min channel) and edge energy.
    """
    x = images.float().clamp(0, 1)
    b = x.shape[0]
    centers = torch.linspace(0, 1, bins, device=x.device).view(1, 1, bins, 1)
    width = 1.0 / bins
    flat = x.flatten(2).unsqueeze(2)  # [B, 3, 1, HW]
    weights = torch.exp(-0.5 * ((flat - centers) / width) ** 2)
    weights = weights / weights.sum(dim=2, keepdim=True).clamp_min(1e-8)
    hist = weights.mean(dim=-1).reshape(b, 3 * bins)
    thumb = F.adaptive_avg_pool2d(x, 4).reshape(b, 48)
    gray = x.mean(dim=1)
    edges = ((gray[:, 1:, :] - gray[:, :-1, :]).abs().mean(dim=(1, 2)) + (gray[:, :, 1:] - gray[:, :, :-1]).abs().mean(dim=(1, 2))).unsqueeze(1)
    return torch.cat([hist, thumb, colour_features(x), edges], dim=1)


def colour_features(images: torch.Tensor) -> torch.Tensor:
    """Weight-free differentiable colour statistics [B, 7]: per-channel mean and spread, and mean chroma
    (max - min channel)."""
    x = images.float().clamp(0, 1)
    mean = x.mean(dim=(2, 3))
    std = (x.var(dim=(2, 3), unbiased=False) + 1e-8).sqrt()
    chroma = (x.max(dim=1).values - x.min(dim=1).values).mean(dim=(1, 2)).unsqueeze(1)
    return torch.cat([mean, std, chroma], dim=1)


def object_colour_features(images: torch.Tensor) -> torch.Tensor:
    """Weight-free differentiable colours [B, 8]: the content's mean colour and the background's (the one-pixel
    frame's, as in :func:`layout_features`), each with its chroma (max - min channel).

    Unlike :func:`colour_features` these do not change with how much of the image the content covers, so a head
    that reads "redder" from them pushes the content or the background toward red, not the shape's size or outline.
    """
    x = images.float().clamp(0, 1)
    background, content = _background_and_content(x)
    share = content / content.sum(dim=(1, 2), keepdim=True)
    foreground = (x * share.unsqueeze(1)).sum(dim=(2, 3))  # [B, 3]
    chroma = [c.max(dim=1).values - c.min(dim=1).values for c in (foreground, background)]
    return torch.cat([foreground, background, chroma[0][:, None], chroma[1][:, None]], dim=1)


def layout_features(images: torch.Tensor, cells: int = 4) -> torch.Tensor:
    """Weight-free differentiable layout features [B, cells*cells + 2]: where the content sits and its outline.

    The background is taken as the mean colour of the image's one-pixel frame; a pixel's "content" is its
    colour distance to it. Features: the share of the content in each cell of a ``cells`` x ``cells`` grid
    (so the content's centre and spread are linear in them), the mean content (how much there is) and the
    content's edge energy per unit of content (jagged outlines score higher than round ones).
    """
    x = images.float().clamp(0, 1)
    _, content = _background_and_content(x)
    grid = F.adaptive_avg_pool2d(content.unsqueeze(1), cells).flatten(1)
    amount = grid.sum(dim=1, keepdim=True).clamp_min(1e-6)
    edges = ((content[:, 1:, :] - content[:, :-1, :]).abs().mean(dim=(1, 2))
             + (content[:, :, 1:] - content[:, :, :-1]).abs().mean(dim=(1, 2))).unsqueeze(1)
    return torch.cat([grid / amount, amount / grid.shape[1], edges / amount], dim=1)


def _background_and_content(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The background colour [B, 3] (the mean of the one-pixel frame) and each pixel's content [B, H, W] (its colour
    distance to the background) of images ``x`` in [0, 1]."""
    frame = torch.cat([x[:, :, 0], x[:, :, -1], x[:, :, :, 0], x[:, :, :, -1]], dim=2)
    background = frame.mean(dim=2)
    return background, ((x - background[:, :, None, None]) ** 2).sum(dim=1).add(1e-6).sqrt()
