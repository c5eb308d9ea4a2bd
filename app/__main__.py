"""``rlr-studio [--host H] [--port P] [--share] [--hosted]`` and ``python -m app``."""

from __future__ import annotations

import argparse
import os
import sys

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="rlr-studio", description="RLR Studio: live RLR fine-tuning of diffusion models.")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="interface to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
                        help="port (default 7860)")
    parser.add_argument("--share", action="store_true", help="create a public gradio.live link (contacts Gradio's servers)")
    parser.add_argument("--hosted", action="store_true",
                        help="hosted mode: refuse local paths and plug-in rewards, cap sizes "
                             "(also RLR_STUDIO_HOSTED=1, and automatic on Hugging Face Spaces)")
    parser.add_argument("--no-preload", action="store_true", help="do not load the tiny model at start-up")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from rlr_core.hosted import HOSTED_ENV

    from .settings import hosted_from_env

    hosted = bool(args.hosted) or hosted_from_env()
    if hosted:
        os.environ[HOSTED_ENV] = "1"  # rlr_core.rewards refuses plug-ins too
    from .ui import build_app, launch_kwargs

    demo = build_app(hosted=hosted, preload=not args.no_preload)
    demo.queue(default_concurrency_limit=4)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, **launch_kwargs(hosted))
    return 0


if __name__ == "__main__":
    sys.exit(main())
