"""Bias and variance per estimator: on the analytic chain (exact gradient) and on a diffusers model.

    python benchmarks/estimators.py analytic [--repeats 2000] [--batch-size 16]
    python benchmarks/estimators.py model [--model tiny] [--repeats 16] [--num-steps 10]
    python benchmarks/estimators.py model --config benchmarks/star_demo.yaml --estimators '[["rlr", {"fo_weight": 0}]]'

Analytic: max |z| of the mean estimate against the exact gradient (|z| < 4.5 = consistent
with unbiased), total variance per estimate, relative bias |mean - exact| / |exact|.
Model: total variance, cosine of the mean to the full-bp mean, seconds and memory per estimate.
``--config`` takes the model, LoRA, sampling, reward and batch (the first prompt) from a run config
instead of the flags; ``--estimators`` (JSON list of names or [name, options]) replaces the list.
"""

from __future__ import annotations

import json
import sys

import torch

from _common import load, make_reward, parser, print_table
from rlr_core.chain import LinearGaussianChain, QuadraticReward
from rlr_core.diagnostics import collect_estimates, probe, z_scores
from rlr_core.estimators import get_estimator

ANALYTIC = [
    ("rlr", {}), ("rlr-paper", {}), ("rlr", {"remaining": "lr"}), ("rlr-paper", {"antithetic": False}),
    ("rlr-paper", {"part_weights": "auto"}),
    ("rlr", {"control_variate": False, "ho_weight": 1.0, "fo_weight": 1.0, "window": None}),  # the default before 12-04
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
    p.add_argument("--config", default="", help="a run config (YAML/JSON): chain, reward and batch from it")
    p.add_argument("--estimators", default="", help='JSON list of names or [name, options] (default: every estimator)')
    p.add_argument("--train-iterations", type=int, default=0,
                   help="with --config: first train the config's run for this many iterations (its own estimator), "
                        "then probe at that LoRA state instead of the fresh one")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="with --config: override a config field, as rlr-train --set; repeatable")
    p.add_argument("--same-seeds", action="store_true",
                   help="every estimator gets the same batch seeds (default: estimator i gets seed 1000 i)")
    args = p.parse_args(argv)
    if (args.train_iterations or args.set) and not args.config:
        p.error("--train-iterations and --set need --config")
    if args.config:
        from rlr_core.cli import apply_overrides
        from rlr_core.config import TrainConfig
        from rlr_core.run import TrainingRun

        if args.threads:
            torch.set_num_threads(args.threads)
        config = apply_overrides(TrainConfig.from_file(args.config, validate=False), args.set).validate()
        chain, reward, estimator = TrainingRun.from_config(config).parts()
        if args.train_iterations:
            train_first(chain, reward, estimator, config, args.train_iterations)
        prompts = [config.prompts[0]] * config.batch_size
        args.model, args.num_steps, args.batch_size = config.model, config.num_steps, config.batch_size
    else:
        chain = load(args, args.num_steps)
        reward = make_reward(args.reward, str(chain.device))
        prompts = ["a red circle on a white background"] * args.batch_size
    names = json.loads(args.estimators) if args.estimators else [
        "rlr", "rlr-paper", "ddpo", "zo", "truncated-bp", "rlr-released", "alignprop", "draft-lv", "refl", "full-bp"]
    results = probe(chain, reward, names, prompts, repeats=args.repeats, seed_stride=0 if args.same_seeds else 1000)  # probe takes names and [name, options]
    print(f"model={args.model} T={args.num_steps} batch={args.batch_size} repeats={args.repeats}")
    rows = [r.row() for r in results]
    parts = [c for c in dict.fromkeys(k for row in rows for k in row) if c.startswith(("norm_", "cos_"))]
    print_table(rows, ["estimator", "single_cosine", "cosine_to_full_bp", "reference", "mean_norm", *parts,
                       "total_variance", "seconds", "graph_memory_mb", "error"])


def train_first(chain, reward, estimator, config, iterations: int) -> None:
    """Train the config's run for ``iterations`` (in a temporary output_dir, nothing kept) so the probe
    measures the estimators where that run got to, e.g. on a plateau."""
    import tempfile
    import time

    from rlr_core.training import Trainer

    with tempfile.TemporaryDirectory() as output_dir:
        config.output_dir = output_dir
        config.checkpoint_every = 0
        config.eval_every = 0
        started = time.perf_counter()
        for report in Trainer(chain, reward, estimator, config).run(max_iterations=iterations):
            if report.step % 8 == 0 or report.step == iterations:
                print(f"train {report.step}/{iterations}: batch reward {report.reward_mean:.3f} "
                      f"({time.perf_counter() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "analytic"
    {"analytic": analytic, "model": model}[command](sys.argv[2:])
