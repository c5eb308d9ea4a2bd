"""``python -m rlr_core.config --markdown``: print the field reference table of docs/config.md;
``python -m rlr_core.config``: print the default config as YAML."""

from __future__ import annotations

import sys

from . import TrainConfig, markdown_table


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args not in ([], ["--markdown"]):
        print("usage: python -m rlr_core.config [--markdown]", file=sys.stderr)
        return 2
    sys.stdout.write(markdown_table() if args else TrainConfig().to_yaml())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
