"""Checkpoint helpers: RNG states in a ``weights_only``-loadable form, atomic directory writes,
and finding the newest complete checkpoint of a run."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

CHECKPOINT_FILE = "trainer_state.pt"
CHECKPOINT_PREFIX = "step-"


def rng_state() -> dict[str, Any]:
    """Global RNG states (torch CPU and CUDA, numpy, python) as plain lists and tensors."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    random.setstate(_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def isolated_rng() -> Iterator[None]:
    """Run code (evaluation) without changing the global RNG states seen by training."""
    saved = rng_state()
    try:
        yield
    finally:
        set_rng_state(saved)


def atomic_directory(directory: Path, write: Callable[[Path], None]) -> None:
    """Create ``directory`` by ``write(tmp)`` into a sibling temporary directory, then rename.

    An existing ``directory`` is moved aside only once the new one is complete, so at every
    moment a complete copy exists on disk.
    """
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".{directory.name}.tmp-{os.getpid()}"
    old = directory.parent / f".{directory.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write(tmp)
        if directory.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(directory, old)
        os.replace(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def checkpoint_dirs(output_dir: str | os.PathLike) -> list[Path]:
    """The complete checkpoint directories of ``output_dir/checkpoints``, oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        suffix = path.name[len(CHECKPOINT_PREFIX) :]
        if path.name.startswith(CHECKPOINT_PREFIX) and suffix.isdigit() and (path / CHECKPOINT_FILE).is_file():
            found.append((int(suffix), path))
    return [path for _, path in sorted(found)]


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint directory in ``output_dir/checkpoints``, or None."""
    dirs = checkpoint_dirs(output_dir)
    return dirs[-1] if dirs else None


def _to_lists(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_to_lists(v) for v in value]
    return value


def _to_tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_to_tuples(v) for v in value)
    return value
