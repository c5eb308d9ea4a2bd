"""How the star demo's rewards rank the images its runs drift to: tiny-clip scores of rendered images.

    python benchmarks/star_landscape.py [--tiny-clip assets/tiny-clip]

Prints one row per image kind: a rendered red star, circle and square (half extent 0.35, on white),
small ones (0.10-0.12), plain pale canvases (white, pink, lavender, pale yellow), and uniform pixel
noise (mean of 16). Columns: 100 x cos to "a red star on a white background", to "a red circle on a
white background" and to "a white background", then the star preset's reward, log p(star caption)
among the preset's captions (``benchmarks/star_demo.yaml``: 26, the 4 "small" ones included), and the same with the 4 "small"
captions added ("a small red circle on a white background", ... : ``SMALL_CAPTIONS``). A reward the
demo could climb to stars would rank the star far above everything else and the circle below the rest.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STAR, CIRCLE, EMPTY = "a red star on a white background", "a red circle on a white background", "a white background"
SMALL_CAPTIONS = [f"a small red {shape} on a white background" for shape in ("circle", "square", "triangle", "star")]


def rendered(shape: str, r: float) -> torch.Tensor:
    from rlr_core.tiny.data import Sample, ShapeSpec, render

    sample = Sample(0, "", shape, "red", "white", 1, "", (ShapeSpec(shape, "red", 0.5, 0.5, r),))
    return torch.from_numpy(render(sample)).permute(2, 0, 1).float()[None] / 255.0


def canvas(rgb: tuple[float, float, float]) -> torch.Tensor:
    return torch.tensor(rgb)[None, :, None, None].expand(1, 3, 32, 32).clone()


def image_kinds() -> dict[str, torch.Tensor]:
    """The rows: name -> images [N, 3, 32, 32] in [0, 1]."""
    return {
        "red star": rendered("star", 0.35),
        "red circle": rendered("circle", 0.35),
        "red square": rendered("square", 0.35),
        "small red star (0.12)": rendered("star", 0.12),
        "small red circle (0.10)": rendered("circle", 0.10),
        "white canvas": canvas((0.96, 0.96, 0.96)),
        "pale pink canvas": canvas((0.97, 0.85, 0.90)),
        "pale lavender canvas": canvas((0.90, 0.85, 0.97)),
        "pale yellow canvas": canvas((0.97, 0.97, 0.80)),
        "uniform pixel noise (16)": torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0)),
    }


def landscape(tiny_clip: str | None = None) -> list[dict]:
    """One dict per image kind with the three cosines (x 100), the preset's reward and the preset's
    reward with :data:`SMALL_CAPTIONS` among the contrast captions."""
    from rlr_core.config import TrainConfig
    from rlr_core.tiny.clip_model import load_tiny_clip

    model = load_tiny_clip(tiny_clip)
    texts = model.encode_text([STAR, CIRCLE, EMPTY])
    options = dict(TrainConfig.from_file(ROOT / "benchmarks" / "star_demo.yaml").reward_options)
    contrast = {"preset_reward": list(options["contrast_texts"]), "with_small": list(options["contrast_texts"]) + SMALL_CAPTIONS}
    contrast_embeddings = {key: model.encode_text(captions) for key, captions in contrast.items()}
    rows = []
    with torch.no_grad():
        for name, images in image_kinds().items():
            img = model.encode_image(images)
            cos = 100.0 * (img @ texts.T).mean(0)
            row = {"image": name, "cos_star": float(cos[0]), "cos_circle": float(cos[1]), "cos_empty": float(cos[2])}
            for key, others in contrast_embeddings.items():  # the clip reward's classification (contrast_texts)
                logits = float(options["scale"]) * torch.cat([img @ texts[:1].T, img @ others.T], dim=1)
                row[key] = float(torch.log_softmax(logits, dim=1)[:, 0].mean())
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny-clip", default="", help="a tiny-clip folder (default: the bundled assets/tiny-clip)")
    args = parser.parse_args(argv)
    rows = landscape(args.tiny_clip or None)
    print("| image | 100 x cos 'a red star ...' | 100 x cos 'a red circle ...' | 100 x cos 'a white background' "
          "| preset reward (log p star) | + 'small' captions |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['image']} | {row['cos_star']:.1f} | {row['cos_circle']:.1f} | {row['cos_empty']:.1f} "
              f"| {row['preset_reward']:.2f} | {row['with_small']:.2f} |")
    return rows


if __name__ == "__main__":
    main()
