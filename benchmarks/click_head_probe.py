"""Offline probe of the click head: what 20 simulated rounds of clicks teach it, before any training.

Images come from the untrained tiny model (T=20, the click benchmark's four prompts, cycled over the seeds).
A simulated user clicks, in each of 20 rounds of 4, the image with the most of an attribute (red, left,
spiky; with ``--attributes`` also boxy and size: ``benchmarks/clicks.py``'s ``Attribute``); a
``PreferenceReward`` head is fitted on those clicks and judged on held-out images of the same draw:

* **within-prompt accuracy**: the share of held-out pairs *of the same prompt* that the head orders as the
  attribute does. That is what training can use: the model changes the images of a prompt, not which prompt
  was asked for. 0.5 is chance.
* **alignment**: the mean cosine between the head's and the attribute's gradients with respect to the
  pixels of 32 held-out images (red and left). The detector's attributes have no gradient; for ``spiky`` the
  alignment is with the gradient of tiny-clip's score for the prompt with "star" for "shape" (a reward that does
  move the model toward stars: benchmarks/results/clicks/tiny-clip-grid), what the head's gradient must resemble
  for the clicks to make stars.

Spiky is clicked for on the prompts that name no shape (``benchmarks/clicks.py``'s ``ATTRIBUTE_PROMPTS``), the
others on the four prompts. ``--selections`` adds the head's ``selection`` (how it weighs its feature groups).

Rounds are ``mixed`` (the four prompts in every round, as the click benchmark's first sessions),
``one-prompt`` (four different images of one prompt, the prompt changing every round) or ``twins`` (one prompt,
two different images each shown twice: what a round of the default ``rlr`` shows, whose noise groups make near
twins, benchmarks/click_round_spread.py; here the twins are exact copies).

    python benchmarks/click_head_probe.py --cache /tmp/click_probe_images.pt
    python benchmarks/click_head_probe.py --cache /tmp/click_probe_images.pt --layouts twins \
        --features tiny-clip+grid tiny-clip+grid+colour --selections all cross-validated
    python benchmarks/click_head_probe.py --cache /tmp/click_probe_images.pt --layouts twins \
        --features tiny-clip+grid+colour --l2 0.3 --colour-caps none 3 1
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROUNDS, TRAIN, HELD_OUT, DRAWS = 20, 80, 160, 3
LAYOUTS = ("mixed", "one-prompt", "twins")


def sample_draws(cache: Path | None, prompt_set: str = "shapes-named") -> list[tuple]:
    """``DRAWS`` sets of TRAIN + HELD_OUT images ([N, 3, H, W] in [0, 1], prompts), from fixed seeds, of the
    prompt set (``benchmarks/clicks.py``'s ``PROMPT_SETS``; the cache of another set than the default is kept
    beside ``cache`` with the set's name)."""
    import numpy as np
    import torch

    from benchmarks.clicks import DEFAULT_PROMPT_SET, PROMPT_SETS, Attribute, _trainer

    prompt_list = PROMPT_SETS[prompt_set]
    if cache is not None and prompt_set != DEFAULT_PROMPT_SET:
        cache = cache.with_name(f"{cache.stem}-{prompt_set}{cache.suffix}")
    if cache is not None and cache.exists():
        return torch.load(cache)
    draws = []
    with tempfile.TemporaryDirectory() as tmp:
        trainer = _trainer(Attribute("red"), 1, 1, tmp)
        for draw in range(DRAWS):
            seeds = list(range(10_000 * (draw + 1), 10_000 * (draw + 1) + TRAIN + HELD_OUT))
            prompts = [prompt_list[i % 4] for i in range(len(seeds))]
            pil, _ = trainer.evaluate(seeds, prompts)
            images = torch.stack([torch.from_numpy(np.array(p)).permute(2, 0, 1).float() / 255 for p in pil])
            draws.append((images, prompts))
    if cache is not None:
        torch.save(draws, cache)
    return draws


def round_indices(layout: str, index: int) -> list[int]:
    """The training images of round ``index`` (images i have prompt i % 4)."""
    if layout == "mixed":
        return list(range(4 * index, 4 * index + 4))
    prompt, block = index % 4, index // 4  # 5 rounds per prompt, 4 images each
    shown = [prompt + 4 * (4 * block + j) for j in range(4)]
    return shown[:2] * 2 if layout == "twins" else shown


def fit_head(images, prompts, attribute, layout: str, features: str, l2: float, folder: str, selection: str = "auto",
             scaling: str = "per-feature", group_weights: tuple[float, ...] | None = None, colour_cap: float | None = None):
    """The head fitted on ROUNDS rounds of clicks for the attribute's best image."""
    import torch

    from rlr_core.rewards.preference import ClickLog, PreferenceReward, to_uint8

    values = attribute(images, prompts).detach()
    log = ClickLog(Path(folder) / "clicks.jsonl")
    for index in range(ROUNDS):
        shown = round_indices(layout, index)
        best = int(torch.argmax(values[shown]))
        log.append_round(f"r{index}", [prompts[i] for i in shown], index, to_uint8(images[shown]),
                         [j == best for j in range(4)], None, "learned")
    options = {"group_weight_choices": tuple(group_weights)} if group_weights else {}
    return PreferenceReward(log, features=features, l2=l2, selection=selection, scaling=scaling, colour_cap=colour_cap,
                            **options)


def within_prompt_accuracy(head, images, prompts, attribute) -> float:
    """The share of pairs of same-prompt images that the head's scores order as the attribute does."""
    import torch

    with torch.no_grad():
        scores = head(images, prompts).double()
    return within_prompt_pair_accuracy(scores, attribute(images, prompts).detach().double(), prompts)


def within_prompt_pair_accuracy(values, target, prompts: list[str]) -> float:
    """The share of pairs of images of the same prompt (with different ``target``) that ``values`` orders as
    ``target`` does."""
    import torch

    same = torch.tensor([[a == b for b in prompts] for a in prompts])
    ordered = (target[:, None] - target[None]).abs() > 1e-6
    agree = (values[:, None] - values[None]) * (target[:, None] - target[None]) > 0
    return float(agree[same & ordered].float().mean())


class StarScore:
    """The reference gradient of the spiky attribute (for ``gradient_alignment``): the bundled tiny-clip's CLIP score
    of each image for its prompt with "star" for "shape" (the ``clip`` reward)."""

    differentiable = True

    def __init__(self) -> None:
        from rlr_core.rewards import get_reward

        self.clip = get_reward("clip", clip_model="tiny-clip")

    def __call__(self, images, prompts):
        return self.clip(images, [p.replace(" shape ", " star ") for p in prompts])


def main(argv: list[str] | None = None) -> None:
    from benchmarks.clicks import ALL_ATTRIBUTES, ATTRIBUTE_PROMPTS, DEFAULT_PROMPT_SET, Attribute, gradient_alignment
    from rlr_core.rewards.preference_head import SCALINGS, SELECTIONS

    p = argparse.ArgumentParser(description="Offline probe of the click head (docs/rewards.md, preference).")
    p.add_argument("--cache", type=Path, default=None, help="keep the sampled images here (and reuse them)")
    p.add_argument("--features", nargs="+", default=["layout", "tiny-clip", "pixels"])
    p.add_argument("--l2", type=float, default=1e-2)
    p.add_argument("--attributes", nargs="+", default=["red", "left", "spiky"], choices=ALL_ATTRIBUTES)
    p.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))
    p.add_argument("--selections", nargs="+", default=["auto"], choices=list(SELECTIONS))
    p.add_argument("--scalings", nargs="+", default=["per-feature"], choices=list(SCALINGS))
    p.add_argument("--group-weights", nargs="+", type=float, default=None,
                   help="the weights a cross-validated head may give its groups besides the first (default: the head's)")
    p.add_argument("--colour-caps", nargs="+", default=["none"],
                   help="the head's colour_cap: numbers, or none (uncapped); the table adds the colour scale it applied")
    args = p.parse_args(argv)
    caps = [None if c == "none" else float(c) for c in args.colour_caps]
    import numpy as np
    import torch

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "2"))))
    start = time.time()
    print(f"{DRAWS} draws of {TRAIN} + {HELD_OUT} images\n")
    print("| attribute | features | selection | scaling | colour cap | rounds | within-prompt accuracy (per draw) | alignment "
          "| colour scale (per draw) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.attributes:
        attribute = Attribute(name)
        reference = StarScore() if name == "spiky" else attribute
        draws = sample_draws(args.cache, ATTRIBUTE_PROMPTS.get(name, DEFAULT_PROMPT_SET))
        for features in args.features:
            for selection, scaling, cap in [(sel, sc, c) for sel in args.selections for sc in args.scalings for c in caps]:
                for layout in args.layouts:
                    accuracy, alignment, scales = [], [], []
                    for images, prompts in draws:
                        with tempfile.TemporaryDirectory() as folder:
                            head = fit_head(images[:TRAIN], prompts[:TRAIN], attribute, layout, features, args.l2, folder,
                                            selection, scaling, args.group_weights, cap)
                            scales.append(head.colour_scale)
                            test, test_prompts = images[TRAIN:], prompts[TRAIN:]
                            accuracy.append(within_prompt_accuracy(head, test, test_prompts, attribute))
                            cosine = gradient_alignment(head, reference, test[:32], test_prompts[:32])
                            if cosine is not None:
                                alignment.append(cosine)
                    cosine = f"{np.mean(alignment):+.2f}" if alignment else "-"
                    print(f"| {name} | {features} | {head.selection} | {scaling} | {cap if cap is not None else 'none'} | "
                          f"{layout} | {np.mean(accuracy):.2f} ({', '.join(f'{a:.2f}' for a in accuracy)}) | {cosine} | "
                          f"{', '.join(f'{v:.2f}' for v in scales)} |", flush=True)
    print(f"\n{time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
