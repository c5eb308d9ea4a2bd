"""Peak memory of one gradient estimate per estimator for T = 10, 20, 40 sampling steps.

    python benchmarks/memory.py [--model tiny] [--steps 10 20 40] [--estimators rlr full-bp ...]

Prints graph memory (bytes autograd saved for backward: deterministic) and peak memory (CUDA
max allocated, or the growth of the resident set on CPU) and the ratio T=40 / T=10 per estimator.
RLR's memory should stay flat in T while full-bp grows linearly.
"""

from __future__ import annotations

import torch

from _common import load, make_reward, parser, print_table
from rlr_core.estimators import get_estimator, list_estimators


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--steps", type=int, nargs="+", default=[10, 20, 40])
    p.add_argument("--estimators", nargs="+", default=list_estimators())
    args = p.parse_args()
    rows = []
    for steps in args.steps:
        chain = load(args, steps)
        reward = make_reward(args.reward, str(chain.device))
        for name in args.estimators:
            estimator = get_estimator(name)
            prompts = ["a red circle on a white background"] * args.batch_size
            try:
                estimator.check(chain, reward, len(prompts))
                result = estimator.estimate(chain, reward, prompts, torch.Generator().manual_seed(0))
                rows.append({"estimator": name, "T": steps, "graph_mb": result.graph_memory_mb,
                             "peak_mb": result.peak_memory_mb, "seconds": result.seconds})
            except ValueError as error:
                rows.append({"estimator": name, "T": steps, "note": str(error)[:60]})
        del chain
    first, last = min(args.steps), max(args.steps)
    for row in rows:
        if row["T"] == last and "graph_mb" in row:
            base = next(r for r in rows if r["estimator"] == row["estimator"] and r["T"] == first)
            row["graph_ratio_vs_first_T"] = row["graph_mb"] / max(base["graph_mb"], 1e-9)
    print_table(rows, ["estimator", "T", "graph_mb", "peak_mb", "seconds", "graph_ratio_vs_first_T", "note"])


if __name__ == "__main__":
    main()
