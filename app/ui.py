"""The Gradio UI: ``build_app(hosted)`` returns the ``gr.Blocks`` of RLR Studio (docs/app.md).

Tabs, one module each in :mod:`app.tabs`: Train (progress, before/after images on fixed seeds, plots,
Start/Stop, generate), Preference (click rounds), Diagnostics (estimator probe), Export (LoRA / config
download and upload). The Train form's widgets and the ``/train`` API parameters come from one table
(:mod:`app.form`). Named API endpoints: ``/train`` (streams one JSON update per iteration plus a final
one) and ``/generate`` (images); they raise on bad input. The page's CSS and JS are the static files
``app/static/app.css`` and ``app/static/app.js``, passed to ``launch`` by :func:`launch_kwargs`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
from pathlib import Path
from typing import Any

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import gradio as gr  # noqa: E402

from . import runner, runs  # noqa: E402
from .settings import TINY_MISSING_MESSAGE, caps, run_folder_seconds, runs_root, tiny_model_available  # noqa: E402
from .tabs import api, diagnostics, export, generate, preference, train  # noqa: E402
from .tabs.events import Page, session_of  # noqa: E402
from rlr_core.hosted import HOSTED_LIMITS  # noqa: E402

log = logging.getLogger("rlr_studio")

STATIC = Path(__file__).resolve().parent / "static"
"""The page's CSS (``app.css``) and JS (``app.js``, run once when the page loads)."""


def build_app(hosted: bool = False, preload: bool = True) -> gr.Blocks:
    """Build the Blocks. ``hosted``: refuse local paths and plug-in rewards, cap sizes.
    ``preload``: load the default tiny model in the background (local files only) so the first
    Start shows an update within seconds."""
    page = Page(hosted, caps(hosted))
    tiny_ok = tiny_model_available()
    if preload and tiny_ok:
        threading.Thread(target=_preload, name="rlr-preload", daemon=True).start()
    start_janitor(hosted)
    # Gradio's own file cache (uploads, served images) is emptied of files older than a run folder's lifetime
    cache_expiry = (HOSTED_LIMITS["cache_sweep_seconds"], run_folder_seconds(hosted)) if hosted else None

    with gr.Blocks(title="RLR Studio", analytics_enabled=False, delete_cache=cache_expiry) as demo:
        gr.Markdown(
            "## RLR Studio · fine-tune a text-to-image model against a reward with **RLR** and watch it learn\n"
            "Defaults: the bundled tiny model and the weight-free *saturation* reward (trains on a CPU, offline)."
            + (" **Hosted mode**: the offered models and built-in rewards only; sizes and work are capped." if hosted else "")
        )
        if not tiny_ok:
            gr.Markdown(f"⚠️ {TINY_MISSING_MESSAGE}", elem_classes=["rlr-note"])

        with gr.Tabs():
            with gr.Tab("Train", id="train"):
                train_tab = train.layout(page)
            with gr.Tab("Preference", id="preference"):
                preference_tab = preference.layout(page)
            with gr.Tab("Diagnostics", id="diagnostics"):
                diagnostics_tab = diagnostics.layout(page)
            with gr.Tab("Export", id="export"):
                export_tab = export.layout(page)

        page.error_state = gr.State(None)
        train.wire(page, train_tab)
        generate.wire(page, train_tab.generate)
        preference.wire(page, preference_tab)
        diagnostics.wire(page, diagnostics_tab)
        export.wire(page, export_tab)
        api.wire(hosted)  # /train streams one JSON summary per iteration and a final one
        demo.unload(_on_unload)
    return demo


def _on_unload(request: gr.Request) -> None:
    runs.drop_session(session_of(request))


def _preload() -> None:
    """Load the default model into the cache (local files only; errors are ignored here)."""
    try:
        runs.MODELS.get(runner.config_from_form({}, hosted=False))
    except Exception:  # noqa: BLE001 - the first Start reports it properly
        log.info("preloading the tiny model failed:\n%s", traceback.format_exc())


def launch_kwargs(hosted: bool = False) -> dict[str, Any]:
    """Arguments for ``Blocks.launch`` (theme/css/js go here in Gradio 6; CSS and JS are read from
    ``app/static``); uploads are capped at the largest file the app accepts (a LoRA; configs are
    checked against their smaller limit)."""
    return {"theme": gr.themes.Soft(), "css": (STATIC / "app.css").read_text(encoding="utf-8"),
            "js": (STATIC / "app.js").read_text(encoding="utf-8"), "allowed_paths": [str(runs_root())],
            "show_error": True, "max_file_size": caps(hosted)["lora_bytes"]}


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
                runs.expire_idle(hosted)
                runs.remove_old_run_folders(hosted)
            except Exception:  # noqa: BLE001 - never let cleanup take the server down
                log.warning("cleanup failed:\n%s", traceback.format_exc())

    threading.Thread(target=sweep, name="rlr-janitor", daemon=True).start()
