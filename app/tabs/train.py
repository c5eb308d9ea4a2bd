"""The Train tab: the form (from :data:`app.form.FIELDS`, with presets), Start / Stop / Predict memory,
the progress bar, the reward-hacking guard's status (which iteration's LoRA is kept and why), the before/after
image strips on fixed seeds, the training curves, and the Generate accordion (:mod:`app.tabs.generate`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import gradio as gr

from .. import form as train_form
from .. import formatting, plots, presets, runner, runs
from ..form import FIELD_BY_KEY, FIELDS, FORM_KEYS
from . import generate
from .events import TRAIN, GPU, UI_ONLY, Page, form_dict, session_of
from .widgets import default_reward, make_widget, reward_help

__all__ = ["TrainTab", "layout", "wire", "train_outputs"]

SECTIONS = [("schedule", "Coarse / mid / fine prompts", False), ("estimator", "Estimator", True),
            ("sampling", "Sampling", True), ("optimization", "Optimization", True),
            ("guard", "Reward-hacking guard", False)]
"""The form's accordions below the main fields: (section of app.form.Field, title, open)."""


@dataclass
class TrainTab:
    reward_help: Any
    start_btn: Any
    stop_btn: Any
    memory_btn: Any
    memory_note: Any
    progress: Any
    status: Any
    guard_status: Any
    before_strip: Any
    after_strip: Any
    plots: Any
    generate: generate.GenerateBox

    @property
    def outputs(self) -> list[Any]:
        return [self.progress, self.status, self.guard_status, self.before_strip, self.after_strip, self.plots]


def layout(page: Page) -> TrainTab:
    """The tab's components; fills ``page.widgets`` with the form's widgets."""
    widgets, hosted = page.widgets, page.hosted
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=420):
            preset_box = gr.Dropdown(choices=presets.preset_names(), value=presets.NO_PRESET, label="Preset",
                                     info="fills the form below", elem_id="preset")
            with gr.Row():
                for key in ("model", "reward"):
                    widgets[key] = make_widget(FIELD_BY_KEY[key], hosted)
            widgets["reward_options"] = make_widget(FIELD_BY_KEY["reward_options"], hosted)
            help_box = gr.Markdown(reward_help(default_reward())[0], elem_classes=["rlr-note"])
            widgets["prompt"] = make_widget(FIELD_BY_KEY["prompt"], hosted)
            for section, title, is_open in SECTIONS:
                with gr.Accordion(title, open=is_open):
                    with gr.Row(equal_height=False):
                        for field in FIELDS:
                            if field.section == section:
                                widgets[field.key] = make_widget(field, hosted)
            _wire_preset(page, preset_box)
        with gr.Column(scale=3, min_width=700):
            with gr.Row():
                start_btn = gr.Button("Start", variant="primary", elem_id="start-btn", scale=2)
                stop_btn = gr.Button("Stop", variant="stop", elem_id="stop-btn", scale=2)
                memory_btn = gr.Button("Predict memory", elem_id="memory-btn", scale=1)
            memory_note = gr.Markdown("", elem_id="memory-note", elem_classes=["rlr-note"])
            progress = gr.HTML(formatting.progress_html(None), elem_id="progress")
            status = gr.Markdown("Idle.", elem_id="status")
            before_strip = gr.HTML(formatting.image_strip_html("Before (LoRA off, fixed seeds)", None,
                                                               "Sampled when the run starts"), elem_id="before-images")
            after_strip = gr.HTML(formatting.image_strip_html("After (current LoRA, same seeds)", None,
                                                              "Appears at the first evaluation"), elem_id="after-images")
            # the guard's text under the strips, so that they stay on the first screen
            guard_status = gr.Markdown("", elem_id="guard-status", elem_classes=["rlr-note"])
            figure = gr.Plot(label="Training curves", show_label=False, elem_id="train-plots", format="png")
            box = generate.layout()
    return TrainTab(help_box, start_btn, stop_btn, memory_btn, memory_note, progress, status, guard_status,
                    before_strip, after_strip, figure, box)


def _wire_preset(page: Page, preset_box: Any) -> None:
    def on_preset(name: str, *values: Any) -> list:
        filled = presets.apply_preset(name, dict(zip(FORM_KEYS, values)))
        return [gr.update(value=filled[key], visible=filled[key] is not None)
                if FIELD_BY_KEY[key].is_estimator_option else gr.update(value=filled[key]) for key in FORM_KEYS]

    # twice: the first fill changes model / reward / estimator, whose own .change events reset
    # the reward options and the estimator fields; the second fill comes after them
    preset_inputs = [preset_box, *(page.widgets[key] for key in FORM_KEYS)]
    preset_outputs = [page.widgets[key] for key in FORM_KEYS]
    preset_box.change(on_preset, inputs=preset_inputs, outputs=preset_outputs, queue=False, **UI_ONLY).then(
        on_preset, inputs=preset_inputs, outputs=preset_outputs, queue=False, **UI_ONLY)


def train_outputs(run: Any) -> tuple:
    """Progress, status, the guard's status, before/after strips and the figure of ``run``."""
    device = getattr(run.chain, "device", None)
    device_type = getattr(device, "type", "cpu")
    after_note = (f"Refreshed every {run.config.eval_every} iterations (and at the end)"
                  if run.config.eval_every else "Shown at the end of the run")
    after_title = f"After (current LoRA at iteration {run.after_step}, same seeds)" if run.after else "After (current LoRA, same seeds)"
    kept = runner.lora_iteration(run)
    if run.after and run.config.keep_best and not run.running and kept != run.after_step:  # back to the kept LoRA
        after_title = f"After (LoRA at iteration {run.after_step}, same seeds; the session keeps iteration {kept}'s)"
    return (
        formatting.progress_html(run),
        run.status,
        formatting.guard_status(run),
        formatting.image_strip_html("Before (LoRA off, fixed seeds)", run.before, "Sampled when the run starts"),
        formatting.image_strip_html(after_title, run.after, after_note),
        plots.training_figure(run.history, device_type, run.config.reward, run.config.heldout_reward,
                              run.config.min_diversity),
    )


def wire(page: Page, tab: TrainTab) -> None:
    """Start, Predict memory, Stop, and the form's own events (reward help, estimator options, model defaults)."""
    hosted, widgets = page.hosted, page.widgets

    def on_start(request: gr.Request, *values: Any) -> Iterator[tuple]:
        session = session_of(request)
        values_by_key = form_dict(values)
        last = None
        try:
            config = runner.config_from_form(values_by_key, hosted)
            yield (formatting.progress_html(None).replace("Idle: set up a run and press Start.", "Starting …"),
                   "Starting: loading the model", "", gr.skip(), gr.skip(), gr.skip())
            for last in runner.train_stream(session, config, hosted, bool(values_by_key.get("continue_lora"))):
                yield train_outputs(last)
        except Exception:
            # the page already said "Starting": show the session's run as it is again, then the toast
            current = runs.session_run(session)
            yield (formatting.progress_html(current), current.status if current else "Idle.",
                   formatting.guard_status(current),
                   gr.skip(), gr.skip(), gr.skip())
            raise
        if last is not None and last.step < last.config.steps:
            gr.Info(f"Stopped at iteration {last.step}; {runner.kept_lora_text(last)}.", title="Stopped")

    page.listen(tab.start_btn.click, on_start, page.form, tab.outputs, show_progress="hidden", **TRAIN, **UI_ONLY)

    def on_memory(request: gr.Request, *values: Any) -> str:
        return runner.predict_memory(session_of(request), form_dict(values), hosted)

    page.listen(tab.memory_btn.click, on_memory, page.form, [tab.memory_note], **GPU, **UI_ONLY)

    def on_stop(request: gr.Request = None) -> None:
        gr.Info(runner.stop(session_of(request)), title="Stop", duration=6)  # no outputs: nothing to mark

    tab.stop_btn.click(on_stop, inputs=None, outputs=None, concurrency_limit=None, **UI_ONLY)

    def on_reward(name: str) -> tuple[str, str]:
        return reward_help(name)

    page.listen(widgets["reward"].change, on_reward, widgets["reward"], [tab.reward_help, widgets["reward_options"]],
                queue=False, **UI_ONLY)

    option_fields = [f for f in FIELDS if f.is_estimator_option]

    def on_estimator(estimator: str, reward: str, batch: Any) -> list:
        values = train_form.estimator_field_values(estimator)
        updates = [gr.update(visible=estimator in f.estimators, value=values[f.key]) for f in option_fields]
        step = train_form.batch_step(estimator, reward)
        low = train_form.minimum_batch(estimator, reward)
        try:
            current = int(batch)
        except (TypeError, ValueError):
            current = low
        value = max(low, current - current % step)
        updates.append(gr.update(minimum=step, step=step, value=value))
        return updates

    for trigger in (widgets["estimator"], widgets["reward"]):
        trigger.change(on_estimator, inputs=[widgets["estimator"], widgets["reward"], widgets["batch_size"]],
                       outputs=[widgets[f.key] for f in option_fields] + [widgets["batch_size"]], queue=False, **UI_ONLY)

    def on_model(model: str) -> Any:
        from rlr_core.models import model_defaults

        return gr.update(value=model_defaults(model)["num_steps"])

    widgets["model"].change(on_model, inputs=widgets["model"], outputs=widgets["num_steps"], queue=False, **UI_ONLY)
