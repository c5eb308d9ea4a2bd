"""Seconds per click round (sample the round's images, click, refit the head, update the LoRA, and the head's own
updates) of simulated sessions on the bundled tiny model, one session at a time, on this CPU.

Each mode runs one session of benchmarks/clicks.py (red, noise-free, seed 1) alone; the table gives the mean of the
first three rounds, of the last three and of all, of these the mean seconds of the click (logging it and refitting
the head on every click so far), and every round's seconds. ``--threads``: torch's CPU threads (the
benchmark's sessions use 1, two at a time; the app uses what torch chooses, all cores).

    python benchmarks/click_round_seconds.py --rounds 10 --threads 1 2
    python benchmarks/click_round_seconds.py --rounds 5 --kl-weight 0 0.01     # the KL to the base model's cost
    python benchmarks/click_round_seconds.py --rounds 5 --kl-weight 0 0.01 --kl-kind local
    python benchmarks/click_round_seconds.py --rounds 5 --kl-trajectories sampled own  # the KL reading the update's own
    python benchmarks/click_round_seconds.py --modes direct learned-tiny-clip+grid+colour-cv-l2=0.01-lbfgs-one+head1-lr0.005
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> None:
    from benchmarks import clicks
    from rlr_core.config import KL_TRAJECTORIES, TrainConfig
    from rlr_core.rewards.preference import DEFAULT_KL_KIND, DEFAULT_KL_WEIGHT

    p = argparse.ArgumentParser(description="Seconds per click round of simulated sessions (docs/rewards.md).")
    p.add_argument("--modes", nargs="+", default=None, choices=sorted(clicks.MODES),
                   help="benchmarks/clicks.py modes (default: the default mode)")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--threads", nargs="+", type=int, default=[1])
    p.add_argument("--attribute", default="red", choices=clicks.ATTRIBUTES)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--kl-weight", type=float, nargs="+", default=None,
                   help="the sessions' KL to the base model, each one a row (default: rlr_core's DEFAULT_KL_WEIGHT)")
    p.add_argument("--kl-kind", default=DEFAULT_KL_KIND, choices=["trajectory", "local"],
                   help="what that KL counts (default: rlr_core's DEFAULT_KL_KIND)")
    p.add_argument("--kl-trajectories", nargs="+", default=[TrainConfig().kl_trajectories],
                   choices=list(KL_TRAJECTORIES),
                   help="whose trajectories that KL reads, each one a row: sampled (a batch of its own, TrainConfig's "
                        "default) or own (the update's)")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    modes = args.modes or [clicks.default_mode()]
    kl_weights = args.kl_weight or [DEFAULT_KL_WEIGHT]
    print(f"commit {clicks._commit()}; {args.attribute}, seed {args.seed}, {args.rounds} rounds of 4, one session at a time, KL kind "
          f"{args.kl_kind}")
    print("| mode | KL weight | KL's trajectories | threads | first 3 rounds | last 3 rounds | all rounds | of which the click "
          "| each round |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = [(m, w, t) for m in modes for w in kl_weights for t in (args.kl_trajectories if w > 0 else ["–"])]
    for threads in args.threads:
        for mode, kl_weight, trajectories in rows:
            task = {"mode": mode, "attribute": args.attribute, "noise": 0.0, "seed": args.seed, "rounds": args.rounds,
                    "threads": threads, "kl_weight": kl_weight, "kl_kind": args.kl_kind,
                    **({"kl_trajectories": trajectories} if kl_weight > 0 else {})}
            session = clicks.run_session(task)
            seconds = session["seconds_per_round"]
            print(f"| {mode} | {kl_weight:g} | {trajectories} | {threads} | {clicks._mean(seconds[:3]):.2f} | {clicks._mean(seconds[-3:]):.2f} | "
                  f"{clicks._mean(seconds):.2f} | {clicks._mean(session['click_seconds_per_round']):.2f} | "
                  f"{', '.join(f'{s:.2f}' for s in seconds)} |", flush=True)


if __name__ == "__main__":
    main()
