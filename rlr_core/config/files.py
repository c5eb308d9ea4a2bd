"""Reading config files that may come from strangers (the app's upload): bounded size, bounded nesting, no YAML
aliases or anchors (a "billion laughs" file of a few hundred bytes would otherwise expand to gigabytes), and a
safe loader (python tags stay inert). Writing goes through a temporary sibling. Standard library and PyYAML only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

__all__ = ["MAX_CONFIG_BYTES", "MAX_CONFIG_NESTING", "parse_yaml", "parse_json", "nested_deeper_than", "read_limited",
           "read_path_or_text", "write_text"]

MAX_CONFIG_BYTES = 1_000_000
"""Default size limit of a config file read by ``TrainConfig.from_file`` (and ``from_yaml`` / ``from_json`` of a path)."""

MAX_CONFIG_NESTING = 20
"""How deeply lists / mappings may nest in a config file (the real ones nest 3 levels)."""


def write_text(path: Path, text: str) -> None:
    """Write ``text`` through a temporary sibling (``.<name>.tmp-<pid>``) and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_path_or_text(path_or_text: str | os.PathLike) -> str:
    if isinstance(path_or_text, os.PathLike):
        return read_limited(Path(path_or_text), MAX_CONFIG_BYTES)
    if "\n" not in path_or_text and len(path_or_text) < 4096 and _is_existing_file(path_or_text):
        return read_limited(Path(path_or_text), MAX_CONFIG_BYTES)
    return path_or_text


def _is_existing_file(text: str) -> bool:
    try:
        return Path(text).is_file()
    except (OSError, ValueError):  # e.g. a name too long for the file system, a NUL character
        return False


def read_limited(path: Path, max_bytes: int) -> str:
    """The UTF-8 text of ``path``; ValueError when it is larger than ``max_bytes`` (read no further)."""
    if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 1:
        raise ValueError(f"max_bytes must be an integer >= 1; got {max_bytes!r}")
    with open(path, "rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        size = max(path.stat().st_size, len(data))
        raise ValueError(f"config file {str(path)!r} is {size:,} bytes; the limit is {max_bytes:,} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"config file {str(path)!r} is not UTF-8 text: {error}") from None


_TOO_DEEP = f"config is nested too deeply (more than {MAX_CONFIG_NESTING} levels of lists / mappings)"


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader (python tags stay inert) that refuses aliases and anchors and limits nesting.

    Both are checked while composing, event by event, before any node is built or expanded.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._nesting = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent):
            raise ValueError(f"config must not use YAML aliases (*{event.anchor} on line {line}); write the value out")
        if getattr(event, "anchor", None) is not None:
            raise ValueError(f"config must not use YAML anchors (&{event.anchor} on line {line}); write the value out")
        collection = isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent))
        if collection:
            self._nesting += 1
            if self._nesting > MAX_CONFIG_NESTING:
                raise ValueError(f"{_TOO_DEEP}, line {line}")
        try:
            return super().compose_node(parent, index)
        finally:
            if collection:
                self._nesting -= 1


def parse_yaml(text: str) -> Any:
    """The data of YAML config text (safe loader; no aliases / anchors; bounded nesting); ValueError if bad."""
    try:
        return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 - _ConfigLoader is a SafeLoader
    except yaml.YAMLError as error:
        raise ValueError(f"config is not valid YAML: {error}") from error


def parse_json(text: str) -> Any:
    """The data of JSON config text (bounded nesting); ValueError if bad."""
    try:
        data = json.loads(text)
    except ValueError as error:  # JSONDecodeError, or e.g. an integer of more than 4300 digits
        raise ValueError(f"config is not valid JSON: {error}") from error
    except RecursionError:  # the decoder's own depth guard (about 1000 levels)
        raise ValueError(_TOO_DEEP) from None
    if nested_deeper_than(data, MAX_CONFIG_NESTING):
        raise ValueError(_TOO_DEEP)
    return data


def nested_deeper_than(value: Any, limit: int) -> bool:
    """True when lists / mappings nest more than ``limit`` levels in ``value`` (no recursion)."""
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return True
            pending.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False
