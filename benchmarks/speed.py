"""Seconds of one gradient estimate per estimator vs one plain sampling pass (same batch, same T).

    python benchmarks/speed.py [--model tiny] [--num-steps 20] [--repeats 3]

Prints seconds per estimate, the plain sampling time and the ratio. The target for rlr
(h = 2, T = 20) is at most 1.5x a plain sampling pass.
"""

from __future__ import annotations

import time

import torch

from _common import load, make_reward, parser, print_table
from rlr_core.estimators import get_estimator, list_estimators
from rlr_core.sampling import sample


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--num-steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--estimators", nargs="+", default=list_estimators())
    args = p.parse_args()
    chain = load(args, args.num_steps)
    reward = make_reward(args.reward, str(chain.device))
    prompts = ["a red circle on a white background"] * args.batch_size

    def timed(fn) -> float:
        fn()  # warm-up
        best = float("inf")
        for _ in range(args.repeats):
            if chain.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if chain.device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        return best

    plain = timed(lambda: reward(sample(chain, prompts, torch.Generator().manual_seed(0)), prompts))
    rows = [{"what": "plain sampling + reward", "seconds": plain, "ratio": 1.0}]
    variants = [(name, {}) for name in args.estimators]
    if "rlr" in args.estimators:  # the faster ZO variant: one direction per batch (fewer, larger calls)
        variants.insert(args.estimators.index("rlr") + 1, ("rlr", {"zo_directions": "per-batch"}))
    for name, options in variants:
        estimator = get_estimator(name, **options)
        label = name + (f" {options}" if options else "")
        try:
            estimator.check(chain, reward, len(prompts))
        except ValueError as error:
            rows.append({"what": label, "note": str(error)[:60]})
            continue
        seconds = timed(lambda: estimator.estimate(chain, reward, prompts, torch.Generator().manual_seed(0)))
        rows.append({"what": label, "seconds": seconds, "ratio": seconds / plain})
    print(f"model={args.model} T={args.num_steps} batch={args.batch_size} device={chain.device} (best of {args.repeats})")
    print_table(rows, ["what", "seconds", "ratio", "note"])


if __name__ == "__main__":
    main()
