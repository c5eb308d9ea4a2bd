"""The Preference tab: rounds of images from the session's model; the clicked images are preferred, and
Update runs one training iteration from the clicks (direct, or a learned Bradley-Terry head)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from .. import formatting, runner
from .events import GPU, UI_ONLY, Page, form_dict, session_of

__all__ = ["PreferenceTab", "layout", "wire"]


@dataclass
class PreferenceTab:
    k: Any
    mode: Any
    pick: Any
    features: Any
    new: Any
    gallery: Any
    choice: Any
    update: Any
    counters: Any


def layout(page: Page) -> PreferenceTab:
    gr.Markdown(
        "Rounds of images from the current model (this session's LoRA, or a fresh one from the Train "
        "settings). Click the images you prefer (or tick their numbers), then **Update**: one training "
        "iteration from your clicks; the next round shows the effect. Clicks are saved to a JSONL log.",
        elem_classes=["rlr-note"],
    )
    with gr.Row():
        k = gr.Slider(2, page.limit["pref_k"], value=4, step=2, label="Images per round", elem_id="pref-k")
        mode = gr.Radio(["direct", "learned"], value="direct", label="Mode",
                        info="direct: clicks are the reward; learned: a Bradley-Terry head fitted on all clicks")
        pick = gr.Radio(["preferred (several)", "best one"], value="preferred (several)", label="Choose")
        features = gr.Radio(["pixels", "auto"], value="pixels", label="Learned-mode features",
                            info="pixels: weight-free; auto: tiny-clip for the tiny model, else CLIP when its weights are available")
    new = gr.Button("New round", elem_id="pref-new")
    gallery = gr.Gallery(label="Click the images you prefer", columns=4, height=300, format="png",
                         allow_preview=False, elem_id="pref-gallery", interactive=False)
    choice = gr.CheckboxGroup(choices=[], label="Preferred images", elem_id="pref-choices")
    update = gr.Button("Update (one training iteration from these clicks)", variant="primary", elem_id="pref-update")
    counters = gr.Markdown("no rounds yet", elem_id="pref-counters")
    return PreferenceTab(k, mode, pick, features, new, gallery, choice, update, counters)


def _outputs(run: Any) -> tuple:
    rnd = run.round
    images = [(img, f"#{i + 1} · {p}") for i, (img, p) in enumerate(zip(rnd.pil_images(), rnd.prompts))]
    choices = [str(i + 1) for i in range(rnd.size)]
    return images, gr.update(choices=choices, value=[]), formatting.counters_text(run)


def wire(page: Page, tab: PreferenceTab) -> None:
    hosted = page.hosted
    outputs = [tab.gallery, tab.choice, tab.counters]

    def on_pref_new(request: gr.Request, k: int, mode: str, features: str, *values: Any) -> tuple:
        run = runner.preference_round(session_of(request), form_dict(values), hosted, k, mode, features)
        return _outputs(run)

    page.listen(tab.new.click, on_pref_new, [tab.k, tab.mode, tab.features, *page.form], outputs, **GPU, **UI_ONLY)

    def on_pref_select(current: list[str], evt: gr.SelectData) -> Any:
        label = str(int(evt.index) + 1)
        chosen = list(current or [])
        chosen = [c for c in chosen if c != label] if label in chosen else chosen + [label]
        return gr.update(value=sorted(chosen, key=int))

    tab.gallery.select(on_pref_select, inputs=tab.choice, outputs=tab.choice, queue=False, **UI_ONLY)

    def on_pref_update(chosen: list[str], pick: str, k: int, mode: str, features: str,
                       request: gr.Request = None) -> tuple:
        session = session_of(request)
        run, update = runner.preference_update(session, [int(c) - 1 for c in chosen or []], pick == "best one")
        gr.Info(f"Iteration {update.report.step} from {sum(1 for r in update.rewards if r > 0)} preferred image(s); "
                f"update norm {formatting.format_sig(update.update_norm)}", title="Updated")
        run = runner.preference_round(session, {}, hosted, k, mode, features)
        return _outputs(run)

    page.listen(tab.update.click, on_pref_update, [tab.choice, tab.pick, tab.k, tab.mode, tab.features],
                outputs, **GPU, **UI_ONLY)
