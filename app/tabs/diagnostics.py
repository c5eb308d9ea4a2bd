"""The Diagnostics tab: repeated gradient estimates on the session's model and reward (variance, agreement
with full backprop, seconds and memory per estimator), as a table and two bar charts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from .. import formatting, runner
from .events import GPU, UI_ONLY, Page, form_dict, session_of

__all__ = ["DiagnosticsTab", "layout", "wire"]


@dataclass
class DiagnosticsTab:
    estimators: Any
    repeats: Any
    button: Any
    table: Any
    signal: Any
    plot: Any
    metric: Any
    rows: Any


def layout(page: Page) -> DiagnosticsTab:
    from rlr_core.estimators import list_estimators

    names = list_estimators()
    gr.Markdown(
        "Repeated gradient estimates on the current model and reward: variance, agreement with full "
        "backprop (when the reward is differentiable), seconds and memory per estimator.",
        elem_classes=["rlr-note"],
    )
    with gr.Row():
        estimators = gr.CheckboxGroup(names, label="Estimators (full-bp is added as the reference)",
                                      value=[n for n in ("rlr", "rlr-paper", "truncated-bp", "zo") if n in names])
        repeats = gr.Slider(2, min(page.limit["probe_repeats"], 32), value=4, step=1, label="Repeats")
    button = gr.Button("Run probe", elem_id="diag-btn")
    gr.Markdown(formatting.DIAGNOSTICS_NOTE, elem_classes=["rlr-note"])
    table = gr.HTML("", label="Estimators", elem_id="diag-table")
    signal = gr.BarPlot(x="bar", y="cosine", color="part", title=formatting.SIGNAL_TITLE,
                        x_title="estimator · part", y_title="cosine of one estimate to the reference",
                        color_title="part", y_lim=[-1, 1], x_label_angle=-40, height=340, elem_id="diag-signal")
    plot = gr.BarPlot(x="estimator", y="value", color="estimator", title="Probe (per metric)",
                      x_title="estimator", y_title="value", height=260, elem_id="diag-plot")
    metric = gr.Radio([(label, key) for key, label in formatting.PROBE_METRICS.items()],
                      value="total_variance", label="Plot metric")
    rows = gr.State([])
    return DiagnosticsTab(estimators, repeats, button, table, signal, plot, metric, rows)


def on_diag_metric(metric: str, rows: list) -> Any:
    """The probe rows of one metric for the per-metric chart (None when no estimator has it)."""
    long = formatting.probe_long(rows or [])
    chosen = long[long["metric"] == metric]
    return chosen if len(chosen) else None


def wire(page: Page, tab: DiagnosticsTab) -> None:
    hosted = page.hosted

    def on_diag(request: gr.Request, names: list[str], repeats: int, metric: str, *values: Any) -> tuple:
        rows = runner.diagnostics(session_of(request), form_dict(values), hosted, list(names or []), repeats)
        signal = formatting.signal_frame(rows)
        signal_plot = gr.BarPlot(value=signal if len(signal) else None, sort=list(signal["bar"]) or None,
                                 title=formatting.signal_title(rows))
        return formatting.diagnostics_html(rows), signal_plot, on_diag_metric(metric, rows), rows

    page.listen(tab.button.click, on_diag, [tab.estimators, tab.repeats, tab.metric, *page.form],
                [tab.table, tab.signal, tab.plot, tab.rows], **GPU, **UI_ONLY)

    tab.metric.change(on_diag_metric, inputs=[tab.metric, tab.rows], outputs=tab.plot, queue=False, **UI_ONLY)
