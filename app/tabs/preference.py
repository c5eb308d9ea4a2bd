"""The Preference tab: rounds of images from the session's model; the clicked images are preferred, and
Update runs the training iterations of one update (direct clicks or a learned Bradley-Terry head). A strip
of fixed seeds after every update and the head's held-out accuracy show what is learnt; the click log can be
downloaded and loaded again to continue after a restart."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from rlr_core.rewards.preference import (CHECK_SEEDS, DEFAULT_FEATURES, DEFAULT_HEAD_UPDATES, DEFAULT_KL_WEIGHT,
                                         DEFAULT_LEARNING_RATE, DEFAULT_MODE, TINY_MODEL_FEATURES, TINY_MODEL_LEARNING_RATE)

from .. import clicks, formatting, runner
from ..transfer import click_log_zip
from .events import GPU, UI_ONLY, Page, form_dict, session_of

__all__ = ["PreferenceTab", "layout", "wire"]


@dataclass
class PreferenceTab:
    k: Any
    mode: Any
    pick: Any
    features: Any
    head_updates: Any
    learning_rate: Any
    check: Any
    kl_weight: Any
    new: Any
    gallery: Any
    choice: Any
    update: Any
    counters: Any
    strips: Any
    download: Any
    log_file: Any
    upload: Any


def layout(page: Page) -> PreferenceTab:
    gr.Markdown(
        "Rounds of images from the current model (this session's LoRA, or a fresh one from the Train "
        "settings), one prompt per round (the Train prompts in turn). Click the images you prefer (or tick "
        "their numbers), then **Update**: a training "
        "iteration from your clicks (plus the head's updates, if any); the next round shows the effect. "
        "Clicks are saved to a click log you can download and load again later.",
        elem_classes=["rlr-note"],
    )
    with gr.Row():
        k = gr.Slider(2, page.limit["pref_k"], value=4, step=2, label="Images per round", elem_id="pref-k")
        mode = gr.Radio(list(clicks.PREFERENCE_MODES), value=DEFAULT_MODE, label="Mode",
                        info="direct: clicks are the reward; learned: a Bradley-Terry head fitted on all clicks")
        pick = gr.Radio(["preferred (several)", "best one"], value="preferred (several)", label="Choose")
    with gr.Row():
        features = gr.Radio(list(clicks.FEATURE_CHOICES), value=DEFAULT_FEATURES, label="Learned-head features",
                            info=f"auto: {TINY_MODEL_FEATURES} for the tiny model, else CLIP when its weights are "
                                 "available; tiny-clip+grid+colour: tiny-clip+grid and colour statistics, the groups weighed by "
                                 "how well they predict your clicks; tiny-clip+grid+object-colour: the same with the colour of "
                                 "the content and of the background instead (they do not change with the shape's size); "
                                 "tiny-clip+grid: the bundled image-text model's embedding + where the content sits and "
                                 "how jagged its outline is; tiny-clip: the embedding alone; pixels: weight-free colour "
                                 "statistics; layout: pixels + where the content sits and how jagged its outline is")
        head_updates = gr.Slider(0, clicks.MAX_HEAD_UPDATES, value=DEFAULT_HEAD_UPDATES, step=1,
                                 label="Updates per round from the head", elem_id="pref-head-updates",
                                 info="more iterations per round on fresh images scored by the head (no clicks)")
        learning_rate = gr.Number(value=DEFAULT_LEARNING_RATE, minimum=0, maximum=clicks.MAX_LEARNING_RATE,
                                  label=clicks.LEARNING_RATE_FIELD, elem_id="pref-lr",
                                  info=f"auto: {TINY_MODEL_LEARNING_RATE:g} for the tiny model (what the click benchmark "
                                       "measured), the Train form's learning rate for other models")
        check = gr.Checkbox(value=clicks.DEFAULT_CHECK_UPDATES, label=clicks.CHECK_FIELD, elem_id="pref-check",
                            info=f"sample {len(CHECK_SEEDS)} fixed seeds before and after each update and undo it when "
                                 "the head (fitted on your clicks) scores them lower: a misread click or a step off "
                                 "what you have seen costs nothing; one more batch sampled per update")
        kl_weight = gr.Number(value=DEFAULT_KL_WEIGHT, minimum=0, maximum=clicks.MAX_KL_WEIGHT, label=clicks.KL_FIELD,
                              elem_id="pref-kl",
                              info="keeps each update near what the base model draws (0 = off; needs eta > 0), "
                                   "leaving a uniform colour change free: what you click for moves and less of the "
                                   "rest drifts; 0.01 lets the tiny model learn a shape from your clicks; a round "
                                   "takes about twice as long as with 0")
    new = gr.Button("New round", elem_id="pref-new")
    gallery = gr.Gallery(label="Click the images you prefer", columns=4, height=300, format="png",
                         allow_preview=False, elem_id="pref-gallery", interactive=False)
    choice = gr.CheckboxGroup(choices=[], label="Preferred images", elem_id="pref-choices")
    update = gr.Button("Update (training iterations from these clicks)", variant="primary", elem_id="pref-update")
    counters = gr.Markdown("no rounds yet", elem_id="pref-counters")
    strips = gr.Gallery(label="The same seeds after each update (latest first; 'before' last)",
                        columns=clicks.STRIP_IMAGES, height=320, format="png", allow_preview=True,
                        elem_id="pref-strips", interactive=False)
    with gr.Row():
        download = gr.Button("Download click log", elem_id="pref-download")
        log_file = gr.File(label="Click log (.zip: the log, its images and its starting LoRA)", interactive=False,
                           elem_id="pref-log-file")
        upload = gr.File(label="Continue from a click log (.zip or .jsonl): replays it with the Train form's model",
                         file_types=[".zip", ".jsonl"], elem_id="pref-upload")
    return PreferenceTab(k, mode, pick, features, head_updates, learning_rate, check, kl_weight, new, gallery, choice,
                         update, counters, strips, download, log_file, upload)


def _strip_images(run: Any) -> list[tuple[Any, str]]:
    """The strips as one gallery, a row per strip: (image, "label · seed s · prompt")."""
    return [(image, f"{strip.label} · seed {seed} · {prompt}") for strip in clicks.strips(run)
            for image, seed, prompt in zip(strip.images, strip.seeds, strip.prompts)]


def _outputs(run: Any) -> tuple:
    rnd = run.round
    images = [(img, f"#{i + 1} · {p}") for i, (img, p) in enumerate(zip(rnd.pil_images(), rnd.prompts))]
    choices = [str(i + 1) for i in range(rnd.size)]
    return images, gr.update(choices=choices, value=[]), formatting.counters_text(run), _strip_images(run)


def wire(page: Page, tab: PreferenceTab) -> None:
    hosted = page.hosted
    outputs = [tab.gallery, tab.choice, tab.counters, tab.strips]
    settings = [tab.mode, tab.features, tab.head_updates, tab.learning_rate, tab.check, tab.kl_weight]

    def on_pref_new(request: gr.Request, k: int, mode: str, features: str, head_updates: int, learning_rate: float,
                    check: bool, kl_weight: float, *values: Any) -> tuple:
        run = runner.preference_round(session_of(request), form_dict(values), hosted, k, mode, features, head_updates,
                                      learning_rate, check, kl_weight)
        return _outputs(run)

    page.listen(tab.new.click, on_pref_new, [tab.k, *settings, *page.form], outputs, **GPU, **UI_ONLY)

    def on_pref_select(current: list[str], evt: gr.SelectData) -> Any:
        label = str(int(evt.index) + 1)
        chosen = list(current or [])
        chosen = [c for c in chosen if c != label] if label in chosen else chosen + [label]
        return gr.update(value=sorted(chosen, key=int))

    tab.gallery.select(on_pref_select, inputs=tab.choice, outputs=tab.choice, queue=False, **UI_ONLY)

    def on_pref_update(chosen: list[str], pick: str, k: int, mode: str, features: str, head_updates: int,
                       learning_rate: float, check: bool, kl_weight: float, request: gr.Request = None) -> tuple:
        session = session_of(request)
        run, update = runner.preference_update(session, [int(c) - 1 for c in chosen or []], pick == "best one")
        iterations = 1 + len(update.head_reports)
        gr.Info(f"Iteration {update.report.step} from {sum(1 for r in update.rewards if r > 0)} preferred image(s); "
                f"update norm {formatting.format_sig(update.update_norm)}"
                + (f"; then {iterations - 1} from the head" if iterations > 1 else "")
                + ("" if update.accepted else "; undone: the head scored the check seeds' images lower after it"),
                title="Updated" if update.accepted else "Update undone")
        run = runner.preference_round(session, {}, hosted, k, mode, features, head_updates, learning_rate, check,
                                      kl_weight)
        return _outputs(run)

    page.listen(tab.update.click, on_pref_update, [tab.choice, tab.pick, tab.k, *settings], outputs, **GPU, **UI_ONLY)

    def on_download(request: gr.Request = None) -> str:
        return str(click_log_zip(session_of(request)))

    page.listen(tab.download.click, on_download, None, [tab.log_file], **GPU, **UI_ONLY)

    def on_upload(request: gr.Request, path: str | None, *values: Any) -> tuple:
        if not path:
            return (gr.skip(),) * 10
        run, message = clicks.load_click_log(session_of(request), path, form_dict(values), hosted)
        gr.Info(message, title="Click log loaded")
        preference = run.preference
        return ([], gr.update(choices=[], value=[]), f"{message}; click **New round** to continue.  \n"
                + formatting.counters_text(run), _strip_images(run), preference.mode, clicks.form_features(preference.features),
                preference.head_updates, run.config.lr, bool(preference.check_seeds), run.config.kl_weight)

    page.listen(tab.upload.upload, on_upload, [tab.upload, *page.form], [*outputs, *settings], **GPU, **UI_ONLY)
