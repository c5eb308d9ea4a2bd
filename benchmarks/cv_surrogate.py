"""How much of RLR's HO noise the control variate can remove: the stand-in for the rest of the chain
against the true one, at the base LoRA of a run config (default: the star demo).

    python benchmarks/cv_surrogate.py [--config benchmarks/star_demo.yaml] [--set KEY=VALUE] [--threads 2]

For each HO exit step k (the sub-chain's last step; x[k+1] = m + s eps) it samples ``--batch``
trajectories to x[k], then compares, per trajectory:

- ``true``: a = d r / d x[k+1] at the exit mean m, backpropagated through the real remaining chain
  with its later noises held fixed (what the antithetic reward difference follows to first order);
- ``jumps=J``: a = d r(decode(predict_final(m, k + 1, J))) / dm, the control variate's stand-in.

It then draws ``--exit-draws`` antithetic exit-noise pairs per trajectory, reruns the rest of the
chain with the same later noises, and regresses the advantage (r(eps) - r(-eps)) / 2 on a . s eps.
Columns: ``cos`` (mean cosine of a to the true a), ``beta`` (least-squares slope) and ``residual``
(residual mean square / advantage mean square: the HO term's variance is multiplied by about this).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> list[dict]:
    from rlr_core.cli import apply_overrides
    from rlr_core.config import TrainConfig
    from rlr_core.run import TrainingRun
    from rlr_core.sampling import draw_noise, run_steps, take_step

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "benchmarks" / "star_demo.yaml"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--exits", default="3,6,9", help="HO exit steps k (comma-separated)")
    p.add_argument("--jumps", default="1,3,5", help="predict_final jump counts to compare")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--exit-draws", type=int, default=4)
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = apply_overrides(TrainConfig.from_file(args.config, validate=False), args.set).validate()
    chain, reward, _ = TrainingRun.from_config(config).parts()
    T = chain.num_steps
    prompts = [config.prompts[0]] * args.batch
    cond = chain.condition(prompts)
    generator = torch.Generator().manual_seed(args.seed)
    jumps = [int(v) for v in args.jumps.split(",")]

    def finish(x: torch.Tensor, first: int, noise) -> torch.Tensor:
        """The real chain from step ``first`` on (later noises fixed), decoded and scored."""
        x = run_steps(chain, x, range(first, T - 1), cond, noise)
        x_T, _, _ = take_step(chain, x, T - 1, cond, noise.eps[T - 1])
        return reward(chain.decode(x_T), prompts)

    def gradient_at(mean: torch.Tensor, score) -> torch.Tensor:
        mean = mean.detach().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(score(mean).sum(), mean)
        return grad

    rows = []
    for exit_step in (int(v) for v in args.exits.split(",")):
        noise = draw_noise(chain, args.batch, generator)
        with torch.no_grad():
            x = run_steps(chain, noise.x0, range(0, exit_step), cond, noise)
            mean, std = chain.step_mean_std(x, exit_step, cond)
        directions = {"true": gradient_at(mean, lambda m: finish(m, exit_step + 1, noise))}
        for J in jumps:
            directions[f"jumps={J}"] = gradient_at(
                mean, lambda m, J=J: reward(chain.decode(chain.predict_final(m, exit_step + 1, cond, J)), prompts))
        advantages, projections = [], {name: [] for name in directions}
        for _ in range(args.exit_draws):
            eps = torch.randn(mean.shape, generator=generator)
            with torch.no_grad():
                plus, minus = finish(mean + std * eps, exit_step + 1, noise), finish(mean - std * eps, exit_step + 1, noise)
            advantages.append((plus - minus).double() / 2)
            for name, a in directions.items():
                projections[name].append((a * std * eps).flatten(1).sum(1).double())
        adv = torch.cat(advantages)
        for name, a in directions.items():
            proj = torch.cat(projections[name])
            beta = float((adv * proj).sum() / (proj * proj).sum())
            residual = float(((adv - beta * proj) ** 2).mean() / (adv**2).mean())
            cos = float(torch.nn.functional.cosine_similarity(a.flatten(1), directions["true"].flatten(1)).mean())
            rows.append({"exit": exit_step, "s": round(float(std), 3), "direction": name, "cos": round(cos, 3),
                         "beta": round(beta, 3), "residual": round(residual, 3)})
            print(json.dumps(rows[-1]), flush=True)
    print("\n| exit k | s | a from | cos to true a | beta | residual variance share |")
    print("|---:|---:|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['exit']} | {r['s']} | {r['direction']} | {r['cos']:.2f} | {r['beta']:.2f} | {r['residual']:.2f} |")
    return rows


if __name__ == "__main__":
    main()
