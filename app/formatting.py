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


def format_sig(value: Any, digits: int = 3) -> str:
    """``value`` rounded to ``digits`` significant digits for a table cell.

    5069.039946895227 -> "5070", 0.0151234 -> "0.0151", 1.23e-07 -> "1.23e-07", 4 -> "4";
    None and NaN -> "–"; text is returned unchanged.
    """
    if value is None:
        return "–"
    if isinstance(value, (str, bool)):
        return str(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(number):
        return "–"
    if math.isinf(number):
        return "inf" if number > 0 else "-inf"
    text = f"{number:.{digits}g}"
    if "e+" in text and abs(number) < 1e6:  # 5.07e+03 -> 5070: easier to read in a table
        text = f"{float(text):.0f}"
    return text


# probe row key -> column header of the Diagnostics table, in display order
DIAGNOSTICS_COLUMNS: dict[str, str] = {
    "estimator": "estimator",
    "reference": "reference",
    "single_cosine": "single-estimate cosine",
    "cosine_to_full_bp": "cosine of mean",
    "mean_norm": "mean norm",
    "total_variance": "total variance",
    **{key: f"{PART_LABELS[part]} {what}" for part in ("fo", "ho", "zo", "lr")
       for key, what in ((f"norm_{part}", "norm"), (f"cos_{part}", "cosine"))},
    "seconds": "seconds / estimate",
    "peak_memory_mb": "peak memory (MB)",
    "graph_memory_mb": "graph memory (MB)",
    "reward_mean": "reward mean",
    "repeats": "repeats",
    "error": "error",
}

DIAGNOSTICS_NOTE = (
    "**Reference**: the mean of the full-bp estimates (the exact pathwise gradient, up to sampling noise) "
    "when the reward is differentiable; otherwise each estimator's own mean over its other repeats "
    "(reference *self*). **Single-estimate cosine**: the mean cosine of ONE estimate to the reference — "
    "near 1, a single estimate already points the right way; **near 0, the estimate is mostly noise**. "
    "**Cosine of mean**: the same for the mean over the repeats (agreement in expectation). "
    "FO / HO / ZO / LR columns: the same per part of the estimate."
)

SIGNAL_TITLE = "Signal of one estimate: cosine to the full-bp mean"


def _has_value(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, str):
        return bool(value.strip())
    try:
        return not math.isnan(float(value))
    except (TypeError, ValueError):
        return True


def diagnostics_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The probe rows as a table of text cells: readable headers, 3 significant digits, and only the
    columns that have a value in some row (keys unknown here are kept at the end, named by key)."""
    keys = [k for k in DIAGNOSTICS_COLUMNS if k == "estimator" or any(_has_value(r.get(k)) for r in rows)]
    keys += [k for r in rows for k in r if k not in DIAGNOSTICS_COLUMNS and _has_value(r.get(k))]
    keys = list(dict.fromkeys(keys))
    headers = [DIAGNOSTICS_COLUMNS.get(k, k.replace("_", " ")) for k in keys]
    return pd.DataFrame([[format_sig(r.get(k)) for k in keys] for r in rows], columns=headers)


def diagnostics_html(rows: list[dict[str, Any]]) -> str:
    """:func:`diagnostics_table` as an HTML table that wraps its headers to fit the page width."""
    if not rows:
        return ""
    table = diagnostics_table(rows).to_html(index=False, border=0, classes="rlr-table", escape=True)
    return f'<div class="rlr-table-wrap">{table}</div>'


SIGNAL_PARTS = {"cos_fo": "FO", "cos_ho": "HO", "cos_zo": "ZO", "cos_lr": "LR", "single_cosine": "total"}


def signal_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Long table (bar, cosine, part, estimator) for the signal bar chart: the single-estimate cosine to
    the reference of each part and of the total, one bar per (estimator, part), in probe order."""
    out = []
    for row in rows:
        for key, part in SIGNAL_PARTS.items():
            number = _finite(row.get(key))
            if number is not None:
                out.append({"bar": f"{row['estimator']} · {part}", "cosine": number, "part": part,
                            "estimator": row["estimator"]})
    return pd.DataFrame(out, columns=["bar", "cosine", "part", "estimator"])


def signal_title(rows: list[dict[str, Any]]) -> str:
    """Title of the signal chart, naming the reference the cosines are taken to."""
    references = {r.get("reference") for r in rows if r.get("reference")}
    if references and "full-bp" not in references:
        return "Signal of one estimate: cosine to the mean of its other estimates (no full-bp reference)"
    return SIGNAL_TITLE


PROBE_METRICS = {"total_variance": "total variance", "single_cosine": "single-estimate cosine",
                 "cosine_to_full_bp": "cosine of mean", "seconds": "seconds / estimate",
                 "peak_memory_mb": "peak memory (MB)"}


def probe_long(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Long table (estimator, value, metric) for the per-metric probe plot (metric: a PROBE_METRICS key)."""
    out = []
    for row in rows:
        for metric in PROBE_METRICS:
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
