"""Formatting only: reports and probe rows -> captions, status lines, HTML and pandas DataFrames for plots
(the Train tab's figure is :mod:`app.plots`)."""

from __future__ import annotations

import base64
import html
import io
import math
import time
from typing import Any

import pandas as pd

PART_LABELS = {"fo": "FO", "ho": "HO", "cv": "CV", "zo": "ZO", "lr": "LR", "total": "total"}


def captioned(images: list[Any] | None, prompts: list[Any], rewards: list[float] | None) -> list[tuple[Any, str]] | None:
    """(image, "prompt · reward r") pairs for a gallery."""
    if not images:
        return None
    rewards = rewards or [None] * len(images)
    return [
        (image, f"{str(prompts[i % len(prompts)])} · reward {format_sig(rewards[i])}")
        for i, image in enumerate(images)
    ]


def memory_text(row: dict[str, Any] | None, device_type: str) -> str:
    """One believable memory figure of an iteration: CUDA's peak allocation on a GPU, else the
    memory autograd held for backward (deterministic; the CPU's sampled RSS is not shown)."""
    if not row:
        return "–"
    if device_type == "cuda":
        return f"CUDA peak {format_megabytes(row.get('peak_memory_mb'))}"
    return f"graph {format_megabytes(row.get('graph_memory_mb'))}"


def format_megabytes(value: Any) -> str:
    """MB as text with a unit that keeps 3 significant digits readable (kB / MB / GB)."""
    number = _finite(value)
    if number is None:
        return "–"
    if number >= 1024:
        return f"{format_sig(number / 1024)} GB"
    if number < 1:
        return f"{format_sig(number * 1024)} kB"
    return f"{format_sig(number)} MB"


def format_duration(seconds: float) -> str:
    """Seconds as '45 s', '3 min 05 s' or '1 h 02 min'."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def status_line(run: Any, row: dict[str, Any] | None) -> str:
    """A short line: iteration, batch reward, evaluation against before, and a skip or clip note."""
    if row is None:
        return run.status
    parts = [f"Iteration {row['step']}/{row.get('total_steps') or run.config.steps}",
             f"reward {format_sig(row['reward_mean'])} ± {format_sig(row['reward_std'])}"]
    if row.get("eval_reward_mean") is not None:
        before = run.history[0].get("before_rewards") if run.history else None
        text = f"eval {format_sig(row['eval_reward_mean'])}"
        if before and all(_finite(b) is not None for b in before):
            text += f" (before {format_sig(sum(before) / len(before))})"
        parts.append(text)
    if row.get("skipped"):
        parts.append(f"update skipped: {row['skipped']}")
    elif row.get("message"):
        parts.append(str(row["message"]))
    return " · ".join(parts)


def progress_html(run: Any | None) -> str:
    """A progress bar with iteration, seconds per iteration and ETA (from Start on)."""
    if run is None:
        return _progress_markup(0, 1, "Idle: set up a run and press Start.")
    total = max(int(run.iterations_planned or run.config.steps), 1)
    first = run.config.steps - total  # a continued run starts later
    done = max(run.step - first, 0)
    elapsed = time.time() - run.started_at if run.started_at else 0.0
    if run.running and not run.history:
        return _progress_markup(0, total, f"Starting · 'before' images, then iteration 1 of {total} · {format_duration(elapsed)}")
    seconds = [r["seconds"] for r in run.history[-10:] if _finite(r.get("seconds")) is not None]
    per_iteration = sum(seconds) / len(seconds) if seconds else None
    text = f"Iteration {run.step}/{run.config.steps}"
    if per_iteration is not None:
        text += f" · {format_sig(per_iteration)} s/it"
    if run.running:
        remaining = (total - done) * per_iteration if per_iteration is not None else None
        text += f" · ETA {format_duration(remaining)}" if remaining is not None else ""
    else:
        text += " · " + ("stopped" if run.step < run.config.steps else "done") + f" after {format_duration(elapsed)}"
    return _progress_markup(done, total, text)


def _progress_markup(done: int, total: int, text: str) -> str:
    return (f'<div class="rlr-progress"><progress value="{done}" max="{total}"></progress>'
            f'<span>{html.escape(text)}</span></div>')


MAX_STRIP_IMAGES = 4
"""Images shown in a before / after strip (one row: both strips fit the first screen); the evaluation prompts
cycle over the seeds, so the first ones show every prompt before any repeats (a run evaluates 4 images per
prompt, docs/app.md)."""


def image_strip_html(title: str, images: list[tuple[Any, str]] | None, note: str) -> str:
    """A row of images at least 160 px wide, each with its caption (prompt, reward) under it; at most
    MAX_STRIP_IMAGES of them (the title says how many there are)."""
    if not images:
        return f'<div class="rlr-strip"><div class="rlr-strip-title">{html.escape(title)}</div>' \
               f'<div class="rlr-strip-note">{html.escape(note)}</div></div>'
    if len(images) > MAX_STRIP_IMAGES:
        title = f"{title} · {MAX_STRIP_IMAGES} of {len(images)} images"
    figures = "".join(
        f'<figure><img src="{_data_url(image)}" alt="{html.escape(caption)}"/>'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for image, caption in images[:MAX_STRIP_IMAGES]
    )
    return (f'<div class="rlr-strip"><div class="rlr-strip-title">{html.escape(title)}</div>'
            f'<div class="rlr-strip-row">{figures}</div></div>')


def _data_url(image: Any) -> str:
    """A PIL image as a data URL (PNG; at most 256 px, larger ones are scaled down)."""
    if max(image.size) > 256:
        image = image.copy()
        image.thumbnail((256, 256))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


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
    **{key: f"{PART_LABELS[part]} {what}" for part in ("fo", "ho", "cv", "zo", "lr")
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


def latest_evaluation(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The newest history row with the guard's verdict (an evaluation after an iteration); {} before one."""
    return next((row for row in reversed(history) if row.get("guard")), {})


def kept_reason_text(step: int, reason: str, evaluated: bool) -> str:
    """Why the guard keeps iteration ``step``'s LoRA: its own reason, or for iteration 0 once there were
    evaluations, that none of them beat the LoRA the run started from."""
    if step == 0 and evaluated:
        return ("iteration 0, the LoRA the run started from (untrained, or the one it continued): no evaluation "
                "so far had a higher eval reward within the guard")
    return reason


def guard_status(run: Any) -> str:
    """The reward-hacking guard in the Train tab (Markdown): which iteration's LoRA is kept and why, the latest
    evaluation's held-out reward, diversity and KL with the guard's refusals, and at the end whether the run
    stopped early and where the last iteration's LoRA is. Only what the reports and the Trainer carry."""
    if run is None or not run.history:
        return ""
    config, guard = run.config, run.trainer.guard
    base = run.history[0].get("before_guard") or {}
    evaluation = latest_evaluation(run.history)
    verdict = evaluation.get("guard") or {}
    kept_step = verdict.get("kept_step", guard.best_step)
    kept = kept_reason_text(kept_step, verdict.get("kept_reason", guard.kept_reason), bool(verdict))
    lines = [f"**Kept LoRA**: {kept}" if config.keep_best else
             f"**Best guarded evaluation**: {kept} (Keep best is off: the export is the last iteration's LoRA)"]
    if verdict:
        figures = (f"held-out reward {format_sig(evaluation.get('heldout_reward'))} "
                   f"(base {format_sig(base.get('heldout_reward'))}) · diversity {format_sig(evaluation.get('diversity'))} "
                   f"({verdict.get('space', 'pixels')}, base 1) · KL {format_sig(evaluation.get('kl'))}")
        judged = "accepted" if verdict.get("accepted") else "refused: " + "; ".join(verdict.get("refused") or [])
        lines.append(f"**Evaluation at iteration {verdict['step']}**: {figures} · {judged}")
    else:
        lines.append("**Guard**: held-out reward, diversity and KL appear at the first evaluation "
                     f"(base model: held-out reward {format_sig(base.get('heldout_reward'))})")
    if run.trainer.guard_note:
        lines.append(f"**Held-out reward**: {run.trainer.guard_note}")
    if verdict.get("stop"):
        early = [part for part in str(evaluation.get("message") or "").split("; ") if part.startswith("early stop")]
        why = early[0].removeprefix("early stop: ") if early else f"early-stop patience {config.early_stop_patience}"
        lines.append(f"**Stopped early** at iteration {verdict['step']}: {why}")
    if config.keep_best and run.finished:
        lines.append(f"The session holds and exports the kept LoRA (iteration {guard.best_step}); the last "
                     f"iteration's LoRA (iteration {run.step}) is in `{run.output_dir / 'lora-last'}` and on the Export tab.")
    return "\n\n".join(lines)


def run_summary(run: Any) -> dict[str, Any]:
    """JSON-able summary of a run for the /train API stream (one per iteration)."""
    last = run.history[-1] if run.history else {}
    evaluation = latest_evaluation(run.history)
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
        "heldout_reward": evaluation.get("heldout_reward"),
        "diversity": evaluation.get("diversity"),
        "kl": evaluation.get("kl"),
        "guard": evaluation.get("guard"),
        "before_guard": run.history[0].get("before_guard") if run.history else None,
        "guard_status": guard_status(run),
    }


ACCURACY_ROUNDS = 10
"""The head's held-out accuracy shown in the Preference tab is over this many last rounds."""


def counters_text(run: Any) -> str:
    """The Preference tab's status line: rounds, updates, clicks, the head's held-out accuracy, the settings and
    the click log (Markdown)."""
    session = getattr(run, "preference", None)
    if session is None:
        return "no rounds yet"
    c = run.counters
    accuracy = session.held_out_accuracy(last=ACCURACY_ROUNDS)
    figure = "-" if math.isnan(accuracy) else f"{accuracy:.0%}"
    return (f"rounds {c['rounds']} · updates {c['updates']} · clicks {c['clicks']} · the head predicted **{figure}** "
            f"of your last clicks before seeing them (last {ACCURACY_ROUNDS} rounds)  \n"
            f"mode {session.mode} · features {session.features}{group_weights_text(session.head)} · "
            f"{session.head_updates} update(s) per round from "
            f"the head · estimator {run.config.estimator} · learning rate {run.config.lr:g} · "
            f"KL to the base model {kl_text(run.config.kl_weight, run.config.kl_kind)} · "
            f"{check_text(session.check_seeds, c['undone'])} · "
            f"click log `{session.log.path}`")


def group_weights_text(head: Any) -> str:
    """How a head that weighs its feature groups from the clicks (selection cross-validated, or averaged: the expected
    weights) weighs them now:
    " (weighed from your clicks: embedding ×1, grid ×0, colour ×10)", with the colour cap's factor where it binds
    ("; colour's pull capped ×0.25"); empty for a head that weighs them alike."""
    weights = getattr(head, "group_weights", {})
    if getattr(head, "selection", "all") == "all" or len(weights) < 2:
        return ""
    shown = {name: f"{round(weight)}" if weight >= 10 else f"{weight:.2g}" for name, weight in weights.items()}
    scale = getattr(head, "colour_scale", 1.0)
    capped = f"; colour's pull capped ×{scale:.2g}" if scale < 1 else ""
    return f" (weighed from your clicks: {', '.join(f'{name} ×{text}' for name, text in shown.items())}{capped})"


def kl_text(kl_weight: float, kl_kind: str) -> str:
    """A click run's KL to the base model: its weight, and what it counts when it is on and not the whole KL."""
    return f"{kl_weight:g}" + (f" ({kl_kind}: a uniform colour shift is free)" if kl_weight > 0 and kl_kind == "local" else "")


def check_text(check_seeds: list[int], undone: int = 0) -> str:
    """How a click run's updates are checked (PreferenceSession check_seeds), and how many were undone."""
    if not check_seeds:
        return "every update kept (no check)"
    return f"updates checked on {len(check_seeds)} fixed seeds, {undone} undone"
