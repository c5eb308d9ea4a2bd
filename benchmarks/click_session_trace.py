"""One simulated click session of benchmarks/clicks.py, traced round by round.

Per round: the prompt, whether the click was wrong, the attribute's gain on the 8 fixed seeds, the attribute
of the 4 shown images, the head's rewards of them, the update's norm, the head's weight norm and its accuracy
on the clicks so far. Made to look inside a session whose gain collapses late.

    python benchmarks/click_session_trace.py --mode learned-layout-one --attribute red --noise 0.1 --seed 1
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
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
    import numpy as np
    import torch

    from benchmarks import clicks
    from rlr_core.estimators.base import grouped_prompts
    from rlr_core.rewards.preference import ClickLog, PreferenceReward
    from rlr_core.training.clicks import PreferenceSession

    torch.set_num_threads(1)
    attribute = clicks.Attribute(args.attribute)
    mode, features, head_updates = clicks.MODES[args.mode]
    wrong = np.random.default_rng([args.seed, int(args.noise * 100), 17])  # as benchmarks/clicks.py draws them
    with tempfile.TemporaryDirectory() as tmp:
        trainer = clicks._trainer(attribute, args.seed, args.rounds, tmp, lr=clicks.learning_rate(args.mode))
        log = ClickLog(Path(tmp) / "clicks.jsonl")
        head = PreferenceReward(log, features=features)
        session = PreferenceSession(trainer, log, mode=mode, k=1, reward=head, head_updates=head_updates)
        groups = trainer.estimator.noise_groups(mode == "learned" and head.differentiable)
        start = float(np.mean(clicks.measure(trainer, attribute)))
        print("| round | prompt | wrong click | gain | attribute of the shown images | head rewards | update norm | |w| | head accuracy |")
        print("|---|---|---|---|---|---|---|---|---|")
        for index in range(args.rounds):
            prompts = grouped_prompts(clicks.round_prompts(args.mode, index), 4, groups)
            shown = session.new_round(prompts, seed=args.seed * 100_000 + index)
            values = attribute(shown.images, shown.prompts)
            best, is_wrong = int(torch.argmax(values)), False
            if wrong.random() < args.noise:
                best, is_wrong = int(wrong.choice([i for i in range(shown.size) if i != best])), True
            session.click(shown, chosen=[best])
            update = session.update(shown)
            gain = float(np.mean(clicks.measure(trainer, attribute))) - start
            print(f"| {index + 1} | {prompts[0]} | {'yes' if is_wrong else ''} | {gain:+.2f} | "
                  f"{', '.join(f'{float(v):+.2f}' for v in values)} | {', '.join(f'{r:+.1f}' for r in update.rewards)} | "
                  f"{update.update_norm:.2f} | {float(head.weight.norm()):.1f} | {head.pair_accuracy():.2f} |", flush=True)


if __name__ == "__main__":
    main()
