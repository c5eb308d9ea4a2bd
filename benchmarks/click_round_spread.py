"""How different the images of one click round are: the default estimator's noise groups make twins.

A round of 4 is sampled by ``estimator.rollout`` like a training batch: with the default ``rlr`` the batch is
split in noise groups, and images i and i + 2 share their noise. This script samples rounds of one prompt
(as the benchmark's and the app's rounds are) from the untrained tiny model of benchmarks/clicks.py's session
(LoRA drawn from the seed) and prints, for pairs of images that share noise ("twins") and pairs that do not,
the mean RMS pixel distance and the mean absolute difference of each attribute the simulated users click for, and
the share of pairs whose attribute is the same (a difference below ``TIE``: a pair the user's click cannot order, so
the head's prediction of it is a coin flip). ``--prompts``: the benchmark's prompt set (shape-free for the shape).

    python benchmarks/click_round_spread.py --rounds 8
    python benchmarks/click_round_spread.py --rounds 16 --prompts shape-free
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TIE = 0.005  # two images whose attribute differs by less are "the same" to a simulated user


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Pixel and attribute spread inside click rounds (benchmarks/clicks.py).")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--prompts", default="shapes-named", choices=["shapes-named", "shape-free"])
    args = p.parse_args(argv)
    import torch

    from benchmarks.clicks import ATTRIBUTES, PROMPT_SETS, Attribute, _trainer
    from rlr_core.estimators.base import grouped_prompts

    torch.set_num_threads(1)
    attributes = {name: Attribute(name) for name in ATTRIBUTES}
    with tempfile.TemporaryDirectory() as tmp:
        trainer = _trainer(attributes["red"], args.seed, args.rounds, tmp)
        trainer.initialize_lora()
        groups = trainer.estimator.noise_groups(True)
        size = 4 // groups  # images i and i + size share noise
        spread = {kind: {"pixels": [], **{name: [] for name in ATTRIBUTES}} for kind in ("twins", "others")}
        for index in range(args.rounds):
            prompt_set = PROMPT_SETS[args.prompts]
            prompts = grouped_prompts([prompt_set[index % len(prompt_set)]], 4, groups)
            generator = torch.Generator().manual_seed(args.seed * 100_000 + index)
            rollout = trainer.estimator.rollout(trainer.chain, prompts, generator, differentiable_reward=True)
            images = rollout.images.detach().float().cpu()  # as a learned-mode round samples them
            del rollout
            values = {name: attribute(images, prompts) for name, attribute in attributes.items()}
            for a in range(4):
                for b in range(a + 1, 4):
                    kind = "twins" if (b - a) % size == 0 and groups > 1 else "others"
                    spread[kind]["pixels"].append(float((images[a] - images[b]).pow(2).mean().sqrt()))
                    for name in ATTRIBUTES:
                        spread[kind][name].append(abs(float(values[name][a] - values[name][b])))
    print(f"{args.rounds} rounds of 4 images of one prompt ({args.prompts}), rlr with {groups} noise groups "
          f"(seed {args.seed})")
    print("| pairs | count | RMS pixel distance | " + " | ".join(f"|{name} difference|" for name in ATTRIBUTES) + " | "
          + " | ".join(f"{name} the same" for name in ATTRIBUTES) + " |")
    print("|---|---|---|" + "---|" * 2 * len(ATTRIBUTES))
    for kind, table in spread.items():
        cells = " | ".join(f"{sum(v) / len(v):.3f}" for v in table.values())
        same = " | ".join(f"{sum(d < TIE for d in table[name]) / len(table[name]):.0%}" for name in ATTRIBUTES)
        print(f"| {kind} | {len(table['pixels'])} | {cells} | {same} |")


if __name__ == "__main__":
    main()
