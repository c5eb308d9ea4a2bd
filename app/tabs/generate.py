"""The Generate accordion of the Train tab and the ``/generate`` API endpoint: images for a prompt from seeds
seed..seed+3, with this session's LoRA or the base model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from .. import runner
from ..form import FORM_DEFAULTS
from .events import GPU, UI_ONLY, Page, api_errors, session_of, worker

__all__ = ["GenerateBox", "layout", "wire"]


@dataclass
class GenerateBox:
    prompt: Any
    seed: Any
    use_lora: Any
    button: Any
    gallery: Any


def layout() -> GenerateBox:
    with gr.Accordion("Generate", open=False):
        with gr.Row():
            prompt = gr.Textbox(value=FORM_DEFAULTS["prompt"], label="Prompt", elem_id="gen-prompt", scale=3)
            seed = gr.Number(value=0, precision=0, minimum=0, label="Seed", scale=1)
            use_lora = gr.Checkbox(value=True, label="Use this session's LoRA", scale=1)
            button = gr.Button("Generate", scale=1, elem_id="generate-btn")
        gallery = gr.Gallery(label="Generated", columns=4, height=240, format="png", elem_id="gen-gallery")
    return GenerateBox(prompt, seed, use_lora, button, gallery)


def wire(page: Page, box: GenerateBox) -> None:
    hosted = page.hosted
    inputs = [page.widgets["model"], box.prompt, box.seed, box.use_lora]

    def on_generate(model: str, prompt: str, seed: int, use_lora: bool, request: gr.Request = None) -> list:
        return runner.generate(session_of(request), model, prompt, seed, use_lora, hosted)

    page.listen(box.button.click, on_generate, inputs, [box.gallery], **GPU, **UI_ONLY)

    @api_errors
    def generate(model: str = "tiny", prompt: str = FORM_DEFAULTS["prompt"], seed: int = 0, use_lora: bool = True,
                 request: gr.Request = None) -> list:
        """Images for `prompt` from seeds seed..seed+3, with this session's LoRA (use_lora) or the base model."""
        return runner.generate(session_of(request), model, prompt, seed, use_lora, hosted)

    # the API endpoint: a hidden trigger and gallery, so that its errors never mark the visible one
    api_trigger = gr.Button(visible=False)
    api_gallery = gr.Gallery(visible=False, format="png")
    api_trigger.click(worker(generate), inputs=inputs, outputs=api_gallery, api_name="generate", **GPU)
