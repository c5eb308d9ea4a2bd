"""The Train tab's plots: run history rows (``StepReport.to_json_dict()``) -> long pandas tables -> one
matplotlib figure (reward, gradient norms, cosines and signal, time and memory per iteration, and the
reward-hacking guard's held-out reward, diversity and KL at every evaluation)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from .formatting import PART_LABELS, _finite

__all__ = ["reward_frame", "gradient_frame", "cosine_frame", "guard_frame", "training_figure"]

GUARD_SERIES = {"heldout_reward": "held-out reward", "diversity": "diversity", "kl": "KL to base"}
"""The guard's figures of a history row (StepReport fields) and their names in the plots."""


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


def guard_frame(history: list[dict[str, Any]]) -> pd.DataFrame:
    """Long table (step, value, series, accepted) of the guard's figures: the base model's at iteration 0
    (``before_guard``), then every evaluation's, with whether the guard accepted it."""
    base = history[0].get("before_guard") if history else None
    points = [(0, base, True)] if base else []
    points += [(row["step"], row, bool(row["guard"].get("accepted"))) for row in history if row.get("guard")]
    rows = []
    for step, figures, accepted in points:
        for key, series in GUARD_SERIES.items():
            number = _finite(figures.get(key))
            if number is not None:
                rows.append({"step": step, "value": number, "series": series, "accepted": accepted})
    return pd.DataFrame(rows, columns=["step", "value", "series", "accepted"])


def kept_step(history: list[dict[str, Any]]) -> int | None:
    """The iteration whose LoRA keep_best keeps, as the newest evaluation's verdict says (None before one)."""
    verdicts = [row["guard"] for row in history if row.get("guard")]
    return verdicts[-1].get("kept_step") if verdicts and verdicts[-1].get("keep_best") else None


def _plot_guard(heldout: Any, spread: Any, history: list[dict[str, Any]], heldout_name: str,
                min_diversity: float) -> None:
    """The guard's two panels: the held-out reward; the diversity (base = 1) with the KL on a second axis.
    Evaluations the guard refused are red crosses."""
    frame = guard_frame(history)
    panels = ((heldout, "held-out reward", "tab:green"), (spread, "diversity", "tab:purple"))
    for ax, series, color in panels:
        rows = frame[frame["series"] == series]
        ax.plot(rows["step"], rows["value"], marker="o", color=color, label=series)
        refused = rows[~rows["accepted"].astype(bool)]
        if len(refused):
            ax.plot(refused["step"], refused["value"], "x", color="tab:red", markersize=10, mew=2,
                    label="refused by the guard")
    base = frame[(frame["series"] == "held-out reward") & (frame["step"] == 0)]
    if len(base):
        heldout.axhline(base["value"].iloc[0], ls="--", color="gray", label="base model")
    heldout.set(title=f"Guard: held-out reward ({heldout_name}, not trained on)", ylabel="held-out reward")
    if min_diversity > 0:
        spread.axhline(min_diversity, ls="--", color="tab:red", alpha=0.6, label=f"min diversity {min_diversity:g}")
    spread.set(title="Guard: diversity of a prompt's images (base = 1) and KL", ylabel="diversity (base = 1)")
    kl = spread.twinx()
    rows = frame[frame["series"] == "KL to base"]
    kl.plot(rows["step"], rows["value"], marker=".", ls=":", color="tab:brown", label="KL to base (right)")
    kl.set_ylabel("KL to the base model (per image)")
    kl.legend(fontsize="small", loc="lower right")


def training_figure(history: list[dict[str, Any]], device_type: str, reward_name: str,
                    heldout_name: str = "auto", min_diversity: float = 0.0) -> Any:
    """The Train tab's plots in one matplotlib figure: reward, gradient norms (log scale), cosines
    and signal, seconds and memory per iteration, the guard's held-out reward and diversity / KL (the kept
    iteration as a green line); full titles, units, integer iteration ticks."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(11, 9.3), layout="constrained")
    axes = figure.subplots(3, 2)
    reward, norms, cosines, cost, heldout, spread = axes.flat
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
    _plot_guard(heldout, spread, history, heldout_name, min_diversity)
    kept = kept_step(history)
    if kept is not None:
        for ax in (reward, heldout):
            ax.axvline(kept, color="tab:green", ls=":", label=f"kept LoRA (iteration {kept})")
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
