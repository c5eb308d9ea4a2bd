"""Captions of the tiny shapes data for CLIP-style scoring: the captions that change one attribute of a
caption, the hard negatives of training, and the shape classes of tiny-clip's robust loss.

``contrast_captions`` gives the ``contrast_texts`` of a classification-style clip reward (the star demo
preset of the app); ``python -m rlr_core.tiny.clip_train`` trains tiny-clip with the rest. A leaf: it
needs only the data's vocabulary (:mod:`rlr_core.tiny.data`), no torch.
"""

from __future__ import annotations

import numpy as np

from .data import BG_COLORS, BLOB, COLORS, SHAPES, Sample, caption_for

__all__ = ["ATTRIBUTES", "EMPTY", "NOISE", "NOISE_CAPTION", "SHAPE_CLASSES", "backgrounds_for", "colors_for",
           "candidates", "empty_caption", "contrast_captions", "hard_negative", "shape_classes", "shape_caption",
           "shape_captions"]

ATTRIBUTES = ("color", "shape", "background")
EMPTY = "none"  # the shape of an image with no shape (background only)
NOISE = "noise"  # an image of pixel noise over a background, captioned NOISE_CAPTION
NOISE_CAPTION = "a noisy image"


def backgrounds_for(color: str) -> list[str]:
    """Every background the data pairs with a foreground ``color`` (never the same colour)."""
    out = [b for b in ("white", "black", "gray") if b != color]
    out += [b for b in BG_COLORS if b != color]
    if color != "white":
        out += [f"{b} gradient" for b in BG_COLORS if b != color]
    return out


def colors_for(background: str) -> list[str]:
    """Every foreground colour the data pairs with ``background``."""
    return [c for c in COLORS if background in backgrounds_for(c)]


def candidates(color: str, shape: str, background: str, attribute: str, count: int = 1, size_word: str = "") -> tuple[list[str], int]:
    """(captions varying ``attribute`` with the other two fixed, index of the true one)."""
    if attribute == "color":
        values = colors_for(background)
        caps = [caption_for(v, shape, background, count, size_word) for v in values]
        return caps, values.index(color)
    if attribute == "shape":
        caps = [caption_for(color, v, background, count, size_word) for v in SHAPES]
        return caps, SHAPES.index(shape)
    if attribute == "background":
        values = backgrounds_for(color)
        caps = [caption_for(color, shape, v, count, size_word) for v in values]
        return caps, values.index(background)
    raise ValueError(f"attribute={attribute!r} is not allowed; allowed values: {list(ATTRIBUTES)}")


def empty_caption(background: str) -> str:
    """The caption of an image with nothing on it: "a white background"."""
    return f"a {background} background"


def contrast_captions(color: str, shape: str, background: str, small: bool = False, extended: bool = False) -> list[str]:
    """Every caption that changes one attribute of "a {color} {shape} on a {background} background"
    (the other shapes, colours and backgrounds the data allows), then the empty caption: the
    ``contrast_texts`` of a classification-style clip reward (the star demo). ``small``: also the 4 shapes
    with the size word "small" ("a small red circle on a white background", ...), so that shrinking the
    shape does not pay: tiny-clip reads a tiny circle as "a red star" otherwise
    (``benchmarks/star_landscape.py``). ``extended``: also the
    empty canvases of the other plain backgrounds, the same with an irregular blob instead of the shape
    ("a red blob on a white background") and "a noisy image" (only meaningful for a tiny-clip trained
    with ``--blob`` / ``--noise``; the shipped weights were not)."""
    out = []
    for attribute in ("shape", "color", "background"):
        caps, truth = candidates(color, shape, background, attribute)
        out += [c for i, c in enumerate(caps) if i != truth]
    out.append(empty_caption(background))
    if small:
        out += [caption_for(color, s, background, 1, "small") for s in SHAPES]
    if extended:
        out += [empty_caption(b) for b in ("white", "black", "gray", *BG_COLORS) if b != background]
        out += [caption_for(color, BLOB, background), NOISE_CAPTION]
    return out


def hard_negative(sample: Sample, rng: np.random.Generator, shapes: tuple[str, ...] = SHAPES) -> str:
    """``sample``'s caption with one attribute (colour, shape among ``shapes`` or background) changed to
    another valid value (for an empty or noise image: a shape of its colour on its background)."""
    attr = ATTRIBUTES[int(rng.integers(3))]
    color, shape, bg = sample.color, sample.shape, sample.background
    if shape in (EMPTY, NOISE):
        return caption_for(color, SHAPES[int(rng.integers(len(SHAPES)))], bg)
    if attr == "color":
        others = [c for c in colors_for(bg) if c != color]
        color = others[int(rng.integers(len(others)))]
    elif attr == "shape":
        others = [s for s in shapes if s != shape]
        shape = others[int(rng.integers(len(others)))]
    else:
        others = [b for b in backgrounds_for(color) if b != bg]
        bg = others[int(rng.integers(len(others)))]
    return caption_for(color, shape, bg, sample.count, sample.size_word)


def shape_classes(blob: bool = False, noise: bool = False) -> tuple[str, ...]:
    """What the robust shape loss tells apart: the 4 shapes, the blob (``--blob``), the empty canvas and
    pixel noise (``--noise``). Without the two options: the classes of the shipped weights."""
    return (*SHAPES, *((BLOB,) if blob else ()), EMPTY, *((NOISE,) if noise else ()))


SHAPE_CLASSES = shape_classes()  # the shipped weights' robust-loss classes


def shape_caption(sample: Sample, shape: str) -> str:
    """``sample``'s caption with its shape replaced by ``shape`` (one of :func:`shape_classes`): the colour,
    background, count and size as drawn; "a white background" for EMPTY, "a noisy image" for NOISE."""
    if shape == EMPTY:
        return empty_caption(sample.background)
    if shape == NOISE:
        return NOISE_CAPTION
    if shape == BLOB:
        return caption_for(sample.color, BLOB, sample.background)
    return caption_for(sample.color, shape, sample.background, max(sample.count, 1), sample.size_word)


def shape_captions(samples: list[Sample], classes: tuple[str, ...] = SHAPE_CLASSES) -> list[str]:
    """For each sample, :func:`shape_caption` of each class: len(classes) x B texts, in the order of ``classes``."""
    return [shape_caption(sp, shape) for sp in samples for shape in classes]
