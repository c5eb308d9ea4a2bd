"""Deterministic detector for 32x32 shape images: foreground colour, shape, background, count.

No learned parts: the background is modelled from the image border (uniform, or a vertical linear
gradient between the top and bottom rows), the foreground colour is the median of the pixels that
differ most from the background (nearest of the 8 named colours), the foreground mask is the set of
pixels more than half-way from the background colour to the foreground colour (the anti-aliased
50% contour), and the shape of its largest 4-connected component is classified from three
scale-free features:

* solidity = area / convex-hull area (stars are concave: ~0.6; the others ~0.9-1.0)
* top      = share of the area in the upper half of the bounding box (an upright triangle ~0.25-0.35)
* extent   = area / bounding-box area (square ~1.0, circle ~0.79, triangle ~0.5)
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from .data import COLORS, GRAY, SHAPES

_BG_NAMES = {**{"gray": GRAY}, **COLORS}
_FG = np.array(list(COLORS.values()), dtype=np.float32)
_FG_NAMES = list(COLORS)
_BGV = np.array(list(_BG_NAMES.values()), dtype=np.float32)
_BG_LIST = list(_BG_NAMES)


@dataclass
class Detection:
    color: str | None
    shape: str | None
    background: str
    count: int
    features: dict = field(default_factory=dict)


def _nearest(rgb, table, names):
    d = ((table - np.asarray(rgb, dtype=np.float32)[None]) ** 2).sum(1)
    return names[int(d.argmin())]


def _to_uint_hwc(img) -> np.ndarray:
    a = img.detach().cpu().numpy() if hasattr(img, "detach") else np.asarray(img)
    a = a.astype(np.float32)
    if a.ndim == 3 and a.shape[0] == 3 and a.shape[-1] != 3:
        a = a.transpose(1, 2, 0)
    if a.max() <= 1.0 + 1e-6:
        a = a * 255.0
    return a


def background_model(a: np.ndarray):
    """(per-pixel background [H,W,3], name)."""
    H, W, _ = a.shape
    top = np.median(a[0], axis=0)
    bottom = np.median(a[-1], axis=0)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    if np.linalg.norm(top - bottom) > 60:
        t = np.linspace(0, 1, H, dtype=np.float32)[:, None, None]
        bg = top[None, None] * (1 - t) + bottom[None, None] * t
        bg = np.broadcast_to(bg, a.shape)
        return bg, _nearest(top, _BGV, _BG_LIST) + " gradient"
    c = np.median(border, axis=0)
    return np.broadcast_to(c[None, None], a.shape), _nearest(c, _BGV, _BG_LIST)


def _components(mask: np.ndarray) -> list[np.ndarray]:
    H, W = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    comps = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        q = deque([(y0, x0)])
        seen[y0, x0] = True
        pts = []
        while q:
            y, x = q.popleft()
            pts.append((y, x))
            for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                yy, xx = y + dy, x + dx
                if 0 <= yy < H and 0 <= xx < W and mask[yy, xx] and not seen[yy, xx]:
                    seen[yy, xx] = True
                    q.append((yy, xx))
        comps.append(np.array(pts))
    comps.sort(key=len, reverse=True)
    return comps


def _hull_area(points: np.ndarray) -> float:
    pts = sorted(set(map(tuple, points.tolist())))
    if len(pts) < 3:
        return 0.0

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower, upper = [], []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    hull = np.array(lower[:-1] + upper[:-1], dtype=np.float64)
    x, y = hull[:, 1], hull[:, 0]
    return 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))


def shape_features(comp: np.ndarray, soft: np.ndarray) -> dict:
    ys, xs = comp[:, 0], comp[:, 1]
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    # soft area: anti-aliased coverage inside the component's box grown by one pixel
    H, W = soft.shape
    cov = np.zeros_like(soft)
    cov[ys, xs] = 1.0
    gy0, gy1, gx0, gx1 = max(y0 - 1, 0), min(y1 + 1, H), max(x0 - 1, 0), min(x1 + 1, W)
    ring = np.zeros_like(soft, dtype=bool)
    ring[gy0:gy1, gx0:gx1] = True
    ring[ys, xs] = False
    cov[ring] = np.clip(soft[ring], 0, 0.5)  # partial coverage of edge pixels below the 50% contour
    area = float(cov.sum())
    # widths from the soft coverage so that 1-pixel steps do not dominate
    bw = float((cov.sum(0) > 0.5).sum()) or float(x1 - x0)
    bh = float((cov.sum(1) > 0.5).sum()) or float(y1 - y0)
    corners = np.concatenate([comp, comp + [0, 1], comp + [1, 0], comp + [1, 1]])
    hull = _hull_area(corners)
    mid = (y0 + y1) / 2.0
    rows = cov.sum(1)
    yy = np.arange(H) + 0.5
    top = float(rows[yy < mid].sum() + 0.5 * rows[(yy >= mid) & (yy < mid + 0.5)].sum())
    return {
        "area": area,
        "extent": float(len(comp)) / float((y1 - y0) * (x1 - x0)),
        "solidity": float(len(comp)) / max(hull, 1.0),
        "top": top / max(area, 1e-6),
        "aspect": bw / max(bh, 1.0),
    }


def count_points(comp: np.ndarray, bins: int = 36) -> int:
    """Number of points (tips) of a component: local maxima of its outline radius around the centroid,
    over ``bins`` angle sectors, that stand out from the neighbouring minima by at least 15% of the
    largest radius. A 5-point star has 5; a circle, square (4 shallow corners) or blob usually fewer or
    an irregular number."""
    ys, xs = comp[:, 0] + 0.5, comp[:, 1] + 0.5
    cy, cx = ys.mean(), xs.mean()
    angle = np.arctan2(ys - cy, xs - cx)
    radius = np.hypot(ys - cy, xs - cx) + 0.5
    sector = ((angle + np.pi) / (2 * np.pi) * bins).astype(int) % bins
    profile = np.zeros(bins)
    np.maximum.at(profile, sector, radius)
    for i in np.nonzero(profile == 0)[0]:  # sectors without a pixel (tiny shapes): the neighbours' mean
        profile[i] = 0.5 * (profile[(i - 1) % bins] + profile[(i + 1) % bins])
    profile = 0.25 * np.roll(profile, 1) + 0.5 * profile + 0.25 * np.roll(profile, -1)
    span = profile.max()
    if span <= 0:
        return 0
    peaks = 0
    for i in range(bins):
        left, right = profile[(i - 1) % bins], profile[(i + 1) % bins]
        if profile[i] > left and profile[i] >= right:
            # prominence: how far the profile drops on both sides before rising above this peak again
            drops = []
            for step in (-1, 1):
                low, j = profile[i], i
                for _ in range(bins // 2):
                    j = (j + step) % bins
                    if profile[j] > profile[i]:
                        break
                    low = min(low, profile[j])
                drops.append(profile[i] - low)
            if min(drops) >= 0.15 * span:
                peaks += 1
    return peaks


def classify_shape(f: dict) -> str:
    if f["solidity"] < 0.8:
        return "star"
    if f["top"] < 0.42:
        return "triangle"
    if f["extent"] > 0.88:
        return "square"
    return "circle"


def detect(img) -> Detection:
    """Detect colour, shape, background and count in one image ([H,W,3] or [3,H,W], uint8 or [0,1])."""
    a = _to_uint_hwc(img)
    bg, bg_name = background_model(a)
    diff = np.linalg.norm(a - bg, axis=-1)
    if diff.max() < 50:
        return Detection(None, None, bg_name, 0, {"max_diff": float(diff.max())})
    core = diff >= 0.75 * diff.max()
    fg = np.median(a[core], axis=0)
    color = _nearest(fg, _FG, _FG_NAMES)
    d = (fg - bg)
    t = ((a - bg) * d).sum(-1) / np.maximum((d * d).sum(-1), 1e-6)
    mask = t > 0.5
    comps = _components(mask)
    comps = [c for c in comps if len(c) >= 3]
    if not comps:
        return Detection(color, None, bg_name, 0, {})
    f = shape_features(comps[0], t)
    f["points"] = count_points(comps[0])
    f["largest_share"] = len(comps[0]) / max(int(mask.sum()), 1)  # < 1: other foreground specks (noise)
    big = [c for c in comps if len(c) >= 0.3 * len(comps[0])]
    f["fg_rgb"] = [float(v) for v in fg]
    return Detection(color, classify_shape(f), bg_name, len(big), f)


def is_clean_star(detection: Detection, min_area: float = 40.0) -> bool:
    """A stricter star test than ``detection.shape == "star"`` for images an optimiser drew: the largest
    shape is a star by the solidity rule, has exactly 5 points (:func:`count_points`), covers at least
    ``min_area`` pixels, and holds at least 90% of the foreground pixels (no noise, no fragments)."""
    f = detection.features
    return (detection.shape == "star" and f.get("points") == 5 and float(f.get("area", 0.0)) >= min_area
            and float(f.get("largest_share", 0.0)) >= 0.9)


def detect_batch(images) -> list[Detection]:
    """``images``: torch or numpy [B,3,H,W] in [0,1] (or a list of HWC arrays / PIL images)."""
    return [detect(np.asarray(im) if not hasattr(im, "detach") else im) for im in images]


__all__ = ["Detection", "detect", "detect_batch", "classify_shape", "count_points", "is_clean_star", "shape_features", "SHAPES"]
