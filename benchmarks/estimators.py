"""Bias and variance per estimator: on the analytic chain (exact gradient) and on a diffusers model.

    python benchmarks/estimators.py analytic [--repeats 2000] [--batch-size 16]
    python benchmarks/estimators.py model [--model tiny] [--repeats 16] [--num-steps 10]

Analytic: max |z| of the mean estimate against the exact gradient (|z| < 4.5 = consistent
with unbiased), total variance per estimate, relative bias |mean - exact| / |exact|.
Model: total variance, cosine of the mean to the full-bp mean, seconds and memory per estimate.
"""

from __future__ import annotations

import sys

import torch

from _common import load, make_reward, parser, print_table
from rlr_core.chain import LinearGaussianChain, QuadraticReward
from rlr_core.diagnostics import collect_estimates, probe, z_scores
from rlr_core.estimators import get_estimator

ANALYTIC = [
    ("rlr", {}), ("rlr-paper", {}), ("rlr", {"remaining": "lr"}), ("rlr-paper", {"antithetic": False}),
    ("rlr-paper", {"part_weights": "auto"}),
    ("full-bp", {}), ("truncated-bp", {}), ("ddpo", {"normalize": False}), ("zo", {}), ("rlr-released", {}),
]


def analytic(argv: list[str]) -> None:
    p = parser("analytic")
    p.add_argument("--repeats", type=int, default=2000)
    p.add_argument("--num-steps", type=int, default=8)
    p.set_defaults(batch_size=16)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    chain = LinearGaussianChain(num_steps=args.num_steps, dim=4, num_params=4)
    reward = QuadraticReward(dim=4)
    prompts = (["a", "b", "c", "d"] * args.batch_size)[: args.batch_size // 4] * 4
    exact = chain.exact_gradient(reward, prompts)
    rows = []
    for name, options in ANALYTIC:
        stats = collect_estimates(chain, reward, get_estimator(name, **options), prompts, args.repeats, seed=7)
        z = z_scores(stats, exact)
        rows.append({
            "estimator": name + (f" {options}" if options else ""),
            "max_abs_z": float(z.abs().max()),
            "relative_bias": float((stats.mean - exact).norm() / exact.norm()),
            "total_variance": stats.total_variance,
            "ms_per_estimate": 1000 * stats.seconds,
        })
    print(f"analytic chain T={args.num_steps}, batch={args.batch_size}, {args.repeats} estimates each")
    print_table(rows, ["estimator", "max_abs_z", "relative_bias", "total_variance", "ms_per_estimate"])


def model(argv: list[str]) -> None:
    p = parser("model")
    p.add_argument("--repeats", type=int, default=16)
    p.add_argument("--num-steps", type=int, default=10)
    args = p.parse_args(argv)
    chain = load(args, args.num_steps)
    reward = make_reward(args.reward, str(chain.device))
    prompts = ["a red circle on a white background"] * args.batch_size
    results = probe(chain, reward, ["rlr", "rlr-paper", "ddpo", "zo", "truncated-bp", "rlr-released", "full-bp"],
                    prompts, repeats=args.repeats)
    print(f"model={args.model} T={args.num_steps} batch={args.batch_size} repeats={args.repeats}")
    rows = [r.row() for r in results]
    parts = [c for c in dict.fromkeys(k for row in rows for k in row) if c.startswith(("norm_", "cos_"))]
    print_table(rows, ["estimator", "single_cosine", "cosine_to_full_bp", "reference", "mean_norm", *parts,
                       "total_variance", "seconds", "graph_memory_mb", "error"])


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "analytic"
    {"analytic": analytic, "model": model}[command](sys.argv[2:])
