"""Evaluate the bundled tiny model with the deterministic detector and write a sample grid.

    python -m rlr_core.tiny.evaluate [--model assets/tiny-shapes] [--guidance G] [--steps N]
                                     [--grid assets/tiny-shapes/samples.png] [--json out.json]

Prompts are the simple ``a {color} {shape} on a {background} background`` captions for every
colour x shape x background in ``data.eval_prompts()``; noise seeds are held out (>= HOLDOUT_START).
Prints the colour accuracy per colour, the shape accuracy per shape and the background accuracy.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from .data import COLORS, HOLDOUT_START, SHAPES, caption_for, eval_prompts
from .detect import detect

GRID_BACKGROUNDS = ("white", "black", "yellow")


def grid_prompts():
    """8 rows (colours) x 12 columns (4 shapes x 3 backgrounds; a clash becomes gray)."""
    rows = []
    for color in COLORS:
        for bg in GRID_BACKGROUNDS:
            for shape in SHAPES:
                rows.append(caption_for(color, shape, "gray" if bg == color else bg))
    return rows


def _sampler(model: str, use_chain: bool, num_steps, guidance, eta):
    """Returns (fn(prompts, seeds) -> images [B,3,H,W] in [0,1], defaults)."""
    if use_chain:
        from rlr_core.models import load_model
        from rlr_core.sampling import sample

        meta_path = Path(model) / "rlr_studio.json"
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        chain = load_model(model, num_steps=num_steps, guidance_scale=guidance,
                           eta=meta.get("eta", 1.0) if eta is None else eta)
        used = {"num_steps": chain.num_steps, "guidance_scale": chain.guidance_scale, "eta": chain.eta,
                "path": "load_model + rlr_core.sampling.sample"}
        return (lambda p, s: sample(chain, p, seeds=s)), used
    from .model import load, sample_ddim

    unet, te, tok, sched, meta = load(model)
    steps = num_steps or meta["num_steps"]
    g = meta["guidance_scale"] if guidance is None else guidance
    e = meta["eta"] if eta is None else eta
    return (lambda p, s: sample_ddim(unet, te, tok, sched, p, s, steps, g, e)), {"num_steps": steps, "guidance_scale": g, "eta": e}


def evaluate(sample_fn, n_per_prompt: int = 1, batch: int = 64, seed0: int = HOLDOUT_START):
    items = eval_prompts(n_per_prompt)
    seeds = [seed0 + i for i in range(len(items))]
    imgs = []
    for i in range(0, len(items), batch):
        imgs.append(sample_fn([it[0] for it in items[i:i + batch]], seeds[i:i + batch]).float().cpu())
    imgs = torch.cat(imgs)
    acc = defaultdict(lambda: [0, 0])
    for im, (prompt, color, shape, bg) in zip(imgs, items):
        d = detect(im)
        for key, ok in ((f"color/{color}", d.color == color), (f"shape/{shape}", d.shape == shape),
                        (f"background/{bg}", d.background == bg), ("color/all", d.color == color),
                        ("shape/all", d.shape == shape), ("background/all", d.background == bg)):
            acc[key][0] += int(ok)
            acc[key][1] += 1
    return {k: round(v[0] / v[1], 3) for k, v in sorted(acc.items())}, imgs, items


def save_grid(images: torch.Tensor, cols: int, path, scale: int = 3, pad: int = 2):
    from PIL import Image

    arr = (images.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    n, h, w, _ = arr.shape
    rows = (n + cols - 1) // cols
    H, W = h * scale + pad, w * scale + pad
    canvas = np.full((rows * H + pad, cols * W + pad, 3), 200, dtype=np.uint8)
    for i, a in enumerate(arr):
        r, c = divmod(i, cols)
        big = a.repeat(scale, 0).repeat(scale, 1)
        canvas[pad + r * H: pad + r * H + h * scale, pad + c * W: pad + c * W + w * scale] = big
    Image.fromarray(canvas).save(path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="assets/tiny-shapes")
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--eta", type=float, default=None)
    p.add_argument("--n", type=int, default=1, help="samples per eval prompt")
    p.add_argument("--grid", default=None, help="sample grid PNG (default <model>/samples.png; '' = none)")
    p.add_argument("--json", default=None)
    p.add_argument("--chain", action="store_true", help="sample through load_model + rlr_core.sampling")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    fn, used = _sampler(args.model, args.chain, args.steps, args.guidance, args.eta)
    t0 = time.time()
    acc, imgs, items = evaluate(fn, args.n)
    secs = time.time() - t0
    result = {"model": args.model, "sampling": used, "images": len(items), "seconds": round(secs, 1),
              "accuracy": acc}
    print(json.dumps(result, indent=2))
    grid = f"{args.model}/samples.png" if args.grid is None else args.grid
    if grid:
        prompts = grid_prompts()
        seeds = [HOLDOUT_START + 500_000 + i for i in range(len(prompts))]
        save_grid(fn(prompts, seeds).float().cpu(), cols=len(SHAPES) * len(GRID_BACKGROUNDS), path=grid)
        print(f"wrote {grid}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
