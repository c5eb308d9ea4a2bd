"""The Gradio UI: ``build_app(hosted)`` returns the ``gr.Blocks`` of RLR Studio.

Tabs: Train (progress, before/after images on fixed seeds, plots, Start/Stop, generate),
Preference (click rounds), Diagnostics (estimator probe), Export (LoRA / config download and
upload). The Train form's widgets and the ``/train`` API parameters come from one table
(:mod:`app.form`). Named API endpoints: ``/train`` (streams one JSON update per iteration plus a
final one) and ``/generate`` (images); they raise on bad input. In the browser, bad input is a
toast titled with the field and the outputs keep their last good values. Heavy events run in the
worker pool of :mod:`app.workers` (queues ``work`` and ``train``; :class:`app.state.WorkLock`
orders the work itself). Handlers only format and dispatch; the work is done
by :mod:`app.runner` through ``rlr_core``.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import threading
import time
import traceback
from typing import Any, Callable, Iterator

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import gradio as gr  # noqa: E402

from . import form as train_form  # noqa: E402
from . import formatting, presets, runner, state  # noqa: E402
from .form import FIELD_BY_KEY, FIELDS, FORM_DEFAULTS, FORM_KEYS, Field  # noqa: E402
from .settings import (DEFAULT_PROMPTS, MODEL_PRESETS, TINY_MISSING_MESSAGE, caps, hosted_models,  # noqa: E402
                       run_folder_seconds, tiny_model_available)
from .state import FieldError  # noqa: E402
from .workers import in_worker  # noqa: E402

log = logging.getLogger("rlr_studio")

MAX_TRAININGS = 4
GPU = {"concurrency_limit": 8, "concurrency_id": "work"}
"""Short heavy requests (generate, rounds, diagnostics, export): app.state.WorkLock orders the actual work."""
TRAIN = {"concurrency_limit": MAX_TRAININGS, "concurrency_id": "train"}
"""Trainings: up to MAX_TRAININGS at once take turns per iteration (WorkLock); short requests go between."""
UI_ONLY = {"api_visibility": "undocumented"}

CSS = """
.rlr-note {opacity: 0.8; font-size: 0.9em}
.rlr-table-wrap {width: 100%}
.rlr-table {width: 100%; table-layout: fixed; border-collapse: collapse; font-size: 0.8em}
.rlr-table th, .rlr-table td {padding: 3px 4px; text-align: right; overflow-wrap: anywhere; vertical-align: bottom}
.rlr-table th:first-child, .rlr-table td:first-child {text-align: left; width: 9em}
.rlr-table tbody tr {border-top: 1px solid var(--border-color-primary)}
.rlr-progress {display: flex; align-items: center; gap: 10px; font-size: 0.95em}
.rlr-progress progress {flex: 0 0 40%; height: 14px}
.rlr-strip-title {font-weight: 600; font-size: 0.9em; margin: 2px 0}
.rlr-strip-note {opacity: 0.75; font-size: 0.9em; min-height: 2em}
.rlr-strip-row {display: flex; flex-wrap: wrap; gap: 8px}
.rlr-strip figure {margin: 0; width: 164px}
.rlr-strip img {width: 164px; height: 164px; image-rendering: pixelated; border-radius: 4px; display: block}
.rlr-strip figcaption {font-size: 0.78em; line-height: 1.25; overflow-wrap: anywhere; margin-top: 2px}
#status p {margin: 0}
"""


# Runs once when the page loads (launch(js=...)): feedback on Start before the server answers (the
# queue may be busy), so the progress bar says "Starting" at once. A start the server refuses (an error
# toast) leaves the outputs as they were, so the bar gets its previous text back.
PAGE_JS = """() => {
  const STARTING = 'Starting … (waiting for the server)';
  let saved = null;
  document.addEventListener('click', (event) => {
    if (!event.target.closest('#start-btn')) return;
    const bar = document.querySelector('#progress .rlr-progress');
    if (bar) {
      const span = bar.querySelector('span'), progress = bar.querySelector('progress');
      saved = {bar: bar, text: span.innerText, value: progress.getAttribute('value'),
               toasts: document.querySelectorAll('.toast-body.error').length};
      span.innerText = STARTING;
      progress.removeAttribute('value');
    }
  }, true);
  new MutationObserver(() => {
    if (!saved) return;
    if (!document.contains(saved.bar)) { saved = null; return; }  // the server re-rendered the bar
    if (document.querySelectorAll('.toast-body.error').length <= saved.toasts) return;  // no new error yet
    const span = saved.bar.querySelector('span');
    if (span.innerText === STARTING) {
      span.innerText = saved.text;
      if (saved.value !== null) saved.bar.querySelector('progress').setAttribute('value', saved.value);
    }
    saved = null;
  }).observe(document.body, {childList: true, subtree: true});
}"""


# ----------------------------------------------------------------------------------- errors
def _title(error: BaseException) -> str:
    if isinstance(error, FieldError):
        return f"Check '{error.field}'"
    if isinstance(error, (ValueError, TypeError)):
        return "Invalid input"
    return "Something went wrong (the server keeps running)"


def _message(error: BaseException) -> str:
    if not isinstance(error, (ValueError, TypeError)):
        log.error("unexpected error:\n%s", traceback.format_exc())
        return f"{type(error).__name__}: {error}"
    return str(error)


def api_errors(fn: Callable) -> Callable:
    """For API endpoints: every exception becomes ``gr.Error`` titled with the field (the client raises)."""
    def to_gradio(error: BaseException) -> gr.Error:
        if isinstance(error, gr.Error):
            return error
        return gr.Error(_message(error), title=_title(error), print_exception=False)

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen_wrapper(*args: Any, **kwargs: Any) -> Iterator[Any]:
            try:
                yield from fn(*args, **kwargs)
            except GeneratorExit:
                raise
            except Exception as error:  # noqa: BLE001 - shown to the client
                raise to_gradio(error) from error

        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - shown to the client
            raise to_gradio(error) from error

    return wrapper


def capture_errors(fn: Callable, outputs: int) -> Callable:
    """For browser events: ``fn``'s outputs plus one more, the error of the call as (title, message)
    or None. On an error the ``outputs`` components are left as they were (``gr.skip``); the event's
    ``.then(raise_captured)`` turns the error into a toast, from an event without outputs, so no
    component shows an error state."""
    def pack(result: Any) -> tuple:
        values = result if outputs != 1 else (result,)
        return (*(values if outputs else ()), None)

    def failed(error: BaseException) -> tuple:
        return (*(gr.skip() for _ in range(outputs)), (_title(error), _message(error)))

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen_wrapper(*args: Any, **kwargs: Any) -> Iterator[Any]:
            try:
                for result in fn(*args, **kwargs):
                    yield pack(result)
            except GeneratorExit:
                raise
            except Exception as error:  # noqa: BLE001 - shown to the user
                yield failed(error)

        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return pack(fn(*args, **kwargs))
        except Exception as error:  # noqa: BLE001 - shown to the user
            return failed(error)

    return wrapper


def raise_captured(error: tuple[str, str] | None) -> None:
    """The toast of a captured error (an event with no outputs, so nothing gets an error badge)."""
    if error:
        title, message = error
        raise gr.Error(message, title=title, print_exception=False)


def worker(fn: Callable) -> Callable:
    """``fn`` run in the worker pool; a cancelled call aborts the session's work (app.workers)."""
    def on_cancel(args: tuple, kwargs: dict) -> None:
        request = next((a for a in (*args, *kwargs.values()) if isinstance(a, gr.Request)), None)
        runner.cancel(session_of(request))

    return in_worker(fn, on_cancel)


def session_of(request: gr.Request | None) -> str:
    """The browser session's id (one per tab / gradio_client); per-session state is only this id."""
    session = getattr(request, "session_hash", None) if request is not None else None
    return str(session or "anonymous")


# ----------------------------------------------------------------------------------- widgets
def make_widget(field: Field, hosted: bool) -> Any:
    """The Gradio component of one form field."""
    common = {"label": field.label, "elem_id": field.key.replace("_", "-")}
    if field.info:
        common["info"] = field.info
    default = FORM_DEFAULTS[field.key]
    if field.is_estimator_option:
        visible = FORM_DEFAULTS["estimator"] in field.estimators
        value = train_form.estimator_field_values(FORM_DEFAULTS["estimator"])[field.key]
        if field.kind == "choice":
            return gr.Dropdown(choices=list(field.choices), value=value, visible=visible, **common)
        if field.kind == "int-or-auto":
            return gr.Dropdown(choices=["auto", "1", "2", "3", "4", "6", "8"], value=value, allow_custom_value=True,
                               visible=visible, **common)
        if field.kind in ("int", "float"):
            return gr.Number(value=value, precision=0 if field.kind == "int" else None, visible=visible, **common)
        return gr.Textbox(value=value or "", visible=visible, **common)
    if field.key == "model":
        choices = MODEL_PRESETS + [(m, m) for m in hosted_models() if m not in dict(MODEL_PRESETS).values()] if hosted else MODEL_PRESETS
        return gr.Dropdown(choices=choices, value=default, allow_custom_value=not hosted, scale=2, **common)
    if field.key == "reward":
        from rlr_core.rewards import reward_names

        return gr.Dropdown(choices=reward_names(), value=default, allow_custom_value=not hosted, scale=2, **common)
    if field.key == "lora_targets":  # a named set, or module-name suffixes typed in ("attn2.to_k, attn2.to_v")
        return gr.Dropdown(choices=list(field.choices), value=default, allow_custom_value=True, **common)
    if field.kind == "choice":
        return gr.Dropdown(choices=list(field.choices), value=default, **common)
    if field.kind == "bool":
        return gr.Checkbox(value=default, label=field.label, elem_id=common["elem_id"])
    if field.kind == "lines":
        return gr.Textbox(value=default, lines=3, placeholder=DEFAULT_PROMPTS, **common)
    if field.kind in ("int", "float"):
        maximum = field.maximum_for(hosted)
        if field.minimum is not None and maximum is not None and maximum <= 1000:
            shown_max = min(maximum, 100) if field.kind == "int" else maximum
            return gr.Slider(field.minimum, shown_max, value=default, step=1 if field.kind == "int" else 0.05, **common)
        return gr.Number(value=default, precision=0 if field.kind == "int" else None, minimum=field.minimum,
                         maximum=maximum, **common)
    if field.key == "reward_options":
        return gr.Textbox(value=_reward_help(default_reward())[1], **common)
    return gr.Textbox(value="" if default is None else default, placeholder="model default" if default is None else None,
                      **common)


def default_reward() -> str:
    return FORM_DEFAULTS["reward"]


def _reward_help(name: str) -> tuple[str, str]:
    from rlr_core.rewards import list_rewards

    for info in list_rewards():
        if info["name"] == name:
            lines = [f"**{name}** — {info['description']}"]
            for key, opt in info["options"].items():
                choices = f" (one of {', '.join(map(str, opt['choices']))})" if opt.get("choices") else ""
                lines.append(f"- `{key}` ({opt['type']}, default `{opt['default']!r}`): {opt['help']}{choices}")
            defaults = {k: o["default"] for k, o in info["options"].items()}
            return "\n".join(lines), json.dumps(defaults) if defaults else "{}"
    return f"**{name}**: plug-in reward (`module:function` or `file.py`); options `function`, `differentiable`.", "{}"


def _train_outputs(run: Any) -> tuple:
    device = getattr(run.chain, "device", None)
    device_type = getattr(device, "type", "cpu")
    after_note = (f"Refreshed every {run.config.eval_every} iterations (and at the end)"
                  if run.config.eval_every else "Shown at the end of the run")
    after_title = f"After (current LoRA at iteration {run.after_step}, same seeds)" if run.after else "After (current LoRA, same seeds)"
    return (
        formatting.progress_html(run),
        run.status,
        formatting.image_strip_html("Before (LoRA off, fixed seeds)", run.before, "Sampled when the run starts"),
        formatting.image_strip_html(after_title, run.after, after_note),
        formatting.training_figure(run.history, device_type, run.config.reward),
    )


# ----------------------------------------------------------------------------------- the app
def build_app(hosted: bool = False, preload: bool = True) -> gr.Blocks:
    """Build the Blocks. ``hosted``: refuse local paths and plug-in rewards, cap sizes.
    ``preload``: load the default tiny model in the background (local files only) so the first
    Start shows an update within seconds."""
    from rlr_core.estimators import list_estimators

    limit = caps(hosted)
    estimator_names = list_estimators()
    tiny_ok = tiny_model_available()
    if preload and tiny_ok:
        threading.Thread(target=_preload, name="rlr-preload", daemon=True).start()
    start_janitor(hosted)
    # Gradio's own file cache (uploads, served images) is emptied of files older than a run folder's lifetime
    cache_expiry = (600, run_folder_seconds(hosted)) if hosted else None

    with gr.Blocks(title="RLR Studio", analytics_enabled=False, delete_cache=cache_expiry) as demo:
        gr.Markdown(
            "## RLR Studio · fine-tune a text-to-image model against a reward with **RLR** and watch it learn\n"
            "Defaults: the bundled tiny model and the weight-free *saturation* reward (trains on a CPU, offline)."
            + (" **Hosted mode**: the offered models and built-in rewards only; sizes and work are capped." if hosted else "")
        )
        if not tiny_ok:
            gr.Markdown(f"⚠️ {TINY_MISSING_MESSAGE}", elem_classes=["rlr-note"])

        widgets: dict[str, Any] = {}
        with gr.Tabs():
            # ------------------------------------------------------------------ Train
            with gr.Tab("Train", id="train"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=2, min_width=420):
                        preset_box = gr.Dropdown(choices=presets.preset_names(), value=presets.NO_PRESET, label="Preset",
                                                 info="fills the form below", elem_id="preset")
                        with gr.Row():
                            for key in ("model", "reward"):
                                widgets[key] = make_widget(FIELD_BY_KEY[key], hosted)
                        widgets["reward_options"] = make_widget(FIELD_BY_KEY["reward_options"], hosted)
                        reward_help = gr.Markdown(_reward_help(default_reward())[0], elem_classes=["rlr-note"])
                        widgets["prompt"] = make_widget(FIELD_BY_KEY["prompt"], hosted)
                        sections = [("schedule", "Coarse / mid / fine prompts", False), ("estimator", "Estimator", True),
                                    ("sampling", "Sampling", True), ("optimization", "Optimization", True)]
                        for section, title, is_open in sections:
                            with gr.Accordion(title, open=is_open):
                                with gr.Row(equal_height=False):
                                    for field in FIELDS:
                                        if field.section == section:
                                            widgets[field.key] = make_widget(field, hosted)

                        def on_preset(name: str, *values: Any) -> list:
                            filled = presets.apply_preset(name, dict(zip(FORM_KEYS, values)))
                            return [gr.update(value=filled[key], visible=filled[key] is not None)
                                    if FIELD_BY_KEY[key].is_estimator_option else gr.update(value=filled[key]) for key in FORM_KEYS]

                        # twice: the first fill changes model / reward / estimator, whose own .change events reset
                        # the reward options and the estimator fields; the second fill comes after them
                        preset_inputs = [preset_box, *(widgets[key] for key in FORM_KEYS)]
                        preset_outputs = [widgets[key] for key in FORM_KEYS]
                        preset_box.change(on_preset, inputs=preset_inputs, outputs=preset_outputs, queue=False, **UI_ONLY).then(
                            on_preset, inputs=preset_inputs, outputs=preset_outputs, queue=False, **UI_ONLY)
                    with gr.Column(scale=3, min_width=700):
                        with gr.Row():
                            start_btn = gr.Button("Start", variant="primary", elem_id="start-btn", scale=2)
                            stop_btn = gr.Button("Stop", variant="stop", elem_id="stop-btn", scale=2)
                            memory_btn = gr.Button("Predict memory", elem_id="memory-btn", scale=1)
                        memory_note = gr.Markdown("", elem_id="memory-note", elem_classes=["rlr-note"])
                        progress = gr.HTML(formatting.progress_html(None), elem_id="progress")
                        status = gr.Markdown("Idle.", elem_id="status")
                        before_strip = gr.HTML(formatting.image_strip_html("Before (LoRA off, fixed seeds)", None,
                                                                           "Sampled when the run starts"),
                                               elem_id="before-images")
                        after_strip = gr.HTML(formatting.image_strip_html("After (current LoRA, same seeds)", None,
                                                                          "Appears at the first evaluation"),
                                              elem_id="after-images")
                        plots = gr.Plot(label="Training curves", show_label=False, elem_id="train-plots", format="png")
                        with gr.Accordion("Generate", open=False):
                            with gr.Row():
                                gen_prompt = gr.Textbox(value=FORM_DEFAULTS["prompt"], label="Prompt", elem_id="gen-prompt", scale=3)
                                gen_seed = gr.Number(value=0, precision=0, minimum=0, label="Seed", scale=1)
                                gen_lora = gr.Checkbox(value=True, label="Use this session's LoRA", scale=1)
                                gen_btn = gr.Button("Generate", scale=1, elem_id="generate-btn")
                            gen_gallery = gr.Gallery(label="Generated", columns=4, height=240, format="png", elem_id="gen-gallery")

            form = [widgets[key] for key in FORM_KEYS]

            # ------------------------------------------------------------------ Preference
            with gr.Tab("Preference", id="preference"):
                gr.Markdown(
                    "Rounds of images from the current model (this session's LoRA, or a fresh one from the Train "
                    "settings). Click the images you prefer (or tick their numbers), then **Update**: one training "
                    "iteration from your clicks; the next round shows the effect. Clicks are saved to a JSONL log.",
                    elem_classes=["rlr-note"],
                )
                with gr.Row():
                    pref_k = gr.Slider(2, limit["pref_k"], value=4, step=2, label="Images per round", elem_id="pref-k")
                    pref_mode = gr.Radio(["direct", "learned"], value="direct", label="Mode",
                                         info="direct: clicks are the reward; learned: a Bradley-Terry head fitted on all clicks")
                    pref_pick = gr.Radio(["preferred (several)", "best one"], value="preferred (several)", label="Choose")
                    pref_features = gr.Radio(["pixels", "auto"], value="pixels", label="Learned-mode features",
                                             info="pixels: weight-free; auto: tiny-clip for the tiny model, else CLIP when its weights are available")
                pref_new = gr.Button("New round", elem_id="pref-new")
                pref_gallery = gr.Gallery(label="Click the images you prefer", columns=4, height=300, format="png",
                                          allow_preview=False, elem_id="pref-gallery", interactive=False)
                pref_choice = gr.CheckboxGroup(choices=[], label="Preferred images", elem_id="pref-choices")
                pref_update = gr.Button("Update (one training iteration from these clicks)", variant="primary", elem_id="pref-update")
                pref_counters = gr.Markdown("no rounds yet", elem_id="pref-counters")

            # ------------------------------------------------------------------ Diagnostics
            with gr.Tab("Diagnostics", id="diagnostics"):
                gr.Markdown(
                    "Repeated gradient estimates on the current model and reward: variance, agreement with full "
                    "backprop (when the reward is differentiable), seconds and memory per estimator.",
                    elem_classes=["rlr-note"],
                )
                with gr.Row():
                    diag_estimators = gr.CheckboxGroup(
                        estimator_names, label="Estimators (full-bp is added as the reference)",
                        value=[n for n in ("rlr", "rlr-paper", "truncated-bp", "zo") if n in estimator_names])
                    diag_repeats = gr.Slider(2, min(limit["probe_repeats"], 32), value=4, step=1, label="Repeats")
                diag_btn = gr.Button("Run probe", elem_id="diag-btn")
                gr.Markdown(formatting.DIAGNOSTICS_NOTE, elem_classes=["rlr-note"])
                diag_table = gr.HTML("", label="Estimators", elem_id="diag-table")
                diag_signal = gr.BarPlot(x="bar", y="cosine", color="part", title=formatting.SIGNAL_TITLE,
                                         x_title="estimator · part", y_title="cosine of one estimate to the reference",
                                         color_title="part", y_lim=[-1, 1], x_label_angle=-40, height=340,
                                         elem_id="diag-signal")
                diag_plot = gr.BarPlot(x="estimator", y="value", color="estimator", title="Probe (per metric)",
                                       x_title="estimator", y_title="value", height=260, elem_id="diag-plot")
                diag_metric = gr.Radio([(label, key) for key, label in formatting.PROBE_METRICS.items()],
                                       value="total_variance", label="Plot metric")
                diag_rows = gr.State([])

            # ------------------------------------------------------------------ Export
            with gr.Tab("Export", id="export"):
                export_btn = gr.Button("Prepare LoRA and config", elem_id="export-btn")
                with gr.Row():
                    lora_file = gr.File(label="LoRA (.safetensors)", interactive=False, elem_id="lora-file")
                    config_file = gr.File(label="Config (YAML, runs with rlr-train as is)", interactive=False,
                                          elem_id="config-file")
                export_snippet = gr.Markdown("", elem_id="export-snippet")
                gr.Markdown("### Continue from files")
                with gr.Row():
                    upload_config = gr.File(label="Upload a config (.yaml/.json): fills the Train tab",
                                            file_types=[".yaml", ".yml", ".json"], elem_id="upload-config")
                    upload_lora = gr.File(label="Upload a LoRA (.safetensors): loads it into this session",
                                          file_types=[".safetensors"], elem_id="upload-lora")
                upload_status = gr.Markdown("")

        # ---------------------------------------------------------------------- handlers
        def form_dict(values: tuple) -> dict[str, Any]:
            return dict(zip(FORM_KEYS, values))

        error_state = gr.State(None)

        def listen(event: Callable, fn: Callable, inputs: Any, outputs: list, **kwargs: Any) -> None:
            """``event(fn)`` with errors as toasts (see capture_errors)."""
            toast = {"concurrency_limit": None} if kwargs.get("queue", True) else {"queue": False}
            handler = capture_errors(fn, len(outputs))
            if kwargs.get("concurrency_id") in (GPU["concurrency_id"], TRAIN["concurrency_id"]):
                handler = worker(handler)
            event(handler, inputs=inputs, outputs=[*outputs, error_state], **kwargs).then(
                raise_captured, inputs=error_state, outputs=None, **toast, **UI_ONLY)

        train_outputs = [progress, status, before_strip, after_strip, plots]

        def on_start(request: gr.Request, *values: Any) -> Iterator[tuple]:
            session = session_of(request)
            values_by_key = form_dict(values)
            last = None
            try:
                config = runner.config_from_form(values_by_key, hosted)
                yield (formatting.progress_html(None).replace("Idle: set up a run and press Start.", "Starting …"),
                       "Starting: loading the model", gr.skip(), gr.skip(), gr.skip())
                for last in runner.train_stream(session, config, hosted, bool(values_by_key.get("continue_lora"))):
                    yield _train_outputs(last)
            except Exception:
                # the page already said "Starting": show the session's run as it is again, then the toast
                current = state.session_run(session)
                yield (formatting.progress_html(current), current.status if current else "Idle.",
                       gr.skip(), gr.skip(), gr.skip())
                raise
            if last is not None and last.step < last.config.steps:
                gr.Info(f"Stopped at iteration {last.step}; LoRA kept.", title="Stopped")

        listen(start_btn.click, on_start, form, train_outputs, show_progress="hidden", **TRAIN, **UI_ONLY)

        def on_memory(request: gr.Request, *values: Any) -> str:
            return runner.predict_memory(session_of(request), form_dict(values), hosted)

        listen(memory_btn.click, on_memory, form, [memory_note], **GPU, **UI_ONLY)

        def on_stop(request: gr.Request = None) -> None:
            gr.Info(runner.stop(session_of(request)), title="Stop", duration=6)  # no outputs: nothing to mark

        stop_btn.click(on_stop, inputs=None, outputs=None, concurrency_limit=None, **UI_ONLY)

        def on_reward(name: str) -> tuple[str, str]:
            return _reward_help(name)

        listen(widgets["reward"].change, on_reward, widgets["reward"], [reward_help, widgets["reward_options"]],
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
            from rlr_core.diffusers_chain import model_defaults

            return gr.update(value=model_defaults(model)["num_steps"])

        widgets["model"].change(on_model, inputs=widgets["model"], outputs=widgets["num_steps"], queue=False, **UI_ONLY)

        def on_generate(model: str, prompt: str, seed: int, use_lora: bool, request: gr.Request = None) -> list:
            return runner.generate(session_of(request), model, prompt, seed, use_lora, hosted)

        listen(gen_btn.click, on_generate, [widgets["model"], gen_prompt, gen_seed, gen_lora], [gen_gallery],
                      **GPU, **UI_ONLY)

        @api_errors
        def generate(model: str = "tiny", prompt: str = FORM_DEFAULTS["prompt"], seed: int = 0, use_lora: bool = True,
                     request: gr.Request = None) -> list:
            """Images for `prompt` from seeds seed..seed+3, with this session's LoRA (use_lora) or the base model."""
            return runner.generate(session_of(request), model, prompt, seed, use_lora, hosted)

        # the API endpoint: a hidden trigger and gallery, so that its errors never mark the visible one
        api_trigger = gr.Button(visible=False)
        api_gallery = gr.Gallery(visible=False, format="png")
        api_trigger.click(worker(generate), inputs=[widgets["model"], gen_prompt, gen_seed, gen_lora], outputs=api_gallery,
                          api_name="generate", **GPU)

        # Preference
        def _pref_outputs(run: Any) -> tuple:
            rnd = run.round
            images = [(img, f"#{i + 1} · {p}") for i, (img, p) in enumerate(zip(rnd.pil_images(), rnd.prompts))]
            choices = [str(i + 1) for i in range(rnd.size)]
            return images, gr.update(choices=choices, value=[]), formatting.counters_text(run)

        def on_pref_new(request: gr.Request, k: int, mode: str, features: str, *values: Any) -> tuple:
            run = runner.preference_round(session_of(request), form_dict(values), hosted, k, mode, features)
            return _pref_outputs(run)

        pref_outputs = [pref_gallery, pref_choice, pref_counters]
        listen(pref_new.click, on_pref_new, [pref_k, pref_mode, pref_features, *form], pref_outputs, **GPU, **UI_ONLY)

        def on_pref_select(current: list[str], evt: gr.SelectData) -> Any:
            label = str(int(evt.index) + 1)
            chosen = list(current or [])
            chosen = [c for c in chosen if c != label] if label in chosen else chosen + [label]
            return gr.update(value=sorted(chosen, key=int))

        pref_gallery.select(on_pref_select, inputs=pref_choice, outputs=pref_choice, queue=False, **UI_ONLY)

        def on_pref_update(chosen: list[str], pick: str, k: int, mode: str, features: str,
                           request: gr.Request = None) -> tuple:
            session = session_of(request)
            run, update = runner.preference_update(session, [int(c) - 1 for c in chosen or []], pick == "best one")
            gr.Info(f"Iteration {update.report.step} from {sum(1 for r in update.rewards if r > 0)} preferred image(s); "
                    f"update norm {formatting.format_sig(update.update_norm)}", title="Updated")
            run = runner.preference_round(session, {}, hosted, k, mode, features)
            return _pref_outputs(run)

        listen(pref_update.click, on_pref_update, [pref_choice, pref_pick, pref_k, pref_mode, pref_features],
               pref_outputs, **GPU, **UI_ONLY)

        # Diagnostics
        def on_diag_metric(metric: str, rows: list) -> Any:
            long = formatting.probe_long(rows or [])
            chosen = long[long["metric"] == metric]
            return chosen if len(chosen) else None

        def on_diag(request: gr.Request, names: list[str], repeats: int, metric: str, *values: Any) -> tuple:
            rows = runner.diagnostics(session_of(request), form_dict(values), hosted, list(names or []), repeats)
            signal = formatting.signal_frame(rows)
            signal_plot = gr.BarPlot(value=signal if len(signal) else None, sort=list(signal["bar"]) or None,
                                     title=formatting.signal_title(rows))
            return formatting.diagnostics_html(rows), signal_plot, on_diag_metric(metric, rows), rows

        listen(diag_btn.click, on_diag, [diag_estimators, diag_repeats, diag_metric, *form],
               [diag_table, diag_signal, diag_plot, diag_rows], **GPU, **UI_ONLY)

        diag_metric.change(on_diag_metric, inputs=[diag_metric, diag_rows], outputs=diag_plot, queue=False, **UI_ONLY)

        # Export
        def on_export(request: gr.Request = None) -> tuple:
            weights, config_path, text = runner.export(session_of(request))
            return str(weights), str(config_path), text

        listen(export_btn.click, on_export, None, [lora_file, config_file, export_snippet], **GPU, **UI_ONLY)

        def on_upload_config(path: str | None) -> list:
            if not path:
                return [gr.skip()] * (len(FORM_KEYS) + 1)
            values = train_form.form_from_config(runner.load_config_file(path, hosted))
            updates = []
            for key in FORM_KEYS:
                field = FIELD_BY_KEY[key]
                if field.is_estimator_option:
                    updates.append(gr.update(value=values[key], visible=values[key] is not None))
                else:
                    updates.append(gr.update(value=values[key]) if key in values else gr.skip())
            return updates + [f"loaded config {os.path.basename(path)} into the Train tab"]

        listen(upload_config.upload, on_upload_config, upload_config, [*form, upload_status], **UI_ONLY)

        def on_upload_lora(request: gr.Request, path: str | None, *values: Any) -> tuple:
            if not path:
                return gr.skip(), gr.skip()
            run = runner.upload_lora(session_of(request), path, form_dict(values), hosted)
            return run.status, gr.update(value=True)

        listen(upload_lora.upload, on_upload_lora, [upload_lora, *form], [upload_status, widgets["continue_lora"]],
                           **GPU, **UI_ONLY)

        # API: /train streams one JSON summary per iteration and a final one
        gr.api(worker(api_errors(train_endpoint(hosted))), api_name="train", **TRAIN)

        demo.unload(_on_unload)
    return demo


def train_endpoint(hosted: bool) -> Callable[..., Iterator[dict]]:
    """The ``/train`` function, its parameters generated from the form table (same names and defaults;
    estimator options default to None = the estimator's default)."""
    parameters = [
        inspect.Parameter(f.key, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=FORM_DEFAULTS[f.key], annotation=f.python_type)
        for f in FIELDS
    ]
    parameters.append(inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
                                        annotation=gr.Request))

    def train(*values: Any) -> Iterator[dict]:
        *form_values, request = values  # Gradio passes the request at its place in the signature: last
        form_values_by_key = dict(zip(FORM_KEYS, form_values))
        config = runner.config_from_form(form_values_by_key, hosted)
        stream = runner.train_stream(session_of(request), config, hosted, bool(form_values_by_key.get("continue_lora")))
        next(stream)  # the "starting" state: the API streams one update per iteration, then the final one
        for run in stream:
            yield formatting.run_summary(run)

    train.__signature__ = inspect.Signature(parameters, return_annotation=Iterator[dict])  # type: ignore[attr-defined]
    train.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": Iterator[dict]}
    train.__doc__ = ("Train this session's LoRA; yields a JSON summary after every iteration and a final one "
                     "(prompt: one per line; estimator options left None take the estimator's defaults).")
    return train


def _on_unload(request: gr.Request) -> None:
    state.drop_session(session_of(request))


def _preload() -> None:
    """Load the default model into the cache (local files only; errors are ignored here)."""
    try:
        state.MODELS.get(runner.config_from_form({}, hosted=False))
    except Exception:  # noqa: BLE001 - the first Start reports it properly
        log.info("preloading the tiny model failed:\n%s", traceback.format_exc())


def launch_kwargs(hosted: bool = False) -> dict[str, Any]:
    """Arguments for ``Blocks.launch`` (theme/css go here in Gradio 6); uploads are capped at the
    largest file the app accepts (a LoRA; configs are checked against their smaller limit)."""
    from .settings import runs_root

    return {"theme": gr.themes.Soft(), "css": CSS, "js": PAGE_JS, "allowed_paths": [str(runs_root())], "show_error": True,
            "max_file_size": caps(hosted)["lora_bytes"]}


JANITOR_SECONDS = 60
_janitor_started = threading.Event()


def start_janitor(hosted: bool) -> None:
    """Once per process: every JANITOR_SECONDS drop idle runs and delete expired run folders."""
    if _janitor_started.is_set():
        return
    _janitor_started.set()

    def sweep() -> None:
        while True:
            time.sleep(JANITOR_SECONDS)
            try:
                state.expire_idle(hosted)
                state.remove_old_run_folders(hosted)
            except Exception:  # noqa: BLE001 - never let cleanup take the server down
                log.warning("cleanup failed:\n%s", traceback.format_exc())

    threading.Thread(target=sweep, name="rlr-janitor", daemon=True).start()
