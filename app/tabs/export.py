"""The Export tab: the session's LoRA (.safetensors; after a keep_best training the one the guard kept, with the
last iteration's beside it) and a config ``rlr-train`` runs as is, with a usage snippet; and continuing from files
(a config fills the Train tab, a LoRA loads into the session)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import gradio as gr

from .. import form as train_form
from .. import runner
from ..form import FIELD_BY_KEY, FORM_KEYS
from .events import GPU, UI_ONLY, Page, form_dict, session_of

__all__ = ["ExportTab", "layout", "wire"]


@dataclass
class ExportTab:
    button: Any
    lora_file: Any
    last_lora_file: Any
    config_file: Any
    snippet: Any
    upload_config: Any
    upload_lora: Any
    upload_status: Any


def layout(page: Page) -> ExportTab:
    button = gr.Button("Prepare LoRA and config", elem_id="export-btn")
    with gr.Row():
        lora_file = gr.File(label="LoRA (.safetensors; with keep best: the kept one)", interactive=False,
                            elem_id="lora-file")
        last_lora_file = gr.File(label="Last iteration's LoRA (keep best)", interactive=False, visible=False,
                                 elem_id="last-lora-file")
        config_file = gr.File(label="Config (YAML, runs with rlr-train as is)", interactive=False,
                              elem_id="config-file")
    snippet = gr.Markdown("", elem_id="export-snippet")
    gr.Markdown("### Continue from files")
    with gr.Row():
        upload_config = gr.File(label="Upload a config (.yaml/.json): fills the Train tab",
                                file_types=[".yaml", ".yml", ".json"], elem_id="upload-config")
        upload_lora = gr.File(label="Upload a LoRA (.safetensors): loads it into this session",
                              file_types=[".safetensors"], elem_id="upload-lora")
    upload_status = gr.Markdown("")
    return ExportTab(button, lora_file, last_lora_file, config_file, snippet, upload_config, upload_lora, upload_status)


def wire(page: Page, tab: ExportTab) -> None:
    hosted = page.hosted

    def on_export(request: gr.Request = None) -> tuple:
        weights, config_path, text = runner.export(session_of(request))
        last = runner.last_lora_beside(weights)
        return str(weights), gr.update(value=str(last) if last else None, visible=last is not None), str(config_path), text

    page.listen(tab.button.click, on_export, None, [tab.lora_file, tab.last_lora_file, tab.config_file, tab.snippet],
                **GPU, **UI_ONLY)

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

    page.listen(tab.upload_config.upload, on_upload_config, tab.upload_config, [*page.form, tab.upload_status], **UI_ONLY)

    def on_upload_lora(request: gr.Request, path: str | None, *values: Any) -> tuple:
        if not path:
            return gr.skip(), gr.skip()
        run = runner.upload_lora(session_of(request), path, form_dict(values), hosted)
        return run.status, gr.update(value=True)

    page.listen(tab.upload_lora.upload, on_upload_lora, [tab.upload_lora, *page.form],
                [tab.upload_status, page.widgets["continue_lora"]], **GPU, **UI_ONLY)
