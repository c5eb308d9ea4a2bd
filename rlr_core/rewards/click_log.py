"""The click log of a preference run: every shown image of a clicked round, durable before it is used.

Each click is appended to a JSONL file and fsynced *before* anything uses it; the displayed images are
stored next to it (PNG, named by their SHA-256) so a learned head can be refitted after a restart
(``rlr_core.rewards.preference_head``). :func:`click_rewards` turns one click (chosen images, or ranks)
into rewards. See docs/rewards.md (preference).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from dataclasses import MISSING, asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

__all__ = ["LOG_VERSION", "ClickRecord", "ClickLog", "click_rewards", "image_sha256", "to_uint8"]

LOG_VERSION = 1


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[B, 3, H, W] in [0, 1] -> uint8 [B, H, W, 3] (what is shown to the user)."""
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def image_sha256(pixels: np.ndarray) -> str:
    """SHA-256 of one uint8 [H, W, 3] image (shape included, so equal pixels = equal hash)."""
    digest = hashlib.sha256(f"{pixels.shape}".encode())
    digest.update(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# The click log
# --------------------------------------------------------------------------------------------


@dataclass
class ClickRecord:
    """One shown image of a clicked round: which prompt/seed made it and what the user said."""

    round_id: str
    index: int  # position in the round's batch
    prompt: str
    seed: int | None  # seed of the round's generator (the image is ``index`` in that batch)
    image_sha256: str
    chosen: bool
    rank: int | None  # 1 = best, when the user ranked instead of choosing
    time: float
    mode: str = "direct"
    type: str = "click"
    version: int = LOG_VERSION


class ClickLog:
    """Append-only JSONL click log; images saved as ``<stem>_images/<sha256>.png`` beside it.

    ``append_round`` writes and fsyncs before returning, so a click is durable before it is used.
    ``load()`` reads everything back (after a restart). A line torn by a crash while writing is
    skipped with a warning, and the next append starts on a fresh line, so nothing complete is lost.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.image_dir = self.path.parent / f"{self.path.stem}_images"
        self.records: list[ClickRecord] = []
        self.events: list[dict[str, Any]] = []
        if self.path.exists():
            self.load()

    # -- writing -------------------------------------------------------------------------
    def save_images(self, pixels: np.ndarray) -> list[str]:
        """Store uint8 [B, H, W, 3] images by hash (idempotent); returns the hashes."""

        self.image_dir.mkdir(parents=True, exist_ok=True)
        hashes = []
        for array in pixels:
            sha = image_sha256(array)
            target = self.image_dir / f"{sha}.png"
            if not target.exists():
                tmp = target.with_suffix(".png.tmp")
                with open(tmp, "wb") as handle:
                    Image.fromarray(np.ascontiguousarray(array)).save(handle, format="PNG")
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, target)
            hashes.append(sha)
        return hashes

    def _append_lines(self, rows: list[dict[str, Any]]) -> None:
        new_file = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)
        if not new_file and not self._ends_with_newline():
            data = "\n" + data  # after a torn last line: never merge the new record into it
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if new_file and hasattr(os, "O_DIRECTORY"):
            fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _ends_with_newline(self) -> bool:
        """True when the log is empty or its last byte is a newline (no torn last line)."""
        with open(self.path, "rb") as handle:
            if handle.seek(0, os.SEEK_END) == 0:
                return True
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) == b"\n"

    def append_round(
        self,
        round_id: str,
        prompts: Sequence[str],
        seed: int | None,
        pixels: np.ndarray,
        chosen: Sequence[bool],
        ranks: Sequence[int] | None = None,
        mode: str = "direct",
    ) -> list[ClickRecord]:
        """Log one clicked round (one record per shown image); durable when this returns."""
        if not (len(prompts) == len(pixels) == len(chosen)):
            raise ValueError(f"a round needs one prompt and one choice per image: {len(prompts)} prompts, {len(pixels)} images, {len(chosen)} choices")
        hashes = self.save_images(pixels)
        now = time.time()
        records = [
            ClickRecord(round_id, i, prompts[i], seed, hashes[i], bool(chosen[i]), None if ranks is None else int(ranks[i]), now, mode)
            for i in range(len(pixels))
        ]
        self._append_lines([asdict(r) for r in records])
        self.records.extend(records)
        return records

    @property
    def start_lora_path(self) -> Path:
        """Where the LoRA the log's first round was sampled with is kept (a safetensors file)."""
        return self.path.parent / f"{self.path.stem}_start_lora.safetensors"

    def save_start_lora(self, tensors: dict[str, torch.Tensor]) -> None:
        """Keep the LoRA the session starts from (once, before the first round), durable on return."""
        from safetensors.torch import save_file

        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.start_lora_path.with_suffix(".tmp")
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, self.start_lora_path)

    def start_lora(self) -> dict[str, torch.Tensor] | None:
        """The LoRA kept by :meth:`save_start_lora`, or None."""
        if not self.start_lora_path.exists():
            return None
        from safetensors.torch import load_file

        return load_file(str(self.start_lora_path))

    def append_event(self, type: str, **data: Any) -> None:
        """Log a non-click event (e.g. ``update`` with the round id and rewards)."""
        row = {"type": type, "time": time.time(), "version": LOG_VERSION, **data}
        self._append_lines([row])
        self.events.append(row)

    # -- reading -------------------------------------------------------------------------
    def load(self) -> list[ClickRecord]:
        """Read the whole log (replacing what is in memory); returns the click records."""
        self.records, self.events = [], []
        if not self.path.exists():
            return self.records
        lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
        fields = set(ClickRecord.__dataclass_fields__)
        skipped = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            row = _log_row(line)
            if row is None:
                skipped.append(number)
            elif row.get("type", "click") == "click":
                self.records.append(ClickRecord(**{k: v for k, v in row.items() if k in fields}))
            else:
                self.events.append(row)
        if skipped:
            numbers = ", ".join(map(str, skipped[:20])) + (", ..." if len(skipped) > 20 else "")
            warnings.warn(
                f"{self.path}: skipped {len(skipped)} unreadable line(s) (line {numbers}): "
                "torn by a crash while writing, or not a click log record",
                stacklevel=2,
            )
        return self.records

    def rounds(self) -> dict[str, list[ClickRecord]]:
        """Click records grouped by round id (in log order)."""
        grouped: dict[str, list[ClickRecord]] = {}
        for record in self.records:
            grouped.setdefault(record.round_id, []).append(record)
        return grouped

    def pairs(self) -> list[tuple[str, str]]:
        """(preferred, other) image hashes: chosen > not chosen, or better rank > worse rank, per round."""
        return [pair for round_pairs in self.round_pairs().values() for pair in round_pairs]

    def round_pairs(self) -> dict[str, list[tuple[str, str]]]:
        """:meth:`pairs` grouped by round id (in log order); a round without a preference has no entry."""
        out: dict[str, list[tuple[str, str]]] = {}
        for round_id, records in self.rounds().items():
            for a in records:
                for b in records:
                    if a.rank is not None and b.rank is not None:
                        if a.rank < b.rank:
                            out.setdefault(round_id, []).append((a.image_sha256, b.image_sha256))
                    elif a.chosen and not b.chosen:
                        out.setdefault(round_id, []).append((a.image_sha256, b.image_sha256))
        return out

    def load_image(self, sha: str) -> torch.Tensor:
        """A stored image as float [3, H, W] in [0, 1]."""

        path = self.image_dir / f"{sha}.png"
        if not path.exists():
            raise FileNotFoundError(f"image {sha} of click log {self.path} is missing ({path})")
        array = np.asarray(Image.open(path).convert("RGB"), dtype=np.uint8)
        return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255.0


_REQUIRED_CLICK_FIELDS = tuple(
    name for name, spec in ClickRecord.__dataclass_fields__.items() if spec.default is MISSING
)


def _log_row(line: str) -> dict[str, Any] | None:
    """One click-log line as a dict, or None when it is not a usable record: not JSON (torn), not a
    JSON object, an event without a ``type`` name, or a click lacking one of the ClickRecord fields."""
    try:
        row = json.loads(line)
    except (ValueError, RecursionError):  # JSONDecodeError (a torn line), an absurd number, deep nesting
        return None
    if not isinstance(row, dict):
        return None
    kind = row.get("type", "click")
    if not isinstance(kind, str):
        return None
    if kind == "click" and not all(name in row for name in _REQUIRED_CLICK_FIELDS):
        return None
    return row


# --------------------------------------------------------------------------------------------
# A click as rewards
# --------------------------------------------------------------------------------------------


def click_rewards(n: int, chosen: Sequence[int] | None = None, ranks: Sequence[int] | None = None) -> tuple[list[bool], list[int] | None, torch.Tensor]:
    """Validate a click and turn it into (chosen flags, ranks, rewards float32 [n]).

    ``chosen``: indices of the preferred images (reward 1, others 0). ``ranks``: one rank per image,
    1 = best (reward (n - rank) / (n - 1), ties allowed). Exactly one of the two.
    """
    if (chosen is None) == (ranks is None):
        raise ValueError("give exactly one of chosen (indices of the preferred images) or ranks (one per image, 1 = best)")
    if chosen is not None:
        idx = [int(i) for i in chosen]
        if not idx or len(set(idx)) != len(idx) or any(i < 0 or i >= n for i in idx):
            raise ValueError(f"chosen={list(chosen)} must be distinct image indices in 0..{n - 1}, at least one")
        if len(idx) == n:
            raise ValueError(f"chosen={idx} picks every image; leave at least one not chosen (a preference needs a contrast)")
        flags = [i in idx for i in range(n)]
        return flags, None, torch.tensor([1.0 if f else 0.0 for f in flags], dtype=torch.float32)
    rank_list = [int(r) for r in ranks]  # type: ignore[union-attr]
    if len(rank_list) != n or any(r < 1 or r > n for r in rank_list):
        raise ValueError(f"ranks={list(ranks)} must give one rank in 1..{n} per image (1 = best)")  # type: ignore[arg-type]
    if len(set(rank_list)) == 1:
        raise ValueError(f"ranks={rank_list} are all equal; a preference needs at least two different ranks")
    flags = [r == min(rank_list) for r in rank_list]
    rewards = torch.tensor([(n - r) / (n - 1) for r in rank_list], dtype=torch.float32)
    return flags, rank_list, rewards
