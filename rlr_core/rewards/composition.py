"""Weight-free, differentiable *composition* rewards: where the shape is and how big it is.

Where an object sits and how large it is are decided in the first sampling steps (they come from
the initial noise), so these rewards need estimators that credit the early steps; methods that
only differentiate the last steps get little from them. Both read only the pixels and, optionally,
the shape's colour word in the prompt; they need no weights and work on any image size. They are
built for flat shapes on a plain or vertically graded background (the bundled tiny model's images).

Masks (shared, :func:`masks`)
    *Background* ``bg`` (detached, no gradient flows through it): one colour (per-channel median of
    the border pixels) or a vertical linear gradient between the two top rows and the two bottom
    rows (means of the row medians), whichever has the smaller median residual on the border. That
    covers white, black, gray, coloured and colour->white gradient backgrounds, and a shape touching
    less than half of the border.

    *Reference colour* ``f`` (detached): the shape colour the prompt names ("a red circle on a white
    background" -> the tiny palette's red; option ``prompt_color``), else the image's dominant
    foreground colour (median of the pixels at least 90% as far from the background as the farthest).

    *Foreground* ``w`` in [0, 1], the coverage of each pixel, with ``d = ||pixel - bg||`` (RGB in [0, 1])::

        w = clip((d - 0.06) / (max(|f - bg|, 0.3) - 0.06), 0, 1)

    Exact for an anti-aliased flat shape of colour ``f`` up to the noise floor (rendered areas:
    within 5% at high contrast, up to 13% too small for the smallest low-contrast shapes); 0 for
    the sampler's background noise (about 0.02); colour-agnostic otherwise: any pixel unlike the
    background counts, so recolouring part of a shape does not hide it.

    *Clutter*: the part of ``w`` off the segment from ``bg`` to ``f`` (a flat shape and its
    anti-aliased edge lie on it; noise and other colours do not)::

        c = w * (1 - exp(-(e / 0.25)^2)),  e = distance of the pixel to the segment [bg, f]
        clutter = sum c / (sum w + 0.02 H W)                       (0 for a flat shape, ~1 for noise)

    *Fuzz*: the share of partial coverage, ``sum w (1 - w) / (sum w + 0.02 H W)``: at most about 0.1
    for an opaque shape (its one-pixel soft edge), 0.3-0.6 for a faded, blurred or semi-transparent
    one; ``fuzz_excess = relu(fuzz - 0.15)``.

    *Geometry* of ``w`` (:func:`mask_stats`; coordinates in [0, 1], x right, y down): area A = mean w,
    centroid, RMS radius rho about it, total variation P (sum of |horizontal| and |vertical|
    differences of w, in image-width units). A disc of area A has rho = sqrt(A / (2 pi)) and
    P = 8 sqrt(A / pi), the most compact shape::

        spread_excess = relu(0.5 ln(rho^2 / (A' / (2 pi) + px^2)) - 0.15)    A' = A + 0.005, px = 1 pixel
        edge_excess   = relu(ln(P / (8 sqrt(A' / pi))) - 0.6)

    Rendered circles, squares, triangles and stars of every size and colour stay inside both
    tolerances (at most 0.09 and 0.47); speckle, noise and shapes broken into dots are at 0.5-3.

``shape-position`` (options ``target``, default "left" = (0.25, 0.5); ``prompt_color``)
    The RMS distance of the foreground mass to the target point t, with a uniform prior mass of 2%
    of the image added, minus penalties::

        m = w + 0.02
        R = -sqrt(sum_p m_p |p - t|^2 / sum_p m_p) - 0.25 edge_excess - clutter - fuzz_excess

    The squared distance is |centroid - t|^2 + spread^2, so only mass both centred on the target
    *and* compact scores well. Noise, speckle or mass spread over the image score like "everything
    everywhere" (-0.48 for "left") or worse; an empty canvas, a recoloured background or the whole
    image in one colour (the border then takes it as background) leave only the prior: the same
    -0.48; a tiny dot on the target is outweighed by the prior (-0.44). An opaque shape of radius
    about 0.2 on the target scores -0.22 (the best on rendered images), the base model's centred
    shapes about -0.39.

``shape-size`` (options ``target_area``, default 0.08; ``prompt_color``)
    The log-ratio of the foreground area to the target, minus penalties::

        R = -|ln((A + 0.005) / (target_area + 0.005))| - 2 spread_excess - edge_excess
            - 2 clutter - 2 fuzz_excess

    The log treats "twice too big" and "half too small" alike and makes an empty canvas (A -> 0)
    score -2.8; the compactness, clutter and fuzz penalties stop the area being made up by speckle,
    noise, dots or a faded larger shape. 0 = an opaque compact shape of the target area. The default
    0.08 (a circle of radius 0.16, smaller than any single shape the tiny model was trained on) is
    far from the base model's usual 0.15-0.45, so there is room to learn.

Both return float32 [B] on the images' device, differentiable in the images. The gradient lives on
the shape's edge and wherever the coverage is not saturated; it is zero on a flat background (below
the noise floor) and on fully covered pixels. Pixel-space gradient ascent on these rewards (Adam on
the pixels of base-model samples) moves/shrinks the shape into an opaque blob at the target
(position) or cuts it down to an opaque irregular blob of the target area (size): the rewards say
nothing about the shape's type, which is the prompt's business.
"""

from __future__ import annotations

import math
import re

import torch

from rlr_core.rewards.simple import check_images

NOISE_FLOOR = 0.06
"""RGB distance to the background (colours in [0, 1]) below which a pixel is background (the
sampler's background noise is about 0.02, its 99th percentile about 0.1)."""
MIN_CONTRAST = 0.3
"""Smallest foreground-background contrast the coverage is normalised by: fainter shapes count
partly (the closest colour pair of the tiny data, orange on yellow, is 0.34 apart)."""
COLOR_TOLERANCE = 0.25
"""RGB distance off the background -> foreground-colour segment at which a pixel is 63% clutter."""
PRIOR_AREA = 0.02
"""Uniform prior mass (fraction of the image) added to the mask by shape-position, and to the
denominator of the clutter fraction."""
AREA_EPS = 0.005
"""Added to areas before taking logs or comparing with a disc (about 5 pixels of a 32x32 image)."""
SPREAD_TOLERANCE = 0.15
"""ln(RMS radius / a disc's) allowed before a penalty (rendered shapes: at most 0.09, stars)."""
EDGE_TOLERANCE = 0.6
"""ln(total variation / a disc's perimeter) allowed before a penalty (rendered: triangles <= 0.19, stars <= 0.47)."""
SPREAD_WEIGHT = 2.0
"""shape-size: weight of the spread excess."""
EDGE_WEIGHT = 1.0
"""shape-size: weight of the edge excess."""
CLUTTER_WEIGHT = 2.0
"""shape-size: weight of the clutter fraction."""
FUZZ_TOLERANCE = 0.15
"""Share of partial coverage, sum w (1 - w) / sum w, allowed before a penalty (rendered and sampled
shapes: at most about 0.1, from their anti-aliased edge; a faint or blurred blob: 0.3-0.6)."""
FUZZ_WEIGHT = 2.0
"""shape-size: weight of the fuzz excess."""
POSITION_EDGE_WEIGHT = 0.25
"""shape-position: weight of the edge excess (its scale is about a quarter of shape-size's)."""
POSITION_CLUTTER_WEIGHT = 1.0
"""shape-position: weight of the clutter fraction."""
POSITION_FUZZ_WEIGHT = 1.0
"""shape-position: weight of the fuzz excess."""

TARGETS: dict[str, tuple[float, float]] = {
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
    "center": (0.5, 0.5),
    "centre": (0.5, 0.5),
    "top-left": (0.25, 0.25),
    "top-right": (0.75, 0.25),
    "bottom-left": (0.25, 0.75),
    "bottom-right": (0.75, 0.75),
}
"""Named targets of ``shape-position`` as (x, y) in [0, 1] image coordinates (x right, y down)."""


def parse_target(target: object) -> tuple[float, float]:
    """A named target (:data:`TARGETS`), 'x,y' or an (x, y) pair in [0, 1] -> (x, y)."""
    allowed = f"{list(TARGETS)} or 'x,y' with x and y in [0, 1] (x right, y down)"
    values: list[float]
    if isinstance(target, str):
        text = target.strip().lower().replace("_", "-").replace(" ", "-")
        if text in TARGETS:
            return TARGETS[text]
        try:
            values = [float(v) for v in target.strip().strip("()[] ").split(",")]
        except ValueError:
            raise ValueError(f"shape-position option target={target!r} is not allowed; allowed values: {allowed}") from None
    elif isinstance(target, (list, tuple)) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in target):
        values = [float(v) for v in target]
    else:
        raise ValueError(f"shape-position option target={target!r} is not allowed; allowed values: {allowed}")
    if len(values) != 2 or not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values):
        raise ValueError(f"shape-position option target={target!r} is not allowed; allowed values: {allowed}")
    return (values[0], values[1])


def background(images: torch.Tensor) -> torch.Tensor:
    """Per-pixel background colour [B, 3, H, W] estimated from the border (detached).

    Uniform (median of the border pixels) or a vertical linear gradient between the medians of the
    two top and the two bottom rows, whichever has the smaller median residual on the border.
    """
    x = images.detach().float()
    B, C, H, W = x.shape
    border = torch.cat([x[:, :, 0, :], x[:, :, -1, :], x[:, :, 1:-1, 0], x[:, :, 1:-1, -1]], dim=2)  # [B, 3, K]
    uniform = border.median(dim=2).values[:, :, None, None].expand(B, C, H, W)
    rows = min(2, H)
    top = x[:, :, :rows, :].median(dim=3).values.mean(dim=2)  # mean of the row medians: at row (rows - 1) / 2
    bottom = x[:, :, H - rows :, :].median(dim=3).values.mean(dim=2)
    y = torch.arange(H, device=x.device, dtype=torch.float32)
    y_top, y_bottom = (rows - 1) / 2.0, H - 1 - (rows - 1) / 2.0
    t = ((y - y_top) / max(y_bottom - y_top, 1e-6)).view(1, 1, H, 1)
    linear = (top[:, :, None, None] * (1 - t) + bottom[:, :, None, None] * t).expand(B, C, H, W)

    def residual(bg: torch.Tensor) -> torch.Tensor:
        diff = x - bg
        ring = torch.cat([diff[:, :, 0, :], diff[:, :, -1, :], diff[:, :, 1:-1, 0], diff[:, :, 1:-1, -1]], dim=2)
        return ring.norm(dim=1).median(dim=1).values  # [B]

    use_linear = (residual(linear) < residual(uniform)).view(B, 1, 1, 1)
    return torch.where(use_linear, linear, uniform)


def foreground_color(images: torch.Tensor, bg: torch.Tensor) -> torch.Tensor:
    """The dominant foreground colour [B, 3] (detached): per-channel median of the pixels whose distance
    to the background is at least 90% of the image's largest (the flat interior of the shape)."""
    x = images.detach().float()
    d = (x - bg).norm(dim=1).flatten(1)  # [B, HW]
    core = d >= 0.9 * d.max(dim=1, keepdim=True).values
    pixels = x.flatten(2).masked_fill(~core[:, None, :], float("nan"))
    return pixels.nanmedian(dim=2).values


def _palette() -> dict[str, tuple[float, float, float]]:
    from rlr_core.rewards.simple import COLORS as NAMED
    from rlr_core.tiny.data import COLORS as TINY

    palette = {name: (r / 255.0, g / 255.0, b / 255.0) for name, (r, g, b) in TINY.items()}  # what the tiny model draws
    for name, rgb in NAMED.items():
        palette.setdefault(name, rgb)
    palette.setdefault("grey", palette["gray"])
    return palette


PALETTE = _palette()
"""Colour words read from prompts (RGB in [0, 1]): the tiny model's palette, then target-color's names."""
_COLOR_WORD = re.compile(r"\b(" + "|".join(sorted(PALETTE, key=len, reverse=True)) + r")\b(?!\s+(?:background|gradient|backdrop))")


def prompt_color(prompt: str) -> tuple[float, float, float] | None:
    """RGB of the first colour word of ``prompt`` that does not name the background ("a red circle on a
    white background" -> red; "... purple gradient background" is skipped), or None."""
    match = _COLOR_WORD.search(str(prompt).lower())
    return PALETTE[match.group(1)] if match else None


def masks(images: torch.Tensor, prompts: list[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(foreground [B, H, W], clutter [B, H, W]), both in [0, 1].

    The reference foreground colour ``f`` of each image is the shape colour its prompt names
    (:func:`prompt_color`), else the image's dominant foreground colour (:func:`foreground_color`).

    ``foreground``: the coverage ``(d - NOISE_FLOOR) / (|f - bg| - NOISE_FLOOR)`` clipped to [0, 1],
    ``d`` the RGB distance to the background (``|f - bg|`` at least ``MIN_CONTRAST``). Exact for an
    anti-aliased flat shape of colour ``f``; colour-agnostic otherwise (any pixel unlike the
    background counts, so recolouring part of a shape does not hide it); a faint pixel counts partly.
    ``clutter``: the foreground off the segment from the background to ``f`` (a flat shape and its
    anti-aliased edge lie on it; noise and other colours do not):
    ``foreground * (1 - exp(-(e / COLOR_TOLERANCE)^2))``, ``e`` the distance to the segment.
    """
    x = images.float()
    bg = background(x)
    diff = x - bg
    d = torch.sqrt((diff**2).sum(dim=1) + 1e-8)
    reference = foreground_color(x, bg)
    if prompts is not None:
        for i, prompt in enumerate(prompts):
            rgb = prompt_color(prompt)
            if rgb is not None:
                reference[i] = torch.tensor(rgb, device=reference.device, dtype=reference.dtype)
    v = reference[:, :, None, None] - bg  # [B, 3, H, W] background -> foreground (detached)
    contrast = v.norm(dim=1).clamp(min=MIN_CONTRAST)
    w = ((d - NOISE_FLOOR) / (contrast - NOISE_FLOOR)).clamp(0.0, 1.0)
    t = ((diff * v).sum(dim=1, keepdim=True) / ((v * v).sum(dim=1, keepdim=True) + 1e-6)).clamp(0.0, 1.0)
    off = ((diff - t * v) ** 2).sum(dim=1)
    return w, w * (1 - torch.exp(-off / COLOR_TOLERANCE**2))


def foreground(images: torch.Tensor, prompts: list[str] | None = None) -> torch.Tensor:
    """The soft foreground mask [B, H, W] of :func:`masks`."""
    return masks(images, prompts)[0]


def clutter_fraction(w: torch.Tensor, clutter: torch.Tensor) -> torch.Tensor:
    """[B]: share of the foreground mass that is off-colour (0 for a flat shape, near 1 for noise)."""
    return clutter.sum(dim=(1, 2)) / (w.sum(dim=(1, 2)) + PRIOR_AREA * w.shape[-1] * w.shape[-2])


def fuzz_excess(w: torch.Tensor) -> torch.Tensor:
    """[B]: relu(sum w (1 - w) / (sum w + prior) - FUZZ_TOLERANCE): foreground made of partial coverage
    (a faint, blurred or semi-transparent shape) instead of opaque pixels with a one-pixel soft edge."""
    partial = (w * (1 - w)).sum(dim=(1, 2)) / (w.sum(dim=(1, 2)) + PRIOR_AREA * w.shape[-1] * w.shape[-2])
    return torch.relu(partial - FUZZ_TOLERANCE)


def _grid(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates (x [1, 1, W], y [1, H, 1]) in [0, 1]."""
    H, W = mask.shape[-2:]
    xs = (torch.arange(W, device=mask.device, dtype=torch.float32) + 0.5) / W
    ys = (torch.arange(H, device=mask.device, dtype=torch.float32) + 0.5) / H
    return xs.view(1, 1, W), ys.view(1, H, 1)


def mask_stats(mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Area (fraction), centroid (cx, cy), RMS radius and total variation (image-width units) of [B, H, W]."""
    H, W = mask.shape[-2:]
    xs, ys = _grid(mask)
    mass = mask.sum(dim=(1, 2))
    safe = mass + 1e-6
    cx = (mask * xs).sum(dim=(1, 2)) / safe
    cy = (mask * ys).sum(dim=(1, 2)) / safe
    r2 = (mask * ((xs - cx.view(-1, 1, 1)) ** 2 + (ys - cy.view(-1, 1, 1)) ** 2)).sum(dim=(1, 2)) / safe
    tv = (mask[:, :, 1:] - mask[:, :, :-1]).abs().sum(dim=(1, 2)) / W + (mask[:, 1:, :] - mask[:, :-1, :]).abs().sum(dim=(1, 2)) / H
    return {"area": mass / (H * W), "cx": cx, "cy": cy, "rms_radius": torch.sqrt(r2 + 1e-10), "tv": tv,
            "pixel": torch.tensor(1.0 / math.sqrt(H * W), device=mask.device)}


def edge_excess(stats: dict[str, torch.Tensor]) -> torch.Tensor:
    """relu(ln(total variation / perimeter of a disc of the same area) - EDGE_TOLERANCE)."""
    area = stats["area"] + AREA_EPS
    disc = 8.0 * torch.sqrt(area / math.pi)
    return torch.relu(torch.log((stats["tv"] + 1e-6) / disc) - EDGE_TOLERANCE)


def spread_excess(stats: dict[str, torch.Tensor]) -> torch.Tensor:
    """relu(ln(RMS radius / RMS radius of a disc of the same area) - SPREAD_TOLERANCE)."""
    area = stats["area"] + AREA_EPS
    disc2 = area / (2 * math.pi) + stats["pixel"] ** 2  # a disc's RMS radius^2, plus one pixel^2 of edge blur
    return torch.relu(0.5 * torch.log(stats["rms_radius"] ** 2 / disc2) - SPREAD_TOLERANCE)


def _check_bool(reward: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{reward} option prompt_color={value!r} is not allowed; allowed values: [True, False]")
    return value


class ShapePositionReward:
    """Minus the RMS distance of the foreground mass (plus a 2% uniform prior) to the point ``target``,
    minus 0.25 x the edge excess, the clutter fraction and the fuzz excess. About -1.6 (noise) to -0.22
    (an opaque compact shape of radius ~0.2 on the target); an empty canvas scores as mass everywhere.
    ``target``: a name of :data:`TARGETS` (default "left" = (0.25, 0.5)), 'x,y' or (x, y) in [0, 1].
    ``prompt_color``: measure against the shape colour the prompt names (see :func:`masks`)."""

    name = "shape-position"
    differentiable = True

    def __init__(self, target: object = "left", prompt_color: bool = True) -> None:
        self.target = parse_target(target)
        self.prompt_color = _check_bool("shape-position", prompt_color)

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        check_images(images, prompts)
        w, clutter = masks(images, list(prompts) if self.prompt_color else None)
        xs, ys = _grid(w)
        tx, ty = self.target
        m = w + PRIOR_AREA
        d2 = (xs - tx) ** 2 + (ys - ty) ** 2
        rms = torch.sqrt((m * d2).sum(dim=(1, 2)) / m.sum(dim=(1, 2)))
        penalty = (POSITION_EDGE_WEIGHT * edge_excess(mask_stats(w)) + POSITION_CLUTTER_WEIGHT * clutter_fraction(w, clutter)
                   + POSITION_FUZZ_WEIGHT * fuzz_excess(w))
        return (-rms - penalty).float()


class ShapeSizeReward:
    """Minus |ln(area / target_area)| (areas + 0.005), minus compactness penalties (RMS radius and
    total variation against a disc of the same area), 2 x the clutter fraction and 2 x the fuzz
    excess; 0 = an opaque compact shape covering ``target_area`` of the image (default 0.08; allowed
    (0, 0.9]). ``prompt_color``: measure against the shape colour the prompt names (see :func:`masks`)."""

    name = "shape-size"
    differentiable = True

    def __init__(self, target_area: float = 0.08, prompt_color: bool = True) -> None:
        try:
            value = float(target_area)
        except (TypeError, ValueError):
            value = float("nan")
        if isinstance(target_area, bool) or not (0.0 < value <= 0.9):
            raise ValueError(f"shape-size option target_area={target_area!r} is not allowed; allowed values: "
                             "a number in (0, 0.9] (fraction of the image the shape covers)")
        self.target_area = value
        self.prompt_color = _check_bool("shape-size", prompt_color)

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        check_images(images, prompts)
        w, clutter = masks(images, list(prompts) if self.prompt_color else None)
        stats = mask_stats(w)
        area_error = torch.log((stats["area"] + AREA_EPS) / (self.target_area + AREA_EPS)).abs()
        penalty = (SPREAD_WEIGHT * spread_excess(stats) + EDGE_WEIGHT * edge_excess(stats)
                   + CLUTTER_WEIGHT * clutter_fraction(w, clutter) + FUZZ_WEIGHT * fuzz_excess(w))
        return (-area_error - penalty).float()
