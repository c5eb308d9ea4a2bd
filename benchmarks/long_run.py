"""Reward hacking over long runs, and where the guard stops it (docs/guard.md).

    python benchmarks/long_run.py                     # 200 iterations per run, resumable -> benchmarks/results/long-run/
    python benchmarks/long_run.py --report            # table + picture from runs.jsonl only
    python benchmarks/long_run.py --iterations 4 --tasks saturation --estimators rlr --out /tmp/x   # smoke test

Per (task, estimator, variant) one run of the bundled tiny model (T = 20, batch 4, lr 0.01, an evaluation every
5 iterations on 16 fixed held-out seeds, one torch thread) with the guard's figures at every evaluation
(held-out reward, diversity, KL to the base model) and ``keep_best: true``. Tasks: ``saturation`` (the four
shape prompts; held-out reward: tiny-clip's score of the prompt) and ``star`` (the star preset's reward;
held-out reward: tiny-clip's plain score of "a red star on a white background", where the run trains the
contrastive log-probability). Variants: ``plain`` and ``kl`` (``kl_weight`` > 0); ``gentle`` (lr / 10) on request. The tiny detector
(``rlr_core.tiny.detect``) reads each evaluation image: the share whose colour, shape and background are the
prompt's (saturation) or that are clean stars (star).

"Unguarded" is each run's last iteration; "guarded" is what ``keep_best`` exports (the best evaluation the
guard accepted) and, with ``early_stop_patience`` P (default 5), where the run would have ended: evaluations
leave the training trajectory untouched, so a run with patience P is this run cut at its P-th evaluation in a
row without a better guarded score; the stop is read off the guard's own verdicts (``kept_step`` per
evaluation), not re-run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

OUT_DIR = Path(__file__).resolve().parent / "results" / "long-run"
STAR_CONFIG = Path(__file__).resolve().parent / "star_demo.yaml"
PROMPTS = ["a red circle on a white background", "a blue square on a gray background",
           "a green triangle on a black background", "a yellow star on a blue background"]
EVAL_SEEDS = list(range(30_000_000, 30_000_064))  # held out; the first --eval-images of them (16: 4 per saturation prompt)
STAR_TARGET = "a red star on a white background"
KL_WEIGHT = 0.01
TASKS = ("saturation", "star")
ESTIMATORS = ("rlr", "truncated-bp", "full-bp")
VARIANTS = ("plain", "kl", "gentle")  # gentle: lr / 10 (not in the default list)


def task_config(task: str, estimator: str, variant: str, args: argparse.Namespace, output_dir: str):
    """The TrainConfig of one run."""
    import yaml

    from rlr_core.config import TrainConfig

    lr = args.lr / 10 if variant == "gentle" else args.lr
    common = dict(model="tiny", num_steps=args.num_steps, batch_size=args.batch_size, lr=lr, seed=0,
                  steps=args.iterations, eval_every=args.eval_every, eval_seeds=EVAL_SEEDS[: args.eval_images],
                  estimator=estimator, keep_best=True, early_stop_patience=0, checkpoint_every=0, device="cpu",
                  kl_weight=KL_WEIGHT if variant == "kl" else 0.0, output_dir=output_dir)
    if task == "saturation":
        return TrainConfig(reward="saturation", prompts=list(PROMPTS), lora_targets="attention", **common)
    if task == "star":
        star = yaml.safe_load(STAR_CONFIG.read_text())
        return TrainConfig(reward=star["reward"], reward_options=star["reward_options"], prompts=star["prompts"],
                           lora_targets=star["lora_targets"], heldout_reward="clip",
                           heldout_reward_options={"model": "tiny-clip", "text": STAR_TARGET}, **common)
    raise ValueError(f"task must be one of {', '.join(TASKS)}; got {task!r}")


def prompt_read_share(images: list, prompts: list[str], task: str) -> float:
    """Share of the images the tiny detector reads as asked: the prompt's colour, shape and background
    (saturation), or a clean star (star)."""
    from rlr_core.tiny.detect import detect, is_clean_star

    hits = 0
    for image, prompt in zip(images, prompts):
        found = detect(np.asarray(image))
        if task == "star":
            hits += is_clean_star(found)
            continue
        match = re.match(r"an? (\w+) (\w+) on an? (.+) background", prompt)
        color, shape, background = match.groups() if match else (None, None, None)
        hits += (found.color, found.shape, found.background) == (color, shape, background)
    return hits / max(len(images), 1)


def run_one(task: str, estimator: str, variant: str, args: argparse.Namespace) -> dict:
    """One long run; the per-evaluation figures as plain data."""
    from rlr_core.run import TrainingRun

    torch.set_num_threads(1)
    key = f"{task}-{estimator}-{variant}"
    config = task_config(task, estimator, variant, args, str(Path(args.work_dir) / key))
    run = TrainingRun.from_config(config)
    eval_prompts = run.trainer.eval_prompts
    start, cpu_start = time.perf_counter(), time.process_time()
    evals, train_rewards = [], []
    for report in run.trainer.run():
        train_rewards.append(report.reward_mean)
        if report.before_guard is not None:
            evals.append({"iteration": 0, "eval_reward": float(np.mean(report.before_rewards)),
                          **report.before_guard, "accepted": True, "kept_step": 0,
                          "prompt_read": prompt_read_share(report.before_images, eval_prompts, task)})
        if report.guard is not None:
            evals.append({"iteration": report.step, "eval_reward": report.eval_reward_mean,
                          "heldout_reward": report.heldout_reward, "diversity": report.diversity, "kl": report.kl,
                          "accepted": report.guard["accepted"], "refused": report.guard["refused"],
                          "kept_step": report.guard["kept_step"],
                          "train_reward": float(np.mean(train_rewards[-args.eval_every:])),
                          "prompt_read": prompt_read_share(report.eval_images, eval_prompts, task)})
    return {"key": key, "task": task, "estimator": estimator, "variant": variant,
            "kl_weight": config.kl_weight, "lr_used": config.lr, "iterations": args.iterations, "batch_size": args.batch_size,
            "num_steps": args.num_steps, "lr": args.lr, "eval_images": len(config.eval_seeds),
            "seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu_start,
            "space": run.trainer.probe.space, "evals": evals}


def guarded_summary(record: dict, patience: int) -> dict:
    """Unguarded (last and best evaluation) against guarded (kept evaluation, early stop with ``patience``)."""
    evals = record["evals"]
    base = evals[0]
    gain = [e["eval_reward"] - base["eval_reward"] for e in evals]
    by_step = {e["iteration"]: i for i, e in enumerate(evals)}
    stop_index, since = len(evals) - 1, 0
    for i in range(1, len(evals)):
        since = 0 if evals[i]["kept_step"] == evals[i]["iteration"] else since + 1
        if since >= patience:
            stop_index = i
            break
    kept = by_step[evals[stop_index]["kept_step"]]
    last = evals[-1]
    heldout_ratio = (lambda e: e["heldout_reward"] / base["heldout_reward"] if base["heldout_reward"] else None)
    return {
        "key": record["key"], "base_eval": base["eval_reward"], "best_unguarded_gain": max(gain),
        "last_gain": gain[-1], "last_heldout": heldout_ratio(last), "last_diversity": last["diversity"],
        "last_kl": last["kl"], "last_prompt_read": last["prompt_read"], "base_prompt_read": base["prompt_read"],
        "stop_iteration": evals[stop_index]["iteration"], "kept_iteration": evals[kept]["iteration"],
        "kept_gain": gain[kept], "kept_heldout": heldout_ratio(evals[kept]),
        "kept_diversity": evals[kept]["diversity"], "kept_prompt_read": evals[kept]["prompt_read"],
        "kept_share_of_best": gain[kept] / max(gain) if max(gain) > 0 else None,
    }


def _fmt(value, spec=".3g") -> str:
    return "-" if value is None else format(value, spec)


def write_report(out: Path, records: list[dict], patience: int) -> str:
    """report.md (the table) and one picture per task."""
    rows = [guarded_summary(r, patience) for r in records]
    lines = ["| run | base eval | unguarded: best gain / last gain | last: held-out / base, diversity, KL, prompt read "
             f"| guarded (patience {patience}): stop, kept it., gain (share of best) | kept: held-out / base, diversity, "
             "prompt read |", "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(
            f"| {row['key']} | {row['base_eval']:.3g} | {row['best_unguarded_gain']:+.3g} / {row['last_gain']:+.3g} "
            f"| {_fmt(row['last_heldout'], '.2f')}, {_fmt(row['last_diversity'], '.2f')}, {_fmt(row['last_kl'], '.3g')}, "
            f"{row['last_prompt_read']:.0%} (base {row['base_prompt_read']:.0%}) "
            f"| {row['stop_iteration']}, {row['kept_iteration']}, {row['kept_gain']:+.3g} "
            f"({_fmt(row['kept_share_of_best'], '.0%')}) "
            f"| {_fmt(row['kept_heldout'], '.2f')}, {_fmt(row['kept_diversity'], '.2f')}, {row['kept_prompt_read']:.0%} |")
    table = "\n".join(lines) + "\n"
    (out / "report.md").write_text(table, encoding="utf-8")
    (out / "summary.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    for task in sorted({r["task"] for r in records}):
        plot_task(out / f"{task}.png", [r for r in records if r["task"] == task], patience)
    return table


def plot_task(path: Path, records: list[dict], patience: int) -> None:
    """Eval-reward gain, held-out reward / base, diversity and prompt-read share against the iteration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("eval reward gain", lambda e, b: e["eval_reward"] - b["eval_reward"]),
              ("held-out reward / base", lambda e, b: e["heldout_reward"] / b["heldout_reward"]),
              ("diversity (base = 1)", lambda e, b: e["diversity"]),
              ("prompt read by the detector", lambda e, b: e["prompt_read"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for record in records:
        evals, summary = record["evals"], guarded_summary(record, patience)
        xs = [e["iteration"] for e in evals]
        label = f"{record['estimator']} {record['variant']}"
        for axis, (title, value) in zip(axes, panels):
            ys = [value(e, evals[0]) if value(e, evals[0]) is not None else np.nan for e in evals]
            (line,) = axis.plot(xs, ys, label=label, lw=1.4)
            kept = xs.index(summary["kept_iteration"])
            axis.plot([xs[kept]], [ys[kept]], "o", color=line.get_color(), ms=6)
            axis.axvline(summary["stop_iteration"], color=line.get_color(), ls=":", lw=0.9)
            axis.set_title(title, fontsize=9)
            axis.set_xlabel("iteration", fontsize=8)
    axes[1].axhline(0.9, color="gray", ls="--", lw=0.8)
    axes[2].axhline(0.5, color="gray", ls="--", lw=0.8)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{records[0]['task']}: dot = the LoRA keep_best exports, dotted = early stop (patience {patience})",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def load_runs(out: Path) -> list[dict]:
    path = out / "runs.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(OUT_DIR))
    p.add_argument("--work-dir", default="/tmp/rlr-long-run", help="run folders (LoRAs, metrics) of each run")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    p.add_argument("--estimators", nargs="+", default=list(ESTIMATORS))
    p.add_argument("--variants", nargs="+", default=["plain", "kl"], choices=VARIANTS)
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--eval-images", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--num-steps", type=int, default=20)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--patience", type=int, default=5, help="early_stop_patience of the guarded column")
    p.add_argument("--report", action="store_true", help="only write the report from runs.jsonl")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.report:
        done = {r["key"] for r in load_runs(out) if r["iterations"] == args.iterations}
        for variant in args.variants:
            for task in args.tasks:
                for estimator in args.estimators:
                    if f"{task}-{estimator}-{variant}" in done:
                        continue
                    record = run_one(task, estimator, variant, args)
                    with open(out / "runs.jsonl", "a", encoding="utf-8") as sink:
                        sink.write(json.dumps(record) + "\n")
                    last = record["evals"][-1]
                    print(f"[{time.strftime('%H:%M:%S')}] {record['key']}: {record['seconds']:.0f} s, last eval "
                          f"{last['eval_reward']:.3g}, held-out {last['heldout_reward']:.3g}, diversity "
                          f"{last['diversity']:.2f}, prompt read {last['prompt_read']:.0%}", flush=True)
    records = [r for r in load_runs(out) if r["task"] in args.tasks]
    if records:
        print(write_report(out, records, args.patience))


if __name__ == "__main__":
    main()
