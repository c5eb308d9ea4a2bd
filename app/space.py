"""Hugging Face Spaces entry point (``app_file: app/space.py``).

A Space installs ``requirements.txt`` and runs this file from the repository root, so
``rlr_core`` and ``app`` import from the checkout. Spaces set ``SPACE_ID``: the app runs in hosted
mode (the offered models and built-in rewards only, capped sizes and work). On ZeroGPU (``spaces`` installed,
``SPACES_ZERO_GPU`` set) training runs in chunks inside ``spaces.GPU`` calls (see app/zerogpu.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
# `python app/space.py` puts app/ first on sys.path: drop it (its modules are not top-level) and add the root
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
if str(ROOT) not in sys.path:  # Spaces run `python app/space.py`: make the repo root importable
    sys.path.insert(0, str(ROOT))

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

from rlr_core.hosted import HOSTED_ENV  # noqa: E402

os.environ.setdefault(HOSTED_ENV, "1")  # hosted mode (docs/hosting.md)

from app import zerogpu  # noqa: E402,F401  (registers the spaces.GPU function at start-up)
from app.ui import build_app, launch_kwargs  # noqa: E402
from rlr_core.hosted import HOSTED_LIMITS  # noqa: E402

demo = build_app(hosted=True)
demo.queue(default_concurrency_limit=HOSTED_LIMITS["queue_concurrency"], max_size=HOSTED_LIMITS["queue_size"])

if __name__ == "__main__":
    demo.launch(server_name="0.0.0.0", **launch_kwargs(hosted=True))
