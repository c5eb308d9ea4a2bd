"""The Gradio UI: ``build_app(hosted)`` returns the ``gr.Blocks`` of RLR Studio.

Tabs: Train (live before/after gallery, reward and gradient plots, Start/Stop, generate),
Preference (click rounds), Diagnostics (estimator probe), Export (LoRA / config download and
upload). Named API endpoints: ``/train`` (streams one JSON update per iteration) and
``/generate`` (images). Every handler turns bad input into a toast naming the field; heavy
events share one queue (``concurrency_id="gpu"``, limit 1). Handlers only format and dispatch;
the work is done by :mod:`app.runner` through ``rlr_core``.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import threading
import traceback
from typing import Any, Callable, Iterator

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import gradio as gr  # noqa: E402

from . import formatting, runner, state  # noqa: E402
from .settings import DEFAULT_PROMPTS, MODEL_PRESETS, TINY_MISSING_MESSAGE, caps, tiny_model_available  # noqa: E402
from .state import FieldError  # noqa: E402

log = logging.getLogger("rlr_studio")

GPU = {"concurrency_limit": 1, "concurrency_id": "gpu"}
UI_ONLY = {"api_visibility": "undocumented"}

FORM_KEYS = [
    "model", "reward", "reward_options", "prompt", "coarse_prompt", "mid_prompt", "fine_prompt",
    "prompt_boundaries", "ho_window", "estimator", "h", "remaining", "zo_scale", "estimator_options",
    "num_steps", "eta", "guidance_scale", "batch_size", "lr", "lora_rank", "steps", "seed", "eval_every",
    "continue_lora",
]

CSS = """
#status textarea {font-family: ui-monospace, monospace; font-size: 0.85em}
.rlr-note {opacity: 0.8; font-size: 0.9em}
.rlr-table-wrap {overflow-x: auto}
.rlr-table {width: 100%; border-collapse: collapse; font-size: 0.85em}
.rlr-table th, .rlr-table td {padding: 4px 6px; text-align: right; white-space: normal; vertical-align: bottom}
.rlr-table th:first-child, .rlr-table td:first-child {text-align: left}
.rlr-table tbody tr {border-top: 1px solid var(--border-color-primary)}
"""


# ----------------------------------------------------------------------------------- errors
def _toast(error: BaseException) -> gr.Error:
    if isinstance(error, gr.Error):
        return error
    if isinstance(error, FieldError):
        return gr.Error(str(error), title=f"Check '{error.field}'", print_exception=False)
    if isinstance(error, (ValueError, TypeError)):
        return gr.Error(str(error), title="Invalid input", print_exception=False)
    log.error("unexpected error:\n%s", traceback.format_exc())
    return gr.Error(f"{type(error).__name__}: {error}", title="Something went wrong (the server keeps running)")


def friendly(fn: Callable) -> Callable:
    """Every exception becomes a toast (gr.Error) naming the field; the server never crashes."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen_wrapper(*args: Any, **kwargs: Any) -> Iterator[Any]:
            try:
                yield from fn(*args, **kwargs)
            except GeneratorExit:
                raise
            except Exception as error:  # noqa: BLE001 - shown to the user
                raise _toast(error) from error

        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - shown to the user
            raise _toast(error) from error

    return wrapper


def session_of(request: gr.Request | None) -> str:
    """The browser session's id (one per tab / gradio_client); per-session state is only this id."""
    session = getattr(request, "session_hash", None) if request is not None else None
    return str(session or "anonymous")


# ----------------------------------------------------------------------------------- outputs
def _train_outputs(run: Any) -> tuple:
    history = run.history
    frames = [formatting.reward_frame(history), formatting.gradient_frame(history), formatting.cosine_frame(history),
              formatting.seconds_frame(history), formatting.memory_frame(history)]
    # an empty frame would fix the plot's column types wrongly (object = nominal): send nothing instead
    return (run.status, run.before, run.after, *[frame if len(frame) else None for frame in frames])


def _reward_help(name: str) -> tuple[str, str]:
    from rlr_core.rewards import list_rewards

    for info in list_rewards():
        if info["name"] == name:
            lines = [f"**{name}** — {info['description']}"]
            for key, opt in info["options"].items():
                choices = f" (one of {', '.join(map(str, opt['choices']))})" if opt.get("choices") else ""
                lines.append(f"- `{key}` ({opt['type']}, default `{opt['default']!r}`): {opt['help']}{choices}")
            import json

            defaults = {k: o["default"] for k, o in info["options"].items()}
            return "\n".join(lines), json.dumps(defaults) if defaults else "{}"
    return f"**{name}**: plug-in reward (`module:function` or `file.py`); options `function`, `differentiable`.", "{}"


# ----------------------------------------------------------------------------------- the app
def build_app(hosted: bool = False, preload: bool = True) -> gr.Blocks:
    """Build the Blocks. ``hosted``: refuse local paths and plug-in rewards, cap sizes.
    ``preload``: load the default tiny model in the background (local files only) so the first
    Start shows an update within seconds."""
    from rlr_core.estimators import list_estimators
    from rlr_core.estimators.rlr import REMAINING
    from rlr_core.rewards import reward_names

    limit = caps(hosted)
    defaults = runner.FORM_DEFAULTS
    estimator_names = list_estimators()
    estimator_info = "rlr (default)" + (", rlr-paper (the exactly unbiased RLR)" if "rlr-paper" in estimator_names else "")
    tiny_ok = tiny_model_available()
    if preload and tiny_ok:
        threading.Thread(target=_preload, name="rlr-preload", daemon=True).start()

    with gr.Blocks(title="RLR Studio", analytics_enabled=False) as demo:
        gr.Markdown(
            "# RLR Studio\nFine-tune a text-to-image diffusion model against a reward with the **RLR** "
            "gradient estimator and watch it learn. Defaults: the bundled tiny model and the weight-free "
            "*saturation* reward (trains on a CPU, offline)."
            + ("\n\n**Hosted mode**: Hub models and built-in rewards only; sizes are capped." if hosted else "")
        )
        if not tiny_ok:
            gr.Markdown(f"⚠️ {TINY_MISSING_MESSAGE}", elem_classes=["rlr-note"])

        with gr.Tabs():
            # ------------------------------------------------------------------ Train
            with gr.Tab("Train", id="train"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=2, min_width=420):
                        with gr.Row():
                            model = gr.Dropdown(
                                choices=MODEL_PRESETS, value=defaults["model"], allow_custom_value=True, label="Model",
                                info="a preset, a Hugging Face Hub id" + ("" if hosted else ", or a local diffusers folder"),
                                elem_id="model", scale=2,
                            )
                            reward = gr.Dropdown(
                                choices=reward_names(), value=defaults["reward"], allow_custom_value=not hosted,
                                label="Reward", info="built-in" + ("" if hosted else ", or a plug-in 'module:function' / file.py"),
                                elem_id="reward", scale=1,
                            )
                            reward_options = gr.Textbox(value=_reward_help(defaults["reward"])[1], label="Reward options (JSON)",
                                                        elem_id="reward-options", scale=1)
                        reward_help = gr.Markdown(_reward_help(defaults["reward"])[0], elem_classes=["rlr-note"])
                        prompt = gr.Textbox(value=defaults["prompt"], lines=3, label="Prompts (one per line)",
                                            placeholder=DEFAULT_PROMPTS, elem_id="prompts")
                        with gr.Accordion("Coarse / mid / fine prompts", open=False):
                            with gr.Row():
                                coarse_prompt = gr.Textbox(label="Coarse prompt (first steps)", value="")
                                mid_prompt = gr.Textbox(label="Mid prompt", value="")
                                fine_prompt = gr.Textbox(label="Fine prompt (last steps)", value="")
                            with gr.Row():
                                prompt_boundaries = gr.Textbox(value=defaults["prompt_boundaries"], label="Prompt boundaries",
                                                               info="two step indices 'a, b' or fractions '1/3, 2/3'")
                                ho_window = gr.Textbox(value="", label="HO window",
                                                       info="rlr: allowed starts of the HO sub-chain 'a, b' (empty = all)")
                        with gr.Accordion("Estimator", open=True):
                            with gr.Row():
                                estimator = gr.Dropdown(choices=estimator_names, value=defaults["estimator"], label="Estimator",
                                                        info=f"{estimator_info} or a baseline", elem_id="estimator")
                                h = gr.Number(value=defaults["h"], precision=0, label="h (HO sub-chain length)", minimum=1)
                                remaining = gr.Dropdown(choices=list(REMAINING), value=defaults["remaining"], label="Remaining steps")
                                zo_scale = gr.Number(value=defaults["zo_scale"], label="ZO scale")
                            estimator_options = gr.Textbox(value="{}", label="More estimator options (JSON)",
                                                           info="e.g. {\"lr_samples\": 4} for rlr, {\"k\": 2} for truncated-bp")
                        with gr.Accordion("Sampling and optimization", open=True):
                            with gr.Row():
                                num_steps = gr.Slider(2, min(limit["num_steps"], 100), value=defaults["num_steps"], step=1,
                                                      label="Sampling steps", elem_id="num-steps")
                                eta = gr.Slider(0.0, 1.0, value=defaults["eta"], step=0.05, label="eta")
                                guidance_scale = gr.Textbox(value="", label="Guidance", placeholder="model default",
                                                            info="empty = the model's default")
                                batch_size = gr.Slider(1, min(limit["batch_size"], 64), value=defaults["batch_size"], step=1,
                                                       label="Batch size", elem_id="batch-size")
                            with gr.Row():
                                lr = gr.Number(value=defaults["lr"], label="Learning rate")
                                lora_rank = gr.Slider(1, min(limit["lora_rank"], 128), value=defaults["lora_rank"], step=1,
                                                      label="LoRA rank")
                                steps = gr.Number(value=defaults["steps"], precision=0, minimum=1, maximum=limit["steps"],
                                                  label="Iterations", elem_id="steps")
                                seed = gr.Number(value=defaults["seed"], precision=0, minimum=0, label="Seed")
                                eval_every = gr.Number(value=defaults["eval_every"], precision=0, minimum=0,
                                                       label="Refresh 'after' every N iterations", elem_id="eval-every")
                            continue_lora = gr.Checkbox(value=False, label="Continue from the current LoRA (same model and rank)",
                                                        elem_id="continue-lora")
                    with gr.Column(scale=3, min_width=520):
                        with gr.Row():
                            start_btn = gr.Button("Start", variant="primary", elem_id="start-btn")
                            stop_btn = gr.Button("Stop", variant="stop", elem_id="stop-btn")
                        status = gr.Textbox(label="Status", value="idle", interactive=False, lines=2, elem_id="status")
                        with gr.Row():
                            before_gallery = gr.Gallery(label="Before (LoRA off, fixed seeds)", columns=4, height=200,
                                                        format="png", elem_id="before-gallery", interactive=False)
                            after_gallery = gr.Gallery(label="After (current LoRA, same seeds)", columns=4, height=200,
                                                       format="png", elem_id="after-gallery", interactive=False)
                        with gr.Row():
                            reward_plot = gr.LinePlot(x="step", y="reward", color="series", title="Reward (batch mean ± std, eval)",
                                                      height=260, elem_id="reward-plot")
                            grad_plot = gr.LinePlot(x="step", y="norm", color="part", title="Gradient norm per part, update norm",
                                                    height=260, elem_id="grad-plot")
                        with gr.Row():
                            cos_plot = gr.LinePlot(x="step", y="cosine", color="pair", title="Cosine between parts, and of each part to the running mean (signal)",
                                                   height=220, y_lim=[-1, 1], elem_id="cos-plot")
                            sec_plot = gr.LinePlot(x="step", y="value", title="Seconds per iteration", height=220, elem_id="sec-plot")
                            mem_plot = gr.LinePlot(x="step", y="value", color="metric", title="Memory per iteration (MB)",
                                                   height=220, elem_id="mem-plot")
                        with gr.Accordion("Generate", open=False):
                            with gr.Row():
                                gen_prompt = gr.Textbox(value=defaults["prompt"], label="Prompt", elem_id="gen-prompt", scale=3)
                                gen_seed = gr.Number(value=0, precision=0, minimum=0, label="Seed", scale=1)
                                gen_lora = gr.Checkbox(value=True, label="Use this session's LoRA", scale=1)
                                gen_btn = gr.Button("Generate", scale=1, elem_id="generate-btn")
                            gen_gallery = gr.Gallery(label="Generated", columns=4, height=220, format="png", elem_id="gen-gallery")

            form = [model, reward, reward_options, prompt, coarse_prompt, mid_prompt, fine_prompt, prompt_boundaries,
                    ho_window, estimator, h, remaining, zo_scale, estimator_options, num_steps, eta, guidance_scale,
                    batch_size, lr, lora_rank, steps, seed, eval_every, continue_lora]
            assert len(form) == len(FORM_KEYS)

            # ------------------------------------------------------------------ Preference
            with gr.Tab("Preference", id="preference"):
                gr.Markdown(
                    "Rounds of images from the current model (this session's run, or a new one from the Train "
                    "settings). Click the images you prefer (or tick their numbers), then **Update**: one RLR "
                    "step from your clicks; the next round shows the effect. Clicks are saved to a JSONL log.",
                    elem_classes=["rlr-note"],
                )
                with gr.Row():
                    pref_k = gr.Slider(2, limit["pref_k"], value=4, step=1, label="Images per round", elem_id="pref-k")
                    pref_mode = gr.Radio(["direct", "learned"], value="direct", label="Mode",
                                         info="direct: clicks are the reward; learned: a Bradley-Terry head fitted on all clicks")
                    pref_pick = gr.Radio(["preferred (several)", "best one"], value="preferred (several)", label="Choose")
                    pref_features = gr.Radio(["pixels", "auto"], value="pixels", label="Learned-mode features",
                                             info="pixels: weight-free; auto: CLIP when its weights are available")
                pref_new = gr.Button("New round", elem_id="pref-new")
                pref_gallery = gr.Gallery(label="Click the images you prefer", columns=4, height=300, format="png",
                                          allow_preview=False, elem_id="pref-gallery", interactive=False)
                pref_choice = gr.CheckboxGroup(choices=[], label="Preferred images", elem_id="pref-choices")
                pref_update = gr.Button("Update (one RLR step from these clicks)", variant="primary", elem_id="pref-update")
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
                    config_file = gr.File(label="Config (YAML)", interactive=False, elem_id="config-file")
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

        @friendly
        def on_start(request: gr.Request, *values: Any) -> Iterator[tuple]:
            form = form_dict(values)
            config = runner.config_from_form(form, hosted)
            for run in runner.train_stream(session_of(request), config, hosted, bool(form.get("continue_lora"))):
                yield _train_outputs(run)

        start_btn.click(on_start, inputs=form, outputs=[status, before_gallery, after_gallery, reward_plot, grad_plot,
                                                        cos_plot, sec_plot, mem_plot],
                        show_progress="minimal", **GPU, **UI_ONLY)

        @friendly
        def on_stop(request: gr.Request = None) -> None:
            gr.Info(runner.stop(session_of(request)))

        stop_btn.click(on_stop, inputs=None, outputs=None, queue=False, **UI_ONLY)

        @friendly
        def on_reward(name: str) -> tuple[str, str]:
            return _reward_help(name)

        reward.change(on_reward, inputs=reward, outputs=[reward_help, reward_options], queue=False, **UI_ONLY)

        @friendly
        def generate(model: str, prompt: str, seed: int = 0, use_lora: bool = True,
                     request: gr.Request = None) -> list:
            """Images for `prompt` from seeds seed..seed+3, with this session's LoRA (use_lora) or the base model."""
            return runner.generate(session_of(request), model, prompt, seed, use_lora, hosted)

        gen_btn.click(generate, inputs=[model, gen_prompt, gen_seed, gen_lora], outputs=gen_gallery,
                      api_name="generate", **GPU)

        # Preference
        def _pref_outputs(run: Any) -> tuple:
            rnd = run.round
            images = [(img, f"#{i + 1} · {p}") for i, (img, p) in enumerate(zip(rnd.pil_images(), rnd.prompts))]
            choices = [str(i + 1) for i in range(rnd.size)]
            return images, gr.update(choices=choices, value=[]), formatting.counters_text(run)

        @friendly
        def on_pref_new(request: gr.Request, k: int, mode: str, features: str, *values: Any) -> tuple:
            run = runner.preference_round(session_of(request), form_dict(values), hosted, k, mode, features)
            return _pref_outputs(run)

        pref_new.click(on_pref_new, inputs=[pref_k, pref_mode, pref_features, *form],
                       outputs=[pref_gallery, pref_choice, pref_counters], **GPU, **UI_ONLY)

        def on_pref_select(current: list[str], evt: gr.SelectData) -> Any:
            label = str(int(evt.index) + 1)
            chosen = list(current or [])
            chosen = [c for c in chosen if c != label] if label in chosen else chosen + [label]
            return gr.update(value=sorted(chosen, key=int))

        pref_gallery.select(on_pref_select, inputs=pref_choice, outputs=pref_choice, queue=False, **UI_ONLY)

        @friendly
        def on_pref_update(chosen: list[str], pick: str, k: int, mode: str, features: str,
                           request: gr.Request = None) -> tuple:
            session = session_of(request)
            run, update = runner.preference_update(session, [int(c) - 1 for c in chosen or []], pick == "best one")
            gr.Info(f"updated from {sum(1 for r in update.rewards if r > 0)} preferred image(s); "
                    f"update norm {update.update_norm:.3g}")
            run = runner.preference_round(session, {}, hosted, k, mode, features)
            return _pref_outputs(run)

        pref_update.click(on_pref_update, inputs=[pref_choice, pref_pick, pref_k, pref_mode, pref_features],
                          outputs=[pref_gallery, pref_choice, pref_counters], **GPU, **UI_ONLY)

        # Diagnostics
        def on_diag_metric(metric: str, rows: list) -> Any:
            long = formatting.probe_long(rows or [])
            chosen = long[long["metric"] == metric]
            return chosen if len(chosen) else None

        @friendly
        def on_diag(request: gr.Request, names: list[str], repeats: int, metric: str, *values: Any) -> tuple:
            rows = runner.diagnostics(session_of(request), form_dict(values), hosted, list(names or []), repeats)
            signal = formatting.signal_frame(rows)
            signal_plot = gr.BarPlot(value=signal if len(signal) else None, sort=list(signal["bar"]) or None,
                                     title=formatting.signal_title(rows))
            return formatting.diagnostics_html(rows), signal_plot, on_diag_metric(metric, rows), rows

        diag_btn.click(on_diag, inputs=[diag_estimators, diag_repeats, diag_metric, *form],
                       outputs=[diag_table, diag_signal, diag_plot, diag_rows], **GPU, **UI_ONLY)

        diag_metric.change(on_diag_metric, inputs=[diag_metric, diag_rows], outputs=diag_plot, queue=False, **UI_ONLY)

        # Export
        @friendly
        def on_export(request: gr.Request = None) -> tuple:
            weights, config_path, text = runner.export(session_of(request))
            return str(weights), str(config_path), text

        export_btn.click(on_export, inputs=None, outputs=[lora_file, config_file, export_snippet], **GPU, **UI_ONLY)

        @friendly
        def on_upload_config(path: str | None) -> list:
            if not path:
                return [gr.skip()] * (len(FORM_KEYS) + 1)
            values = runner.form_from_config(runner.load_config_file(path, hosted))
            return [gr.update(value=values[k]) if k in values else gr.skip() for k in FORM_KEYS] + [
                f"loaded config {os.path.basename(path)} into the Train tab"
            ]

        upload_config.upload(on_upload_config, inputs=upload_config, outputs=[*form, upload_status], **UI_ONLY)

        @friendly
        def on_upload_lora(request: gr.Request, path: str | None, *values: Any) -> tuple:
            if not path:
                return gr.skip(), gr.skip()
            run = runner.upload_lora(session_of(request), path, form_dict(values), hosted)
            return run.status, gr.update(value=True)

        upload_lora.upload(on_upload_lora, inputs=[upload_lora, *form], outputs=[upload_status, continue_lora],
                           **GPU, **UI_ONLY)

        # API: /train streams one JSON summary per iteration
        @friendly
        def train(
            model: str = "tiny",
            reward: str = "saturation",
            prompt: str = defaults["prompt"],
            estimator: str = "rlr",
            steps: int = 5,
            num_steps: int = defaults["num_steps"],
            batch_size: int = defaults["batch_size"],
            lr: float = defaults["lr"],
            lora_rank: int = defaults["lora_rank"],
            seed: int = 0,
            eta: float = defaults["eta"],
            guidance_scale: float | None = None,
            h: int = defaults["h"],
            remaining: str = defaults["remaining"],
            zo_scale: float = defaults["zo_scale"],
            reward_options: str = "{}",
            estimator_options: str = "{}",
            eval_every: int = defaults["eval_every"],
            continue_lora: bool = False,
            request: gr.Request = None,
        ) -> Iterator[dict]:
            """Train this session's LoRA; yields a JSON summary after every iteration (prompt: one per line)."""
            form = {k: v for k, v in locals().items() if k in FORM_KEYS}
            config = runner.config_from_form(form, hosted)
            for run in runner.train_stream(session_of(request), config, hosted, bool(continue_lora)):
                yield formatting.run_summary(run)

        gr.api(train, api_name="train", **GPU)

        demo.unload(_on_unload)
    return demo


def _on_unload(request: gr.Request) -> None:
    state.drop_session(session_of(request))


def _preload() -> None:
    """Load the default model into the cache (local files only; errors are ignored here)."""
    try:
        state.MODELS.get(runner.config_from_form({}, hosted=False))
    except Exception:  # noqa: BLE001 - the first Start reports it properly
        log.info("preloading the tiny model failed:\n%s", traceback.format_exc())


def launch_kwargs() -> dict[str, Any]:
    """Arguments for ``Blocks.launch`` (theme/css go here in Gradio 6)."""
    from .settings import runs_root

    return {"theme": gr.themes.Soft(), "css": CSS, "allowed_paths": [str(runs_root())], "show_error": True}
