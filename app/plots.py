"""The Train tab's plots: run history rows (``StepReport.to_json_dict()``) -> long pandas tables -> one
matplotlib figure (reward, gradient norms, cosines and signal, time and memory per iteration)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from .formatting import PART_LABELS, _finite

__all__ = ["reward_frame", "gradient_frame", "cosine_frame", "training_figure"]


def reward_frame(history: list[dict[str, Any]]) -> pd.DataFrame:
    """Long table (step, reward, series): mean, mean ± std of the batch, and the eval mean."""
    rows = []
    for row in history:
        mean, std = _finite(row.get("reward_mean")), _finite(row.get("reward_std")) or 0.0
        if mean is not None:
            rows += [
                {"step": row["step"], "reward": mean, "series": "batch mean"},
                {"step": row["step"], "reward": mean - std, "series": "mean - std"},
                {"step": row["step"], "reward": mean + std, "series": "mean + std"},
            ]
        evaluated = _finite(row.get("eval_reward_mean"))
        if evaluated is not None:
            rows.append({"step": row["step"], "reward": evaluated, "series": "eval (fixed seeds)"})
    return pd.DataFrame(rows, columns=["step", "reward", "series"])


def gradient_frame(history: list[dict[str, Any]]) -> pd.DataFrame:
    """Long table (step, norm, part): gradient norm per part FO/HO/ZO/LR, total, and the update norm."""
    rows = []
    for row in history:
        for part, value in (row.get("grad_norms") or {}).items():
            number = _finite(value)
            if number is not None:
                rows.append({"step": row["step"], "norm": number, "part": PART_LABELS.get(part, part)})
        update = _finite(row.get("update_norm"))
        if update is not None:
            rows.append({"step": row["step"], "norm": update, "part": "update"})
    return pd.DataFrame(rows, columns=["step", "norm", "part"])


def cosine_frame(history: list[dict[str, Any]]) -> pd.DataFrame:
    """Long table (step, cosine, pair): cosine between estimator parts, e.g. FO~HO, and the signal
    of each part (its cosine to the running mean of earlier estimates, StepReport.signal)."""
    rows = []
    for row in history:
        for pair, value in (row.get("cosines") or {}).items():
            number = _finite(value)
            if number is not None:
                label = "~".join(PART_LABELS.get(p, p) for p in pair.split("~"))
                rows.append({"step": row["step"], "cosine": number, "pair": label})
        for part, value in (row.get("signal") or {}).items():
            number = _finite(value)
            if number is not None:
                rows.append({"step": row["step"], "cosine": number, "pair": f"{PART_LABELS.get(part, part)} vs running mean"})
    return pd.DataFrame(rows, columns=["step", "cosine", "pair"])


def training_figure(history: list[dict[str, Any]], device_type: str, reward_name: str) -> Any:
    """The Train tab's plots in one matplotlib figure: reward, gradient norms (log scale), cosines
    and signal, seconds and memory per iteration; full titles, units, integer iteration ticks."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(11, 6.2), layout="constrained")
    axes = figure.subplots(2, 2)
    reward, norms, cosines, cost = axes.flat
    frame = reward_frame(history)
    batch = frame[frame["series"] == "batch mean"]
    if len(batch):
        low = frame[frame["series"] == "mean - std"]["reward"].to_numpy()
        high = frame[frame["series"] == "mean + std"]["reward"].to_numpy()
        reward.fill_between(batch["step"], low, high, alpha=0.2, label="batch ± std")
        reward.plot(batch["step"], batch["reward"], marker=".", label="batch mean")
    evaluated = frame[frame["series"] == "eval (fixed seeds)"]
    if len(evaluated):
        reward.plot(evaluated["step"], evaluated["reward"], marker="o", label="eval (fixed seeds)")
    reward.set(title=f"Reward ({reward_name})", ylabel="reward")
    grads = gradient_frame(history)
    for part, rows in grads.groupby("part", sort=False):
        positive = rows[rows["norm"] > 0]
        if len(positive):
            norms.plot(positive["step"], positive["norm"], marker=".", label=part)
    norms.set_yscale("log")
    norms.set(title="Gradient norm per part, and update norm", ylabel="L2 norm (log scale)")
    pairs = cosine_frame(history)
    for pair, rows in pairs.groupby("pair", sort=False):
        cosines.plot(rows["step"], rows["cosine"], marker=".", label=pair)
    cosines.set(title="Cosine between parts; each part vs the running mean (signal)", ylabel="cosine", ylim=(-1.05, 1.05))
    steps = [r["step"] for r in history]
    seconds = [_finite(r.get("seconds")) for r in history]
    cost.plot(steps, seconds, marker=".", color="tab:blue", label="seconds / iteration")
    cost.set(title="Time and memory per iteration", ylabel="seconds per iteration")
    memory_key, memory_label = ("peak_memory_mb", "CUDA peak (MB)") if device_type == "cuda" else ("graph_memory_mb", "graph memory (MB)")
    memory = cost.twinx()
    memory.plot(steps, [_finite(r.get(memory_key)) for r in history], marker=".", color="tab:orange", label=memory_label)
    memory.set_ylabel(memory_label)
    for ax in axes.flat:
        ax.set_xlabel("iteration")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small", loc="best")
    if not history:
        figure.suptitle("Plots appear after the first iteration", fontsize="medium")
    memory.legend(fontsize="small", loc="lower right")
    return figure
