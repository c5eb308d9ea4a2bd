"""Seconds one refit of the click head takes after N rounds of clicks (what every click costs before its update).

Procedural rounds of 4 images (squares of random colours at random places on flat backgrounds, 64x64), one click
per round for the reddest; the head is ``PreferenceReward`` with the given features, its defaults unless ``--l2`` /
``--group-weights`` / ``--solver`` say otherwise. Features are computed once per image and cached by the head, as in a session,
so the figure is the fit: the cross-validation over the group weightings and the final fit. ``--compare-solver``:
also fit the same clicks with the other solver and print whether both heads chose the same group weights and how
far apart their weights are (relative norm of the difference) and their pair accuracies.

    python benchmarks/click_head_refit.py --rounds 20 50 100
    python benchmarks/click_head_refit.py --rounds 20 50 100 --solver lbfgs   # the solver before Newton's
    python benchmarks/click_head_refit.py --rounds 5 20 50 100 --repeats 1 --compare-solver
    python benchmarks/click_head_refit.py --rounds 20 50 100 --l2 0.01 --group-weights 0 1 3 10 --solver lbfgs   # the head before
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


def square_images(generator, n: int, size: int = 64):
    """n images of one square of a random colour at a random place on a random flat background."""
    import torch

    images = torch.rand(n, 3, 1, 1, generator=generator).expand(n, 3, size, size).clone()
    for i in range(n):
        x, y = (int(v) for v in torch.randint(0, size - size // 4, (2,), generator=generator))
        images[i, :, y:y + size // 4, x:x + size // 4] = torch.rand(3, 1, 1, generator=generator)
    return images


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Seconds per refit of the click head after N rounds (docs/rewards.md).")
    p.add_argument("--rounds", nargs="+", type=int, default=[20, 50, 100])
    p.add_argument("--features", default="tiny-clip+grid+colour")
    p.add_argument("--l2", type=float, default=None, help="the head's l2 (default: its own)")
    p.add_argument("--group-weights", nargs="+", type=float, default=None, help="the head's group_weight_choices")
    p.add_argument("--solver", default=None, help="the head's solver (default: its own)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--compare-solver", action="store_true", help="also fit with the other solver and compare the heads")
    args = p.parse_args(argv)
    import torch

    from rlr_core.rewards.preference import ClickLog, PreferenceReward, to_uint8

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    options = {"features": args.features, "l2": args.l2}
    if args.solver:
        options["solver"] = args.solver
    if args.group_weights:
        options["group_weight_choices"] = tuple(args.group_weights)
    compared = " the other solver: same group weights | relative weight difference | pair accuracy (this, other) |"
    print("| rounds | head | seconds per refit (each of the repeats) |" + (compared if args.compare_solver else ""))
    print("|---|---|---|" + ("---|---|---|" if args.compare_solver else ""))
    for rounds in args.rounds:
        generator = torch.Generator().manual_seed(rounds)
        with tempfile.TemporaryDirectory() as folder:
            log = ClickLog(Path(folder) / "clicks.jsonl")
            for index in range(rounds):
                images = square_images(generator, 4)
                best = int((images[:, 0] - images[:, 1:].mean(1)).mean((1, 2)).argmax())  # the reddest
                log.append_round(f"r{index}", ["a shape"] * 4, index, to_uint8(images), [j == best for j in range(4)],
                                 None, "learned")
            head = PreferenceReward(log, **options)  # the first fit also computes and caches the features
            seconds = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                head.refit()
                seconds.append(time.perf_counter() - start)
            comparison = ""
            if args.compare_solver:
                other = PreferenceReward(log, **{**options, "solver": "lbfgs" if head.solver == "newton" else "newton"})
                difference = float((head.weight - other.weight).norm() / head.weight.norm())
                comparison = (f" {'yes' if head.group_weights == other.group_weights else 'no'} | {difference:.1e} | "
                              f"{head.pair_accuracy():.3f}, {other.pair_accuracy():.3f} |")
        described = (f"l2 {head.l2:g}, group weights {', '.join(f'{w:g}' for w in head.group_weight_choices)}, "
                     f"{head.solver}")
        print(f"| {rounds} | {described} | {min(seconds):.2f} ({', '.join(f'{s:.2f}' for s in seconds)}) |{comparison}",
              flush=True)


if __name__ == "__main__":
    main()
