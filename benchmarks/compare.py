"""The task suite: learning curves of the default rlr, its candidates and every baseline on the tiny model.

Every run trains the same LoRA (same initial weights) through the one Trainer loop, with the
same images per iteration (``--batch-size``), until it has spent ``--budget`` seconds of its own
process CPU time on training iterations (evaluation excluded). Workers run single-threaded, one
per core, so a run's CPU seconds equal its wall-clock seconds on an idle machine and stay fair when
the machine is shared. Eval reward = mean reward over the task's 16 fixed seeds (its prompts cycled),
measured at 0, 1/4, 1/2, 3/4 and all of the budget.

Tasks (``TASKS``): colour-like rewards the last steps decide (saturation, target-blue,
jpeg-compressibility, not differentiable) and composition rewards the early steps decide: the star
task (the star preset's tiny-clip reward and cross-attention LoRA: turn "a red circle" into a red star),
position-left (``shape-position``: the shape at the left edge) and size-small (``shape-size``).

Phases (all results are appended to ``<out>/runs.jsonl``, so an interrupted benchmark resumes; a run
is identified by its task, estimator with its resolved options, lr, seed, budget, batch and T, so
changing the default rlr's options makes its runs new):

1. learning-rate sweep (only with several ``--lrs``): every estimator at each lr on the first task,
   1 seed; the lr with the highest final eval reward is used for that estimator on every task;
2. main: every (task, estimator) at its lr for ``--seeds`` seeds;
(Simulated click sessions have their own benchmark: benchmarks/clicks.py.)

``--report`` (also run at the end) writes ``<out>/compare.md`` (tables per task: eval-reward gain at
the budget, mean and 95% t-interval over seeds, ratio to ddpo and truncated-bp, iterations, seconds per
iteration, graph memory per estimate) and PNG plots (eval reward vs seconds, batch reward vs seconds).

    python benchmarks/compare.py --out benchmarks/results/compare --lrs 0.01 --budget 90    # the suite (hours)
    python benchmarks/compare.py --out /tmp/cmp --budget 10 --seeds 1 --lrs 0.01 --estimators rlr ddpo --tasks star
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
EVAL_SEEDS = list(range(1000, 1016))
STAR_CONFIG = Path(__file__).resolve().parent / "star_demo.yaml"
STAR_EVAL_SEEDS = list(range(20_000_000, 20_000_016))  # held out, as benchmarks/star_demo.py
# name -> (estimator, options); "rlr" is the product default, whatever it is at the commit that ran
ESTIMATORS = {
    "rlr": ("rlr", {}),
    "rlr-v2": ("rlr", {"control_variate": False, "ho_weight": 1.0, "fo_weight": 1.0, "window": None}),  # default until 12-04
    "rlr-paper": ("rlr-paper", {}),
    "rlr-paper-auto": ("rlr-paper", {"part_weights": "auto"}),
    "rlr-h4": ("rlr", {"h": 4}),
    "rlr-cv": ("rlr", {"control_variate": True, "ho_weight": 0.0}),  # HO control variate, residual dropped
    # the star preset's hand-set options before 12-04
    "rlr-star": ("rlr", {"h": 2, "window": [1, 6], "fo_weight": 0.33, "control_variate": True, "ho_weight": 0.0}),
    "rlr-cv-all": ("rlr", {"control_variate": "auto", "ho_weight": "auto", "window": None, "fo_weight": 1.0}),
    "rlr-cv-early": ("rlr", {"control_variate": "auto", "ho_weight": "auto", "window": [0.0, 0.4], "fo_weight": 1.0}),
    "rlr-cv-early-fo33": ("rlr", {"control_variate": "auto", "ho_weight": "auto", "window": [0.0, 0.4], "fo_weight": 0.33}),
    "rlr-cv-gradnorm": ("rlr", {"control_variate": "auto", "ho_weight": "auto", "window": None, "fo_weight": 1.0,
                                "j_sampling": "grad-norm"}),
    "truncated-bp": ("truncated-bp", {"k": 1}),
    "full-bp": ("full-bp", {}),
    "ddpo": ("ddpo", {}),
    "ddpo-group": ("ddpo", {"advantages": "group"}),
    "zo": ("zo", {}),
    "rlr-released": ("rlr-released", {}),
    "alignprop": ("alignprop", {}),
    "draft-lv": ("draft-lv", {}),
    "refl": ("refl", {}),
}
SUITE = ["rlr", "full-bp", "truncated-bp", "ddpo", "alignprop", "draft-lv", "refl", "rlr-paper", "zo", "rlr-released"]
DIFFERENTIABLE_ONLY = {"truncated-bp", "full-bp", "rlr-released", "rlr-cv", "rlr-star", "alignprop", "draft-lv", "refl"}


def _star_reward() -> tuple[str, dict]:
    """The star preset's reward (tiny-clip, "a red star" among one-attribute changes), read from its config."""
    import yaml

    config = yaml.safe_load(STAR_CONFIG.read_text())
    return config["reward"], dict(config["reward_options"])


# task -> reward (name, options), training prompts, LoRA targets, eval seeds (one image each, prompts cycled),
# whether the early steps decide it ("composition"), and its learning rate when not the run's ("lr")
TASKS = {
    "saturation": {"reward": ("saturation", {}), "prompts": PROMPTS},
    "target-blue": {"reward": ("target-color", {"color": "blue"}), "prompts": PROMPTS},  # optimum far from the base
    "jpeg-compressibility": {"reward": ("jpeg-compressibility", {}), "prompts": PROMPTS},
    "star": {"reward": _star_reward, "prompts": ["a red circle on a white background"], "lora_targets": "cross-attention",
             "eval_seeds": STAR_EVAL_SEEDS, "composition": True},
    # lr 0.003: at 0.01 one or two Adam steps on the attention LoRA recolour the shapes for every estimator
    # tried (rlr, truncated-bp), which these rewards penalise as clutter
    "position-left": {"reward": ("shape-position", {"target": "left"}), "prompts": PROMPTS, "composition": True, "lr": 0.003},
    "size-small": {"reward": ("shape-size", {}), "prompts": PROMPTS, "composition": True, "lr": 0.003},
}
REWARDS = TASKS  # the old name: --rewards takes task names
def task_reward(task_name: str):
    """The reward of task ``task_name`` (built by rlr_core.rewards.get_reward)."""
    from rlr_core import get_reward

    spec = TASKS[task_name]["reward"]
    name, options = spec() if callable(spec) else spec
    return get_reward(name, **options)


def task_eval(task_name: str) -> tuple[list[int], list[str]]:
    """The fixed evaluation seeds of a task and the prompt of each (the task's prompts cycled)."""
    spec = TASKS[task_name]
    seeds = spec.get("eval_seeds", EVAL_SEEDS)
    prompts = spec["prompts"]
    return list(seeds), [prompts[i % len(prompts)] for i in range(len(seeds))]


# ------------------------------------------------------------------------------------ workers
_CHAINS: dict = {}


def _chain(num_steps: int, lora_targets: str = "attention", model: str = "tiny"):
    """The tiny model (or another exported one: ``model`` is a folder) with the LoRA every run starts from (one
    per model and LoRA target set, cached per worker)."""
    import torch

    from rlr_core import load_model

    key = (num_steps, lora_targets, model)
    if key not in _CHAINS:
        torch.set_num_threads(1)
        chain = load_model(model, num_steps=num_steps, lora_rank=4, lora_targets=lora_targets, device="cpu")
        _CHAINS[key] = (chain, [p.detach().clone() for p in chain.trainable_parameters()])
    chain, initial = _CHAINS[key]
    with torch.no_grad():
        for p, p0 in zip(chain.trainable_parameters(), initial):
            p.copy_(p0)
            p.grad = None
    return chain


def _trainer(chain, reward, estimator, task, output_dir, prompts=PROMPTS):
    from rlr_core import TrainConfig, Trainer

    config = TrainConfig(
        model="tiny", num_steps=task["num_steps"], prompts=list(prompts), steps=100_000, batch_size=task["batch_size"],
        lr=task["lr"], seed=task["seed"], eval_seeds=[], eval_every=0, checkpoint_every=0, output_dir=output_dir,
    )
    return Trainer(chain, reward, estimator, config)


def run_training(task: dict) -> dict:
    """One learning curve: train until the CPU budget is spent, evaluating at fixed fractions."""
    import torch

    from rlr_core import get_estimator, get_reward

    spec = TASKS[task["reward"]]
    chain = _chain(task["num_steps"], spec.get("lora_targets", "attention"))
    reward = task_reward(task["reward"])
    name, options = ESTIMATORS[task["estimator"]]
    estimator = get_estimator(name, **options)
    eval_seeds, eval_prompts = task_eval(task["reward"])
    with tempfile.TemporaryDirectory() as tmp:
        trainer = _trainer(chain, reward, estimator, task, tmp, spec["prompts"])
        evals, curve = [], []
        marks = [task["budget"] * f for f in (0.25, 0.5, 0.75, 1.0)]

        def evaluate(iteration, cpu, wall):
            _, values = trainer.evaluate(eval_seeds, eval_prompts)
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
                "graph_memory_mb": report.graph_memory_mb,
            })
            passed = 0
            while marks and cpu >= marks[0]:
                marks.pop(0)
                passed += 1
            if passed:  # marks passed in one iteration share its LoRA, so one evaluation (fixed seeds) serves them all
                evaluate(report.step, cpu, wall)
                evals.extend(dict(evals[-1]) for _ in range(passed - 1))
        iterator.close()
    return {**task, "kind": "train", "curve": curve, "evals": evals, "commit": _commit()}


def _commit() -> str:
    """The git commit of the code that ran (with '+' when the tree had changes), or '?'."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True).stdout.strip()
        return (head + ("+" if dirty else "")) or "?"
    except OSError:
        return "?"


def resolved_options(estimator: str) -> dict:
    """Every option of a suite entry with its value (the entry's own and the estimator's defaults)."""
    from rlr_core.estimators import estimator_options

    name, options = ESTIMATORS[estimator]
    return json.loads(json.dumps({**estimator_options(name), **options}, default=list))


def _run(task: dict) -> dict:
    try:
        return run_training(task)
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
    for task in tasks:
        if task["kind"] == "train":
            task["estimator_options"] = resolved_options(task["estimator"])
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
            print(f"[{time.strftime('%H:%M:%S')}] {result['phase']} {result['reward']} {result['estimator']} "
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
    p.add_argument("--out", default="benchmarks/results/compare")
    p.add_argument("--rewards", "--tasks", nargs="+", default=list(TASKS), choices=list(TASKS), help="tasks of the suite")
    p.add_argument("--estimators", nargs="+", default=SUITE, choices=list(ESTIMATORS))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--budget", type=float, default=60.0, help="training CPU seconds per run")
    p.add_argument("--sweep-budget", type=float, default=40.0)
    p.add_argument("--lrs", type=float, nargs="+", default=[0.003, 0.01, 0.03])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-steps", type=int, default=20)
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
            {**common, "phase": "main", "kind": "train", "reward": reward, "estimator": e,
             "lr": TASKS[reward].get("lr", lrs.get(e, args.lrs[0])),
             "seed": seed, "budget": args.budget}
            for reward in args.rewards for e in args.estimators for seed in range(1, args.seeds + 1)
            if not (e in DIFFERENTIABLE_ONLY and not _differentiable(reward))
        ]
        execute(main_tasks, out, args.workers)
    from benchmarks.compare_report import write_report

    write_report(out, load_runs(out), args)


def _differentiable(task: str) -> bool:
    return not task.startswith("jpeg")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
