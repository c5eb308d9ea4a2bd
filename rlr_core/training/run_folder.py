"""The run folder (``output_dir``) on disk: RNG states in a ``weights_only``-loadable form, atomic
directory and file writes, removing the temporaries a killed process left behind, the checkpoint
folders (``checkpoints/step-NNNNNN``: finding the newest complete one, pruning old ones) and the
metrics file (``metrics.jsonl``: one JSON line per iteration).

Every temporary is a hidden sibling of its target named ``.<target>.tmp-<pid>`` (or
``.<target>.old-<pid>`` for the copy being replaced), so ``remove_stale_temporaries`` can tell
whose it is: only those of processes that are no longer running are removed."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

CHECKPOINT_FILE = "trainer_state.pt"
CHECKPOINT_PREFIX = "step-"
METRICS_FILE = "metrics.jsonl"


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


_TEMPORARY_NAME = re.compile(r"^\.(?P<target>.+)\.(?:tmp|old)-(?P<pid>\d+)$")
_PROCESS_STARTED = time.time()  # no temporary of this process can be older than this module


def temporary_path(target: Path, kind: str = "tmp") -> Path:
    """The temporary sibling of ``target`` for this process: ``.<name>.<kind>-<pid>`` (kind "tmp" or "old")."""
    if kind not in ("tmp", "old"):
        raise ValueError(f"kind must be 'tmp' or 'old'; got {kind!r}")
    return target.parent / f".{target.name}.{kind}-{os.getpid()}"


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Remove the temporaries (``.<name>.tmp-<pid>`` / ``.old-<pid>``) a killed process left in ``directory``.

    Safe with concurrent writers: a temporary whose process is still running is kept; one
    carrying this process's pid is removed only when it predates this process (a pid reused
    after a restart). Returns the removed paths.
    """
    root = Path(directory)
    if not root.is_dir():
        return []
    removed = []
    for path in root.iterdir():
        match = _TEMPORARY_NAME.match(path.name)
        if match is None or not _is_stale(path, int(match["pid"])):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        removed.append(path)
    return removed


def _is_stale(path: Path, pid: int) -> bool:
    if pid == os.getpid():
        try:
            return path.lstat().st_mtime < _PROCESS_STARTED
        except FileNotFoundError:
            return False
    return not _process_alive(pid)


def _process_alive(pid: int) -> bool:
    """True when a process ``pid`` exists (or cannot be checked: then it is assumed to)."""
    if os.name != "posix" or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists, owned by someone else
        return True
    return True


def atomic_directory(directory: Path, write: Callable[[Path], None]) -> None:
    """Create ``directory`` by ``write(tmp)`` into a sibling temporary directory, then rename.

    An existing ``directory`` is moved aside only once the new one is complete, so at every
    moment a complete copy exists on disk.
    """
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(directory, "tmp")
    old = temporary_path(directory, "old")
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


def atomic_write_text(path: Path, text: str) -> None:
    """Replace the file ``path`` by ``text`` through a temporary sibling, fsync and ``os.replace``:
    at every moment ``path`` holds either the old or the new text, never a part of either."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path, "tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


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


def checkpoint_dir(output_dir: str | os.PathLike, step: int) -> Path:
    """The checkpoint directory of iteration ``step``: ``output_dir/checkpoints/step-NNNNNN``."""
    return Path(output_dir) / "checkpoints" / f"{CHECKPOINT_PREFIX}{step:06d}"


def prune_checkpoints(output_dir: str | os.PathLike, keep: int) -> None:
    """Remove all but the newest ``keep`` complete checkpoints of ``output_dir``."""
    for old in checkpoint_dirs(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------- metrics.jsonl
def metrics_path(output_dir: str | os.PathLike) -> Path:
    """``output_dir/metrics.jsonl``."""
    return Path(output_dir) / METRICS_FILE


def append_metrics(output_dir: str | os.PathLike, line: dict[str, Any]) -> None:
    """Append one JSON line (an iteration's metrics) to ``output_dir/metrics.jsonl``."""
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    with open(metrics_path(output_dir), "a", encoding="utf-8") as handle:
        handle.write(json.dumps(line) + "\n")


def truncate_metrics(output_dir: str | os.PathLike, step: int) -> None:
    """Drop metric lines of iterations after ``step`` (they will be run again), and unreadable ones.

    The file is rewritten through a temporary file and ``os.replace``, never in place: a crash
    meanwhile leaves the old file whole.
    """
    path = metrics_path(output_dir)
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if int(json.loads(line)["step"]) <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def _to_lists(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_to_lists(v) for v in value]
    return value


def _to_tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_to_tuples(v) for v in value)
    return value
