"""Head-to-head learning curves of RLR variants and every baseline on the bundled tiny model.

Every run trains the same LoRA (same initial weights) through the one Trainer loop, with the
same images per iteration (``--batch-size``), until it has spent ``--budget`` seconds of its own
process CPU time on training iterations (evaluation excluded). Workers run single-threaded, one
per core, so a run's CPU seconds equal its wall-clock seconds on an idle machine and stay fair when
the machine is shared. Eval reward = mean reward of 8 fixed seeds x the 4 prompts, measured at
0, 1/4, 1/2, 3/4 and all of the budget.

Phases (all results are appended to ``<out>/runs.jsonl``, so an interrupted benchmark resumes):

1. learning-rate sweep: every estimator at each of ``--lrs`` on the first reward, 1 seed;
   the lr with the highest final eval reward is used for that estimator on every reward;
2. main: every (reward, estimator) at its chosen lr for ``--seeds`` seeds;
3. simulated clicker: rounds of 4 images through ``rlr_core.rewards.preference.PreferenceSession``;
   an oracle clicks the reddest image (mean R - mean(G, B)); redness on 8 fixed seeds vs rounds,
   in direct mode (clicks are the reward) and learned mode (Bradley-Terry head on pixel features).

``--report`` (also run at the end) writes ``<out>/compare.md`` (tables: eval-reward gain at the
budget, mean and 95% t-interval over seeds, iterations, seconds per iteration, ratio to ddpo and
truncated-bp) and PNG plots (eval reward vs seconds, batch reward vs iterations and vs seconds).

    python benchmarks/compare.py --out assets/results/compare          # everything (~1 h on 2 cores)
    python benchmarks/compare.py --out /tmp/cmp --budget 10 --seeds 1 --lrs 0.01 --estimators rlr ddpo
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

PROMPTS = [
    "a red circle on a white background",
    "a blue square on a gray background",
    "a green triangle on a black background",
    "a yellow star on a white background",
]
EVAL_SEEDS = list(range(1000, 1008))
# name -> (estimator, options); "rlr" is the product default
ESTIMATORS = {
    "rlr": ("rlr", {}),
    "rlr-paper": ("rlr-paper", {}),
    "rlr-paper-auto": ("rlr-paper", {"part_weights": "auto"}),
    "rlr-h4": ("rlr", {"h": 4}),
    "rlr-cv": ("rlr", {"control_variate": True, "ho_weight": 0.0}),  # HO control variate, residual dropped
    "truncated-bp": ("truncated-bp", {"k": 1}),
    "full-bp": ("full-bp", {}),
    "ddpo": ("ddpo", {}),
    "zo": ("zo", {}),
    "rlr-released": ("rlr-released", {}),
}
DIFFERENTIABLE_ONLY = {"truncated-bp", "full-bp", "rlr-released", "rlr-cv"}
# reward spec -> (reward name, options)
REWARDS = {
    "saturation": ("saturation", {}),
    "target-blue": ("target-color", {"color": "blue"}),  # optimum far from the base model: all-blue images
    "jpeg-compressibility": ("jpeg-compressibility", {}),
}
CLICKER = {  # name -> (estimator, options, mode)
    "rlr direct": ("rlr", {}, "direct"),
    "rlr learned": ("rlr", {}, "learned"),
    "rlr-paper direct": ("rlr-paper", {}, "direct"),
}


def redness(images):
    """Mean red minus mean green/blue, per image (the simulated clicker's attribute)."""
    return images[:, 0].mean((1, 2)) - images[:, 1:].mean((1, 2, 3))


class Redness:
    name = "redness"
    differentiable = True

    def __call__(self, images, prompts):
        return redness(images)


# ------------------------------------------------------------------------------------ workers
_CHAIN = None
_INITIAL = None


def _chain(num_steps: int):
    global _CHAIN, _INITIAL
    import torch

    from rlr_core import load_model

    if _CHAIN is None:
        torch.set_num_threads(1)
        _CHAIN = load_model("tiny", num_steps=num_steps, lora_rank=4, device="cpu")
        _INITIAL = [p.detach().clone() for p in _CHAIN.trainable_parameters()]
    with torch.no_grad():
        for p, p0 in zip(_CHAIN.trainable_parameters(), _INITIAL):
            p.copy_(p0)
            p.grad = None
    return _CHAIN


def _trainer(chain, reward, estimator, task, output_dir):
    from rlr_core import TrainConfig, Trainer

    config = TrainConfig(
        model="tiny", num_steps=task["num_steps"], prompts=list(PROMPTS), steps=100_000, batch_size=task["batch_size"],
        lr=task["lr"], seed=task["seed"], eval_seeds=[], eval_every=0, checkpoint_every=0, output_dir=output_dir,
    )
    return Trainer(chain, reward, estimator, config)


def run_training(task: dict) -> dict:
    """One learning curve: train until the CPU budget is spent, evaluating at fixed fractions."""
    import torch

    from rlr_core import get_estimator, get_reward

    chain = _chain(task["num_steps"])
    reward_name, reward_options = REWARDS[task["reward"]]
    reward = get_reward(reward_name, **reward_options)
    name, options = ESTIMATORS[task["estimator"]]
    estimator = get_estimator(name, **options)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = _trainer(chain, reward, estimator, task, tmp)
        evals, curve = [], []
        marks = [task["budget"] * f for f in (0.25, 0.5, 0.75, 1.0)]

        def evaluate(iteration, cpu, wall):
            _, values = trainer.evaluate(EVAL_SEEDS, [PROMPTS[i % 4] for i in range(len(EVAL_SEEDS))])
            evals.append({"iteration": iteration, "cpu_seconds": cpu, "wall_seconds": wall, "eval_reward": sum(values) / len(values)})

        evaluate(0, 0.0, 0.0)
        cpu = wall = 0.0
        iterator = trainer.run()
        while marks:
            c0, w0 = time.process_time(), time.perf_counter()
            report = next(iterator)
            cpu += time.process_time() - c0
            wall += time.perf_counter() - w0
            curve.append({
                "iteration": report.step, "cpu_seconds": cpu, "wall_seconds": wall, "reward_mean": report.reward_mean,
                "grad_norms": report.grad_norms, "signal": report.signal, "info": report.info, "skipped": report.skipped,
            })
            while marks and cpu >= marks[0]:
                marks.pop(0)
                evaluate(report.step, cpu, wall)
        iterator.close()
    return {**task, "kind": "train", "curve": curve, "evals": evals}


def run_clicker(task: dict) -> dict:
    """Simulated clicks: each round shows 4 images, the reddest is chosen, one update per round."""
    import torch

    from rlr_core import get_estimator
    from rlr_core.estimators.base import grouped_prompts
    from rlr_core.rewards.preference import ClickLog, PreferenceReward, PreferenceSession

    chain = _chain(task["num_steps"])
    name, options, mode = CLICKER[task["estimator"]]
    estimator = get_estimator(name, **options)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = _trainer(chain, Redness(), estimator, {**task, "batch_size": 4}, tmp)
        log = ClickLog(Path(tmp) / "clicks.jsonl")
        reward = PreferenceReward(log, features="pixels") if mode == "learned" else None
        session = PreferenceSession(trainer, log, mode=mode, k=1, reward=reward)
        groups = estimator.noise_groups(mode == "learned")
        evals = []

        def evaluate(rounds):
            _, values = trainer.evaluate(EVAL_SEEDS, [PROMPTS[i % 4] for i in range(len(EVAL_SEEDS))])
            evals.append({"round": rounds, "redness": sum(values) / len(values)})

        evaluate(0)
        seconds = 0.0
        for index in range(task["rounds"]):
            start = time.process_time()
            prompts = grouped_prompts(PROMPTS[index % 4:] + PROMPTS[: index % 4], 4, groups)
            shown = session.new_round(prompts, seed=task["seed"] * 100_000 + index)
            best = int(torch.argmax(redness(shown.images)))
            session.click(shown, chosen=[best])
            session.update(shown)
            seconds += time.process_time() - start
            if (index + 1) % 5 == 0:
                evaluate(index + 1)
    return {**task, "kind": "clicker", "evals": evals, "cpu_seconds": seconds}


def _run(task: dict) -> dict:
    try:
        return run_clicker(task) if task["kind"] == "clicker" else run_training(task)
    except Exception as error:  # a failed run is recorded, the benchmark goes on
        return {**task, "error": f"{type(error).__name__}: {error}"}


# ------------------------------------------------------------------------------------ driver
def _key(task: dict) -> str:
    from benchmarks.compare_report import task_key

    return task_key(task)


def load_runs(out: Path) -> list[dict]:
    path = out / "runs.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def execute(tasks: list[dict], out: Path, workers: int) -> None:
    done = {_key(r) for r in load_runs(out) if "error" not in r}
    todo = [t for t in tasks if _key(t) not in done]
    print(f"{len(tasks) - len(todo)} runs already done, {len(todo)} to run", flush=True)
    if not todo:
        return
    context = mp.get_context("spawn")
    with context.Pool(workers, maxtasksperchild=None) as pool, open(out / "runs.jsonl", "a") as sink:
        for result in pool.imap_unordered(_run, todo):
            sink.write(json.dumps(result) + "\n")
            sink.flush()
            final = result.get("evals", [{}])[-1] if result.get("evals") else {}
            print(f"[{time.strftime('%H:%M:%S')}] {result['phase']} {result.get('reward', 'clicker')} {result['estimator']} "
                  f"lr={result['lr']} seed={result['seed']}: {result.get('error') or final}", flush=True)


def chosen_lrs(runs: list[dict], sweep_reward: str) -> dict[str, float]:
    """Per estimator: the sweep lr with the highest final eval reward."""
    best: dict[str, tuple[float, float]] = {}
    for r in runs:
        if r.get("phase") != "sweep" or "error" in r or r.get("reward") != sweep_reward:
            continue
        final = r["evals"][-1]["eval_reward"]
        if r["estimator"] not in best or final > best[r["estimator"]][1]:
            best[r["estimator"]] = (r["lr"], final)
    return {name: lr for name, (lr, _) in best.items()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="assets/results/compare")
    p.add_argument("--rewards", nargs="+", default=list(REWARDS), choices=list(REWARDS))
    p.add_argument("--estimators", nargs="+", default=list(ESTIMATORS), choices=list(ESTIMATORS))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--budget", type=float, default=60.0, help="training CPU seconds per run")
    p.add_argument("--sweep-budget", type=float, default=40.0)
    p.add_argument("--lrs", type=float, nargs="+", default=[0.003, 0.01, 0.03])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--clicker", nargs="*", default=list(CLICKER), choices=list(CLICKER))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--report", action="store_true", help="only write the report from runs.jsonl")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common = {"batch_size": args.batch_size, "num_steps": args.num_steps}
    if not args.report:
        sweep_reward = args.rewards[0]
        sweep = [
            {**common, "phase": "sweep", "kind": "train", "reward": sweep_reward, "estimator": e, "lr": lr, "seed": 0,
             "budget": args.sweep_budget}
            for e in args.estimators for lr in args.lrs
            if not (e in DIFFERENTIABLE_ONLY and not _differentiable(sweep_reward))
        ]
        if len(args.lrs) > 1:
            execute(sweep, out, args.workers)
        lrs = chosen_lrs(load_runs(out), sweep_reward) if len(args.lrs) > 1 else {}
        main_tasks = [
            {**common, "phase": "main", "kind": "train", "reward": reward, "estimator": e, "lr": lrs.get(e, args.lrs[0]),
             "seed": seed, "budget": args.budget}
            for reward in args.rewards for e in args.estimators for seed in range(1, args.seeds + 1)
            if not (e in DIFFERENTIABLE_ONLY and not _differentiable(reward))
        ]
        clicker = [
            {**common, "phase": "clicker", "kind": "clicker", "estimator": c, "lr": 0.01, "seed": seed, "rounds": args.rounds,
             "budget": None}
            for c in args.clicker for seed in range(1, args.seeds + 1)
        ]
        execute(main_tasks + clicker, out, args.workers)
    from benchmarks.compare_report import write_report

    write_report(out, load_runs(out), args)


def _differentiable(reward: str) -> bool:
    return not reward.startswith("jpeg")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
