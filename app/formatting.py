"""Formatting only: reports and probe rows -> captions, status lines and pandas DataFrames for plots."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

PART_LABELS = {"fo": "FO", "ho": "HO", "zo": "ZO", "lr": "LR", "total": "total"}


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(number):
        return "nan"
    return f"{number:.{digits}g}"


def captioned(images: list[Any] | None, prompts: list[Any], rewards: list[float] | None) -> list[tuple[Any, str]] | None:
    """(image, "prompt · reward r") pairs for a gallery."""
    if not images:
        return None
    rewards = rewards or [None] * len(images)
    return [
        (image, f"{str(prompts[i % len(prompts)])} · reward {_fmt(rewards[i], 3)}")
        for i, image in enumerate(images)
    ]


def status_line(run: Any, row: dict[str, Any] | None) -> str:
    """One line: iteration, reward mean ± std, seconds and memory, evaluation, messages."""
    if row is None:
        return run.status
    parts = [
        f"iteration {row['step']}/{row.get('total_steps') or run.config.steps}",
        f"reward {_fmt(row['reward_mean'])} ± {_fmt(row['reward_std'], 3)}",
        f"{_fmt(row['seconds'], 3)} s/it",
        f"peak {_fmt(row['peak_memory_mb'], 4)} MB",
        f"graph {_fmt(row.get('graph_memory_mb'), 4)} MB",
    ]
    if row.get("eval_reward_mean") is not None:
        before = run.history[0].get("before_rewards") if run.history else None
        text = f"eval reward {_fmt(row['eval_reward_mean'])}"
        if before:
            text += f" (before {_fmt(sum(before) / len(before))})"
        parts.append(text)
    if row.get("skipped"):
        parts.append(f"skipped: {row['skipped']}")
    elif row.get("message"):
        parts.append(str(row["message"]))
    return " · ".join(parts)


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


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
    """Long table (step, cosine, pair): cosine between estimator parts, e.g. FO~HO."""
    rows = []
    for row in history:
        for pair, value in (row.get("cosines") or {}).items():
            number = _finite(value)
            if number is not None:
                label = "~".join(PART_LABELS.get(p, p) for p in pair.split("~"))
                rows.append({"step": row["step"], "cosine": number, "pair": label})
    return pd.DataFrame(rows, columns=["step", "cosine", "pair"])


def cost_frame(history: list[dict[str, Any]]) -> pd.DataFrame:
    """Long table (step, value, metric): seconds per iteration, peak memory and graph memory (MB).

    Peak memory is CUDA's peak allocation (or sampled RSS growth on CPU, where the allocator's
    reuse makes it noisy); graph memory is what autograd held for backward (deterministic).
    """
    rows = []
    for row in history:
        seconds = _finite(row.get("seconds"))
        if seconds is not None:
            rows.append({"step": row["step"], "value": seconds, "metric": "seconds"})
        for key, label in (("peak_memory_mb", "peak MB"), ("graph_memory_mb", "graph MB")):
            memory = _finite(row.get(key))
            if memory is not None:
                rows.append({"step": row["step"], "value": memory, "metric": label})
    return pd.DataFrame(rows, columns=["step", "value", "metric"])


def seconds_frame(history: list[dict[str, Any]]) -> pd.DataFrame:
    frame = cost_frame(history)
    return frame[frame["metric"] == "seconds"].reset_index(drop=True)


def memory_frame(history: list[dict[str, Any]]) -> pd.DataFrame:
    frame = cost_frame(history)
    return frame[frame["metric"] != "seconds"].reset_index(drop=True)


PROBE_COLUMNS = ["estimator", "repeats", "total_variance", "cosine_to_full_bp", "mean_norm", "seconds",
                 "peak_memory_mb", "graph_memory_mb", "reward_mean", "error"]


def probe_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The probe table (one row per estimator)."""
    frame = pd.DataFrame(rows)
    for column in PROBE_COLUMNS:
        if column not in frame:
            frame[column] = None
    return frame[PROBE_COLUMNS]


def probe_long(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Long table (estimator, value, metric) for the probe plot: variance, cosine, seconds, memory."""
    out = []
    for row in rows:
        for metric in ("total_variance", "cosine_to_full_bp", "seconds", "peak_memory_mb"):
            number = _finite(row.get(metric))
            if number is not None:
                out.append({"estimator": row["estimator"], "value": number, "metric": metric})
    return pd.DataFrame(out, columns=["estimator", "value", "metric"])


def run_summary(run: Any) -> dict[str, Any]:
    """JSON-able summary of a run for the /train API stream (one per iteration)."""
    last = run.history[-1] if run.history else {}
    return {
        "run_id": run.id,
        "step": run.step,
        "total_steps": run.config.steps,
        "status": run.status,
        "running": run.running,
        "finished": run.finished,
        "reward_mean": last.get("reward_mean"),
        "reward_std": last.get("reward_std"),
        "grad_norms": last.get("grad_norms"),
        "cosines": last.get("cosines"),
        "update_norm": last.get("update_norm"),
        "seconds": last.get("seconds"),
        "peak_memory_mb": last.get("peak_memory_mb"),
        "eval_rewards": last.get("eval_rewards"),
        "before_rewards": run.history[0].get("before_rewards") if run.history else None,
        "lora_dir": str(run.output_dir / "lora"),
    }


def counters_text(run: Any) -> str:
    if run is None:
        return "no rounds yet"
    c = run.counters
    log = getattr(getattr(run.preference, "log", None), "path", None)
    text = f"rounds {c['rounds']} · updates {c['updates']} · clicks {c['clicks']}"
    if log is not None:
        text += f" · click log {log}"
    return text
