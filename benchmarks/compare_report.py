"""Tables and plots for ``benchmarks/compare.py`` (reads its runs.jsonl; no training here)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

T_975 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}
FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0)


def mean_interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t-interval (nan half-width for one value)."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, T_975.get(n - 1, 1.96) * sd / math.sqrt(n)


def _fmt(mean: float, half: float, digits: int = 3) -> str:
    if math.isnan(mean):
        return "–"
    if math.isnan(half):
        return f"{mean:.{digits}g}"
    return f"{mean:.{digits}g} ± {half:.2g}"


def gains(runs: list[dict], phase: str = "main") -> dict[tuple[str, str], list[dict[str, float]]]:
    """(reward, estimator) -> per seed: eval gain at the budget, iterations, s/it, signal."""
    table: dict[tuple[str, str], list[dict[str, float]]] = {}
    for r in runs:
        if r.get("phase") != phase or r.get("kind") != "train" or "error" in r or not r.get("curve"):
            continue
        evals, curve = r["evals"], r["curve"]
        signal = [c["signal"].get("total") for c in curve if c.get("signal") and c["signal"].get("total") is not None]
        table.setdefault((r["reward"], r["estimator"]), []).append({
            "gain": evals[-1]["eval_reward"] - evals[0]["eval_reward"],
            "start": evals[0]["eval_reward"],
            "final": evals[-1]["eval_reward"],
            "iterations": curve[-1]["iteration"],
            "seconds_per_iteration": curve[-1]["cpu_seconds"] / curve[-1]["iteration"],
            "signal": sum(signal) / len(signal) if signal else float("nan"),
            "lr": r["lr"],
            "graph_memory_mb": max((c.get("graph_memory_mb") or 0.0) for c in curve),
        })
    return table


def task_key(task: dict) -> str:
    """What identifies one run of the benchmark (a rerun of the same task has the same key)."""
    fields = ("phase", "kind", "reward", "estimator", "estimator_options", "lr", "seed", "budget", "batch_size", "num_steps",
              "rounds")
    return json.dumps({f: task.get(f) for f in fields}, sort_keys=True)


def write_report(out: Path, runs: list[dict], args: Any = None) -> Path:
    """Write compare.md and the PNG plots into ``out``; return the markdown path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# Head-to-head on the tiny model (benchmarks/compare.py)", ""]
    main_runs = [r for r in runs if r.get("phase") == "main" and "error" not in r]
    if main_runs:
        r0 = main_runs[0]
        lines += [
            f"Batch {r0['batch_size']} images per iteration, {r0['num_steps']} sampling steps, LoRA rank 4, "
            f"budget {r0['budget']:g} s of single-threaded training CPU time per run (evaluation excluded), "
            "eval reward = mean over the task's 16 fixed seeds (its prompts cycled). Gains are final minus initial eval reward, "
            "mean ± 95% t-interval over seeds. `signal` = mean cosine of one estimate to the running mean of "
            "the earlier ones (StepReport.signal).",
            "",
        ]
    lines += _sweep_table(runs)
    table = gains(runs)
    for reward in sorted({k[0] for k in table}, key=_reward_order):
        lines += _reward_table(reward, table)
    # a failed run that a later, successful run of the same task replaced (compare.py reruns failures) is not listed
    succeeded = {task_key(r) for r in runs if "error" not in r}
    errors = [r for r in runs if "error" in r and task_key(r) not in succeeded]
    if errors:
        lines += ["## Failed runs", ""] + [f"- {r['phase']} {r.get('reward')} {r['estimator']} seed {r['seed']}: {r['error']}" for r in errors] + [""]
    _plots(out, runs)
    path = out / "compare.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return path


def _reward_order(name: str) -> tuple[int, str]:
    order = ["saturation", "target-blue", "jpeg-compressibility", "star", "position-left", "size-small"]
    return (order.index(name) if name in order else len(order), name)


def _sweep_table(runs: list[dict]) -> list[str]:
    sweep = [r for r in runs if r.get("phase") == "sweep" and "error" not in r]
    if not sweep:
        return []
    lrs = sorted({r["lr"] for r in sweep})
    lines = [f"## Learning-rate sweep ({sweep[0]['reward']}, seed 0, {sweep[0]['budget']:g} s): eval gain", "",
             "| estimator | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " | chosen |", "|---" * (len(lrs) + 2) + "|"]
    for name in dict.fromkeys(r["estimator"] for r in sweep):
        cells, best = [], (None, -math.inf)
        for lr in lrs:
            match = [r for r in sweep if r["estimator"] == name and r["lr"] == lr]
            if match:
                gain = match[0]["evals"][-1]["eval_reward"] - match[0]["evals"][0]["eval_reward"]
                cells.append(f"{gain:.3g}")
                if match[0]["evals"][-1]["eval_reward"] > best[1]:
                    best = (lr, match[0]["evals"][-1]["eval_reward"])
            else:
                cells.append("–")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {best[0]:g} |")
    return lines + [""]


def _reward_table(reward: str, table: dict) -> list[str]:
    rows = {name: seeds for (r, name), seeds in table.items() if r == reward}
    reference = {n: mean_interval([s["gain"] for s in rows[n]])[0] for n in ("ddpo", "truncated-bp") if n in rows}
    lines = [f"## {reward}", "",
             "| estimator | lr | eval gain | gain / ddpo | gain / truncated-bp | start -> final | iterations | s / iteration | graph MB | signal |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, seeds in sorted(rows.items(), key=lambda kv: -mean_interval([s["gain"] for s in kv[1]])[0]):
        gain = mean_interval([s["gain"] for s in seeds])
        ratios = [f"{gain[0] / reference[n]:.2f}" if n in reference and reference[n] > 0 else "–" for n in ("ddpo", "truncated-bp")]
        start = mean_interval([s["start"] for s in seeds])[0]
        final = mean_interval([s["final"] for s in seeds])[0]
        its = mean_interval([s["iterations"] for s in seeds])[0]
        spi = mean_interval([s["seconds_per_iteration"] for s in seeds])[0]
        sig = mean_interval([s["signal"] for s in seeds if not math.isnan(s["signal"])])[0]
        graph = max(s.get("graph_memory_mb", 0.0) for s in seeds)
        lines.append(f"| {name} | {seeds[0]['lr']:g} | {_fmt(*gain)} | {ratios[0]} | {ratios[1]} | {start:.3g} -> {final:.3g} | "
                     f"{its:.3g} | {spi:.3g} | {graph:.3g} | {sig:.2f} |")
    return lines + [f"(seeds per row: {', '.join(f'{n} {len(v)}' for n, v in rows.items())})", ""]


def _plots(out: Path, runs: list[dict]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install matplotlib)")
        return
    main_runs = [r for r in runs if r.get("phase") == "main" and r.get("kind") == "train" and "error" not in r]
    for reward in sorted({r["reward"] for r in main_runs}, key=_reward_order):
        mine = [r for r in main_runs if r["reward"] == reward]
        fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
        for name in dict.fromkeys(r["estimator"] for r in mine):
            seeds = [r for r in mine if r["estimator"] == name]
            budget = seeds[0]["budget"]
            xs = [f * budget for f in FRACTIONS]
            stats = [mean_interval([r["evals"][i]["eval_reward"] for r in seeds if len(r["evals"]) > i]) for i in range(len(FRACTIONS))]
            means = [m for m, _ in stats]
            halves = [0.0 if math.isnan(h) else h for _, h in stats]
            line, = axes[0].plot(xs, means, marker="o", label=name, linewidth=2.2 if name == "rlr" else 1.2)
            axes[0].fill_between(xs, [m - h for m, h in zip(means, halves)], [m + h for m, h in zip(means, halves)],
                                 color=line.get_color(), alpha=0.12)
            for r in seeds:
                axes[1].plot([c["cpu_seconds"] for c in r["curve"]], [c["reward_mean"] for c in r["curve"]],
                             color=line.get_color(), alpha=0.5, linewidth=0.9, label=name if r is seeds[0] else None)
        axes[0].set(title=f"{reward}: fixed-seed eval reward vs training seconds (mean, 95% CI)",
                    xlabel="training CPU seconds (single thread)", ylabel="eval reward (8 seeds)")
        axes[1].set(title=f"{reward}: batch reward per iteration vs seconds (each seed)",
                    xlabel="training CPU seconds (single thread)", ylabel="batch mean reward")
        for ax in axes:
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8, loc="best")
        fig.tight_layout()
        fig.savefig(out / f"{reward}.png", dpi=90)
        plt.close(fig)
