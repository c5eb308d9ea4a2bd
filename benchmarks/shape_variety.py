"""Do a model's drawings of one prompt differ in shape? (What a click session needs to teach shape.)

Samples a model (the bundled tiny model, or an exported folder such as one fine-tuned with
``python -m rlr_core.tiny.train --init assets/tiny-shapes --generic-shape 0.25``) on the click benchmark's
shape-free prompts ("a blue shape on a white background", ...) and on one prompt that names its shape, and prints
per prompt the tiny detector's shape counts, the mean spikiness (``benchmarks.clicks.Attribute("spiky")``) and the
within-prompt pair accuracy of the layout head's outline feature (edge energy per unit of content) against
spikiness: the most a click head using that feature alone could predict (0.5 is chance).

    python benchmarks/shape_variety.py --model tiny --images 32
    python benchmarks/shape_variety.py --model /tmp/tiny-generic --images 32 --grid /tmp/shape-variety.png
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

NAMED_PROMPT = "a blue circle on a white background"


def main(argv: list[str] | None = None) -> None:
    import torch

    from benchmarks.click_head_probe import within_prompt_pair_accuracy
    from benchmarks.clicks import SHAPE_FREE_PROMPTS, Attribute
    from rlr_core import load_model, sample
    from rlr_core.rewards.preference_head import layout_features
    from rlr_core.tiny.detect import detect_batch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="'tiny' or an exported model's folder")
    parser.add_argument("--images", type=int, default=32, help="images per prompt (seeds 0..)")
    parser.add_argument("--grid", type=Path, default=None, help="write the first 16 images of each prompt here")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "2"))))
    chain = load_model(args.model, device="cpu")
    prompts = [*SHAPE_FREE_PROMPTS, NAMED_PROMPT]
    print(f"model {args.model}, {args.images} images per prompt\n")
    print("| prompt | detector's shapes | mean spikiness | outline feature's within-prompt pair accuracy |")
    print("|---|---|---|---|")
    rows, spikes, outlines, shape_free = [], [], [], []  # the last three: of the shape-free prompts' images
    for prompt in prompts:
        images = sample(chain, [prompt] * args.images, seeds=list(range(args.images)))
        spiky = Attribute("spiky")(images, [prompt] * args.images).double()
        shapes = Counter(d.shape or "none" for d in detect_batch(images.float()))
        outline = layout_features(images)[:, -1].double()
        accuracy = within_prompt_pair_accuracy(outline, spiky, [prompt] * args.images)
        counts = ", ".join(f"{name} {count}" for name, count in shapes.most_common())
        print(f"| {prompt} | {counts} | {float(spiky.mean()):.3f} | {accuracy:.2f} |", flush=True)
        rows.append(images[:16])
        if prompt != NAMED_PROMPT:
            spikes.append(spiky)
            outlines.append(outline)
            shape_free += [prompt] * args.images
    accuracy = within_prompt_pair_accuracy(torch.cat(outlines), torch.cat(spikes), shape_free)
    print(f"\nshape-free prompts together: outline feature's within-prompt pair accuracy {accuracy:.2f}")
    if args.grid is not None:
        import torch.nn.functional as F
        from torchvision.utils import save_image

        save_image(F.interpolate(torch.cat(rows), scale_factor=2, mode="nearest"), args.grid, nrow=16)
        print(f"grid: {args.grid}")


if __name__ == "__main__":
    main()
