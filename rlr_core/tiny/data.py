"""Procedural, seeded captioned images of simple shapes (the training data of the bundled tiny model).

Every sample is a pure function of its integer seed (``make_sample(seed)``): shape, colour, size,
position, count and background are drawn from ``numpy.random.default_rng(seed)``, drawn with PIL at
4x resolution and box-downsampled to ``size`` (anti-aliased). Training uses seeds below
``HOLDOUT_START``; evaluation uses seeds from ``HOLDOUT_START`` on (never seen in training).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star")
GENERIC_SHAPE = "shape"  # the word of a caption that names no particular shape ("a red shape on a white background")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars", "blob": "blobs",
           GENERIC_SHAPE: "shapes"}
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 165, 50),
    "blue": (30, 70, 225),
    "yellow": (250, 220, 20),
    "orange": (255, 135, 0),
    "purple": (140, 40, 180),
    "black": (15, 15, 15),
    "white": (245, 245, 245),
}
GRAY = (128, 128, 128)
# colours that may be a plain/gradient background besides white, black and gray
BG_COLORS = ("red", "green", "blue", "yellow", "orange", "purple")
BACKGROUND_KINDS = ("white", "black", "gray", "color", "gradient")
HOLDOUT_START = 10_000_000
IMAGE_SIZE = 32
_SS = 4  # supersampling factor


@dataclass(frozen=True)
class ShapeSpec:
    shape: str
    color: str
    cx: float  # centre in [0, 1] image coordinates
    cy: float
    r: float  # circumradius-like half extent in [0, 1] units
    points: tuple[tuple[float, float], ...] = ()  # BLOB only: (angle, radius factor) of each vertex


@dataclass(frozen=True)
class Sample:
    seed: int
    caption: str
    shape: str
    color: str
    background: str  # "white", "black", "gray", a colour name, or "<colour> gradient"
    count: int
    size_word: str  # "", "big", "small"
    shapes: tuple[ShapeSpec, ...]


def background_rgb(background: str) -> tuple[int, int, int]:
    """The mean-free reference colour of a background name (gradients: their top colour)."""
    if background == "gray":
        return GRAY
    name = background.replace(" gradient", "")
    return COLORS[name]


def caption_for(color: str, shape: str, background: str, count: int = 1, size_word: str = "") -> str:
    if count == 1:
        noun = f"{size_word + ' ' if size_word else ''}{color} {shape}"
        lead = f"a {noun}"
    else:
        words = {2: "two", 3: "three"}[count]
        lead = f"{words} {color} {PLURALS[shape]}"
    return f"{lead} on a {background} background"


def sample_spec(seed: int) -> Sample:
    """Draw the content of image ``seed`` (no pixels)."""
    rng = np.random.default_rng([int(seed), 7919])
    shape = SHAPES[rng.integers(len(SHAPES))]
    color = list(COLORS)[rng.integers(len(COLORS))]
    kind = rng.choice(BACKGROUND_KINDS, p=[0.25, 0.15, 0.15, 0.25, 0.20])
    if kind == "color" or kind == "gradient":
        choices = [c for c in BG_COLORS if c != color]
        bgc = choices[rng.integers(len(choices))]
        background = bgc if kind == "color" else f"{bgc} gradient"
        if kind == "gradient" and color == "white":
            background = bgc  # white on a colour->white gradient would vanish at the bottom
    else:
        background = str(kind)
        if background == color:
            background = "gray"
    u = rng.random()
    count = 1 if u < 0.85 else 2
    size_word = ""
    specs: list[ShapeSpec] = []
    if count == 1:
        v = rng.random()
        # sizes are large for 32x32 on purpose: corners and star points need pixels to be learnable
        if v < 0.15:
            size_word, r = "big", rng.uniform(0.42, 0.46)
        elif v < 0.25:
            size_word, r = "small", rng.uniform(0.18, 0.22)
        else:
            r = rng.uniform(0.30, 0.40)
        margin = r + 0.04
        cx, cy = rng.uniform(margin, 1 - margin, size=2) if margin < 0.5 else (0.5, 0.5)
        specs.append(ShapeSpec(shape, color, float(cx), float(cy), float(r)))
    else:
        r = rng.uniform(0.15, 0.2)
        margin = r + 0.04
        for _ in range(100):
            p = rng.uniform(margin, 1 - margin, size=4)
            if math.hypot(p[0] - p[2], p[1] - p[3]) > 2 * r + 0.08:
                break
        specs = [ShapeSpec(shape, color, float(p[0]), float(p[1]), float(r)),
                 ShapeSpec(shape, color, float(p[2]), float(p[3]), float(r))]
    return Sample(int(seed), caption_for(color, shape, background, count, size_word), shape, color,
                  background, count, size_word, tuple(specs))


BLOB = "blob"  # an irregular polygon: not one of SHAPES (tiny-clip's robust training only, never the diffusion data)


def blob_points(rng: np.random.Generator) -> tuple[tuple[float, float], ...]:
    """Vertices of a random irregular polygon: 5-9 vertices at sorted random angles (at least 0.35 rad
    apart), radius factors uniform in [0.25, 1] with at least one below 0.6: spiky or lumpy, never one of
    the regular SHAPES."""
    n = int(rng.integers(5, 10))
    for _ in range(100):
        angles = np.sort(rng.uniform(0.0, 2 * math.pi, size=n))
        gaps = np.diff(np.concatenate([angles, angles[:1] + 2 * math.pi]))
        if gaps.min() > 0.35:
            break
    factors = rng.uniform(0.25, 1.0, size=n)
    first, second = rng.choice(n, size=2, replace=False)
    factors[first] = 1.0  # the extent is r
    factors[second] = min(factors[second], 0.6)
    return tuple((float(a), float(f)) for a, f in zip(angles, factors))


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        h = r * 0.82
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        cy = cy + r * 0.18  # centre the bounding box
        return [(cx + r * math.cos(a), cy + r * math.sin(a))
                for a in (-math.pi / 2, -math.pi / 2 + 2 * math.pi / 3, -math.pi / 2 + 4 * math.pi / 3)]
    if shape == "star":
        cy = cy + r * 0.1
        pts = []
        for i in range(10):
            a = -math.pi / 2 + i * math.pi / 5
            rr = r if i % 2 == 0 else r * 0.45
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        return pts
    raise ValueError(shape)


def render(sample: Sample, size: int = IMAGE_SIZE) -> np.ndarray:
    """Pixels of ``sample`` as uint8 [size, size, 3]."""
    S = size * _SS
    if sample.background.endswith(" gradient"):
        top = np.array(COLORS[sample.background.split()[0]], dtype=np.float32)
        bottom = np.array(COLORS["white"], dtype=np.float32)
        t = np.linspace(0.0, 1.0, S, dtype=np.float32)[:, None]
        rows = top[None] * (1 - t) + bottom[None] * t
        arr = np.broadcast_to(rows[:, None, :], (S, S, 3)).round().astype(np.uint8)
        img = Image.fromarray(np.ascontiguousarray(arr))
    else:
        img = Image.new("RGB", (S, S), background_rgb(sample.background))
    draw = ImageDraw.Draw(img)
    for sp in sample.shapes:
        fill = COLORS[sp.color]
        cx, cy, r = sp.cx * S, sp.cy * S, sp.r * S
        if sp.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif sp.shape == BLOB:
            draw.polygon([(cx + r * f * math.cos(a), cy + r * f * math.sin(a)) for a, f in sp.points], fill=fill)
        else:
            draw.polygon(_polygon(sp.shape, cx, cy, r), fill=fill)
    img = img.resize((size, size), Image.BOX)
    return np.array(img, dtype=np.uint8)


def generic_caption(sample: Sample) -> str:
    """The sample's caption with its shape word replaced by ``GENERIC_SHAPE`` ("a big red shape on a white
    background", "two red shapes on a gray background"): a caption any of the shapes fits."""
    return caption_for(sample.color, GENERIC_SHAPE, sample.background, sample.count, sample.size_word)


def make_sample(seed: int, size: int = IMAGE_SIZE) -> tuple[np.ndarray, Sample]:
    sample = sample_spec(seed)
    return render(sample, size), sample


def make_batch(seeds, size: int = IMAGE_SIZE):
    """(images float32 [B,3,H,W] in [0,1], captions, samples) for a list of seeds."""
    imgs, caps, samples = [], [], []
    for s in seeds:
        arr, sp = make_sample(int(s), size)
        imgs.append(arr)
        caps.append(sp.caption)
        samples.append(sp)
    x = np.stack(imgs).astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    return x, caps, samples


def eval_prompts(n_per_pair: int = 1, backgrounds=("white", "black", "gray", "blue", "yellow gradient")):
    """Simple single-shape prompts per (colour, shape) for evaluation: list of (prompt, color, shape, bg)."""
    out = []
    for color in COLORS:
        for shape in SHAPES:
            for bg in backgrounds:
                if bg == color or bg.startswith(color):
                    continue
                if color == "white" and bg.endswith("gradient"):
                    continue
                for _ in range(n_per_pair):
                    out.append((caption_for(color, shape, bg), color, shape, bg))
    return out
