"""Which outline feature tracks the click benchmark's "spiky" attribute on the tiny model's own drawings?

Samples the base model (its LoRA untouched) on the click benchmark's four prompts and prints the correlation of
the tiny detector's spikiness (1 - solidity, ``benchmarks.clicks.Attribute("spiky")``) with the layout head's
outline feature (edge energy per unit of content, the last of ``layout_features``), with the amount of content,
and with two scale-free variants of the outline measure: over all images and within each prompt. Then how much the
drawings of one prompt differ in spikiness at all (quantiles per prompt, against the model's own stars) and the
within-prompt pair accuracy of each candidate: the share of same-prompt pairs it orders as spikiness does, the
most a click head using that feature alone could predict (0.5 is chance).

    python benchmarks/click_shape_features.py --images 96
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def correlation(a, b) -> float:
    """Pearson correlation of two 1-d tensors."""
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm() + 1e-12))


def outline_candidates(images) -> dict:
    """The candidate features of ``images`` by name (from ``layout_features``' last two columns)."""
    from rlr_core.rewards.preference_head import layout_features

    features = layout_features(images)
    edges_per_content, content = features[:, -1], features[:, -2]
    return {"edges / content (the head's)": edges_per_content, "content": content,
            "edges / sqrt(content)": edges_per_content * content.sqrt(),
            "edges^2 / content": edges_per_content ** 2 * content}


def main(argv: list[str] | None = None) -> None:
    import torch

    from benchmarks.click_head_probe import within_prompt_pair_accuracy
    from benchmarks.clicks import CLICK_PROMPTS, Attribute
    from rlr_core import load_model, sample

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96, help="how many images (the four prompts in turn, seeds 0..)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    chain = load_model("tiny", device="cpu")
    prompts = [CLICK_PROMPTS[i % len(CLICK_PROMPTS)] for i in range(args.images)]
    images = sample(chain, prompts, seeds=list(range(args.images)))
    spiky = Attribute("spiky")(images, prompts)
    candidates = outline_candidates(images)
    print(f"spiky over {args.images} images: mean {float(spiky.mean()):.3f}, std {float(spiky.std()):.3f}")
    print("| feature | correlation with spiky, all images | " + " | ".join(p.split(" on ")[0] for p in CLICK_PROMPTS) + " |")
    print("|---|---|" + "---|" * len(CLICK_PROMPTS))
    for name, values in candidates.items():
        within = [correlation(values[i::len(CLICK_PROMPTS)], spiky[i::len(CLICK_PROMPTS)]) for i in range(len(CLICK_PROMPTS))]
        print(f"| {name} | {correlation(values, spiky):+.2f} | " + " | ".join(f"{c:+.2f}" for c in within) + " |")
    stars = [p.replace("circle", "star").replace("square", "star") for p in CLICK_PROMPTS]
    star_images = sample(chain, [stars[i % len(stars)] for i in range(16)], seeds=list(range(16)))
    star_spiky = Attribute("spiky")(star_images, stars)
    print(f"\nspikiness of the model's own stars (16 images, the same colours; 10% / 50% / 90%): "
          f"{' / '.join(f'{float(q):.3f}' for q in star_spiky.quantile(torch.tensor([0.1, 0.5, 0.9])))}")
    print("spikiness per prompt (10% / 50% / 90% / max):")
    for i, prompt in enumerate(CLICK_PROMPTS):
        values = spiky[i::len(CLICK_PROMPTS)]
        print(f"  {prompt}: " + " / ".join(f"{float(q):.3f}" for q in values.quantile(torch.tensor([0.1, 0.5, 0.9])))
              + f" / {float(values.max()):.3f}")
    print("within-prompt pair accuracy (0.5 = chance): " + ", ".join(
        f"{name} {within_prompt_pair_accuracy(values, spiky, prompts):.2f}" for name, values in candidates.items()))


if __name__ == "__main__":
    main()
