"""RLR Studio: the Gradio app over ``rlr_core`` (live RLR fine-tuning, preferences, diagnostics, export).

Importing this package turns Gradio analytics off before Gradio is imported, so the app makes no
outside network call at start-up. Entry points: ``rlr-studio`` / ``python -m app``
(:mod:`app.__main__`), ``app/space.py`` (Hugging Face Spaces), :func:`app.ui.build_app`.
"""

from __future__ import annotations

import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

__all__ = ["__version__"]
__version__ = "0.1.0"
