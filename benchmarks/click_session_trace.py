"""One simulated click session of benchmarks/clicks.py, traced round by round.

Per round: the prompt, whether the click was wrong, the attribute's gain on the 8 fixed seeds, the attribute
of the 4 shown images, the head's rewards of them, the update's norm, the head's weight norm and its accuracy
on the clicks so far, and whether the session's check kept the update. Made to look inside a session whose
gain collapses late.

    python benchmarks/click_session_trace.py --mode learned-layout-one --attribute red --noise 0.1 --seed 1
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Trace one simulated click session (benchmarks/clicks.py).")
    p.add_argument("--mode", default="learned-layout-one")
    p.add_argument("--attribute", default="red", choices=["red", "spiky", "left"])
    p.add_argument("--noise", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--rounds", type=int, default=20)
    args = p.parse_args(argv)
    from benchmarks import clicks

    def row(trace: clicks.RoundTrace) -> None:
        update, head = trace.update, trace.head
        print(f"| {trace.index + 1} | {trace.prompts[0]} | {'yes' if trace.wrong_click else ''} | {trace.gain:+.2f} | "
              f"{', '.join(f'{v:+.2f}' for v in trace.attribute)} | {', '.join(f'{r:+.1f}' for r in update.rewards)} | "
              f"{update.update_norm:.2f} | {float(head.weight.norm()):.1f} | {head.pair_accuracy():.2f} | "
              f"{'yes' if update.accepted else 'undone'} |", flush=True)

    print("| round | prompt | wrong click | gain | attribute of the shown images | head rewards | update norm | |w| | head accuracy | kept |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    task = {"mode": args.mode, "attribute": args.attribute, "noise": args.noise, "seed": args.seed, "rounds": args.rounds}
    clicks.run_session(task, on_round=row)


if __name__ == "__main__":
    main()
