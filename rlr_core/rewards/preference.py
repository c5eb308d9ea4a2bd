"""Human click preference: the click log, a direct-mode session, and a learned (Bradley-Terry) reward.

Two modes (SPEC: the reward of an image is the user's judgement of it):

* **direct** -- the clicks *are* the rewards. ``PreferenceSession.new_round`` samples a batch with
  ``estimator.rollout(chain, prompts, generator, differentiable_reward=False)``, which keeps exactly
  what the gradient needs (detached start of the HO sub-chain, noise seeds, ...); the user clicks;
  ``update`` turns the clicks into rewards (chosen = 1, not chosen = 0, or rank-based) and calls
  ``estimator.gradient(rollout, rewards)`` then ``trainer.apply_update(estimate)``. The gradient
  therefore comes from the trajectories of exactly the images the user saw.
* **learned** -- a Bradley-Terry (logistic) head on image features (open_clip image embeddings when
  the weights are available, a weight-free differentiable colour/layout feature otherwise) is refitted
  on every click so far; it is a differentiable Reward (``get_reward("preference", mode="learned",
  log_path=...)``), so RLR's first-order part applies. A learned-mode session updates with the
  refitted head's rewards on the shown rollout.

Every click is appended to a JSONL file and fsynced *before* it is used; the displayed images are
stored next to it (PNG, named by their SHA-256) so the learned head can be refitted after a restart.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
import warnings
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from rlr_core.hub import WeightsUnavailableError
from rlr_core.rewards.clip_models import encode_images, load_clip
from rlr_core.rewards.simple import check_images

MODES = ("direct", "learned")
FEATURES = ("auto", "clip", "tiny-clip", "pixels")  # tiny-clip = clip features from the bundled tiny-clip
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
        out: list[tuple[str, str]] = []
        for records in self.rounds().values():
            for a in records:
                for b in records:
                    if a.rank is not None and b.rank is not None:
                        if a.rank < b.rank:
                            out.append((a.image_sha256, b.image_sha256))
                    elif a.chosen and not b.chosen:
                        out.append((a.image_sha256, b.image_sha256))
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
# Learned mode: a Bradley-Terry head on image features
# --------------------------------------------------------------------------------------------


def pixel_features(images: torch.Tensor, bins: int = 8) -> torch.Tensor:
    """Weight-free differentiable image features [B, 3*bins + 48 + 8].

    Soft per-channel colour histograms (Gaussian soft binning), a 4x4 average-pooled thumbnail,
    per-channel mean and std, mean chroma (max - min channel) and edge energy.
    """
    x = images.float().clamp(0, 1)
    b = x.shape[0]
    centers = torch.linspace(0, 1, bins, device=x.device).view(1, 1, bins, 1)
    width = 1.0 / bins
    flat = x.flatten(2).unsqueeze(2)  # [B, 3, 1, HW]
    weights = torch.exp(-0.5 * ((flat - centers) / width) ** 2)
    weights = weights / weights.sum(dim=2, keepdim=True).clamp_min(1e-8)
    hist = weights.mean(dim=-1).reshape(b, 3 * bins)
    thumb = F.adaptive_avg_pool2d(x, 4).reshape(b, 48)
    mean = x.mean(dim=(2, 3))
    std = (x.var(dim=(2, 3), unbiased=False) + 1e-8).sqrt()
    chroma = (x.max(dim=1).values - x.min(dim=1).values).mean(dim=(1, 2)).unsqueeze(1)
    gray = x.mean(dim=1)
    edges = ((gray[:, 1:, :] - gray[:, :-1, :]).abs().mean(dim=(1, 2)) + (gray[:, :, 1:] - gray[:, :, :-1]).abs().mean(dim=(1, 2))).unsqueeze(1)
    return torch.cat([hist, thumb, mean, std, chroma, edges], dim=1)


class PreferenceReward:
    """Learned preference reward: ``w . standardise(features(image))`` fitted by Bradley-Terry.

    ``refit()`` fits ``w`` on every pair (preferred, other) in the click log:
    minimise mean log(1 + exp(-(s_preferred - s_other))) + l2 * |w|^2 (L-BFGS, convex). Before any
    click ``w = 0`` (every image scores 0). Differentiable in the pixels through the features.
    """

    name = "preference"
    differentiable = True

    def __init__(
        self,
        log: ClickLog | str | os.PathLike | None = None,
        features: str = "auto",
        clip_model: str = "ViT-L-14-quickgelu",
        pretrained: str = "openai",
        l2: float = 1e-2,
        device: str | torch.device = "cpu",
    ) -> None:
        if features not in FEATURES:
            raise ValueError(f"features={features!r} is not allowed; allowed values: {list(FEATURES)}")
        if not float(l2) >= 0:
            raise ValueError(f"l2={l2!r} is not allowed; allowed values: a number >= 0")
        self.log = log if isinstance(log, ClickLog) or log is None else ClickLog(log)
        self.l2 = float(l2)
        self.device = torch.device(device)
        if features == "tiny-clip":  # the bundled offline model (rlr_core.tiny.clip_model)
            features, clip_model = "clip", "tiny-clip"
        self._clip_args = (clip_model, pretrained)
        self.features_kind = self._choose_features(features)
        self.weight: torch.Tensor | None = None  # [D] float64 on cpu
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None
        self.num_pairs = 0
        self._feature_cache: dict[str, torch.Tensor] = {}
        if self.log is not None and self.log.records:
            self.refit()

    @classmethod
    def from_options(cls, mode: str = "learned", log_path: str = "clicks.jsonl", device: Any = "cpu", **options: Any) -> "PreferenceReward":
        """Factory behind ``get_reward("preference", ...)``."""
        if mode not in MODES:
            raise ValueError(f"preference mode={mode!r} is not allowed; allowed values: {list(MODES)}")
        if mode == "direct":
            raise ValueError(
                "preference mode='direct' has no reward function: the clicks themselves are the rewards. "
                "Use rlr_core.rewards.preference.PreferenceSession(..., mode='direct'); get_reward('preference') allows mode='learned'"
            )
        return cls(ClickLog(log_path), device=device, **options)

    def _choose_features(self, features: str) -> str:
        if features == "pixels":
            return "pixels"

        try:
            load_clip(*self._clip_args, device=self.device)
            return "clip"
        except WeightsUnavailableError as exc:
            if features == "clip":
                raise
            warnings.warn(f"preference reward: using weight-free pixel features ({exc})")
            return "pixels"

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Feature vectors [B, D] (float32, differentiable in ``images``)."""
        if self.features_kind == "clip":

            return encode_images(load_clip(*self._clip_args, device=images.device), images)
        return pixel_features(images)

    def _stored_features(self, sha: str) -> torch.Tensor:
        if sha not in self._feature_cache:
            assert self.log is not None
            image = self.log.load_image(sha).unsqueeze(0).to(self.device)
            with torch.no_grad():
                self._feature_cache[sha] = self.features(image)[0].double().cpu()
        return self._feature_cache[sha]

    def refit(self, log: ClickLog | None = None) -> int:
        """Refit on every click in the log; returns the number of pairs used."""
        if log is not None:
            self.log = log
        if self.log is None:
            raise ValueError("PreferenceReward.refit needs a click log (log=ClickLog(path))")
        pairs = self.log.pairs()
        self.num_pairs = len(pairs)
        if not pairs:
            self.weight = None
            return 0
        shas = sorted({s for pair in pairs for s in pair})
        index = {s: i for i, s in enumerate(shas)}
        feats = torch.stack([self._stored_features(s) for s in shas])
        mean = feats.mean(dim=0)
        std = feats.std(dim=0, unbiased=False).clamp_min(1e-3) if len(shas) > 1 else torch.ones_like(mean)
        z = (feats - mean) / std
        win = torch.tensor([index[a] for a, _ in pairs])
        lose = torch.tensor([index[b] for _, b in pairs])
        diff = z[win] - z[lose]  # [P, D]
        w = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w], lr=1.0, max_iter=200, tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")
        l2 = max(self.l2, 1e-6)

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = F.softplus(-(diff @ w)).mean() + l2 * (w * w).sum()
            loss.backward()
            return loss

        opt.step(closure)
        self.weight, self.mean, self.std = w.detach(), mean, std
        return self.num_pairs

    def pair_accuracy(self) -> float:
        """Fraction of logged pairs the current head orders correctly (training accuracy)."""
        if self.log is None or self.weight is None:
            return float("nan")
        pairs = self.log.pairs()
        score = {s: float(((self._stored_features(s) - self.mean) / self.std) @ self.weight) for p in pairs for s in p}
        return float(np.mean([score[a] > score[b] for a, b in pairs])) if pairs else float("nan")

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:

        check_images(images, prompts)
        feats = self.features(images)
        if self.weight is None:
            return (feats * 0.0).sum(dim=1).float()
        dev, dt = feats.device, feats.dtype
        z = (feats - self.mean.to(dev, dt)) / self.std.to(dev, dt)
        return (z @ self.weight.to(dev, dt)).float()


# --------------------------------------------------------------------------------------------
# Sessions: sample a round, click, update
# --------------------------------------------------------------------------------------------


@dataclass
class PreferenceRound:
    """One batch shown to the user. ``rollout`` is what the estimator needs for the update."""

    round_id: str
    prompts: list[str]
    seed: int | None
    images: torch.Tensor  # [B, 3, H, W] cpu float in [0, 1], detached (what is displayed)
    image_hashes: list[str]
    rollout: Any = field(repr=False, default=None)
    records: list[ClickRecord] | None = None
    updated: bool = False

    @property
    def size(self) -> int:
        return len(self.prompts)

    @property
    def clicked(self) -> bool:
        return self.records is not None

    def pil_images(self) -> list[Any]:
        """The images as PIL (for a UI gallery)."""

        return [Image.fromarray(a) for a in to_uint8(self.images)]


@dataclass
class PreferenceUpdate:
    """What ``PreferenceSession.update`` did (``report``: the Trainer's StepReport of the update)."""

    round_id: str
    rewards: list[float]
    update_norm: float
    report: Any


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


class ClickReward:
    """The reward of a direct-mode click run: the clicks themselves, so no function of the images.

    Calling it gives NaN for every image (evaluation images of a click run have no score; a
    training update from it would be skipped as non-finite). Updates come from
    ``PreferenceSession.update`` with the clicks as rewards.
    """

    name = "clicks"
    differentiable = False

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        check_images(images, prompts)
        return torch.full((images.shape[0],), float("nan"))


class PreferenceSession:
    """Rounds of images to click, each turned into one iteration of the run's Trainer.

    ``trainer``: the run's ``rlr_core.trainer.Trainer`` (anything with ``chain``, ``estimator`` and
    ``update_from_rewards(rollout, rewards) -> StepReport``): its estimator samples the rounds and
    every click update is a Trainer iteration (a step, a metrics line, checkpoints when due).
    ``k``: how many images the user must choose per round in ``click(chosen=...)`` (None = any
    number between 1 and B-1).
    """

    def __init__(
        self,
        trainer: Any,
        log: ClickLog | str | os.PathLike,
        mode: str = "direct",
        k: int | None = 1,
        reward: PreferenceReward | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} is not allowed; allowed values: {list(MODES)}")
        if k is not None and int(k) < 1:
            raise ValueError(f"k={k!r} is not allowed; allowed values: an integer >= 1 or None")
        self.trainer = trainer
        self.log = log if isinstance(log, ClickLog) else ClickLog(log)
        self.mode = mode
        self.k = None if k is None else int(k)
        self.reward: PreferenceReward | None = None
        if mode == "learned":
            self.reward = reward if reward is not None else PreferenceReward(self.log, features="auto")
            if self.reward.log is not self.log:
                self.reward.refit(self.log)

    def new_round(self, prompts: Sequence[str], generator: torch.Generator | None = None, seed: int | None = None) -> PreferenceRound:
        """Sample one batch (one image per prompt) and keep what the update will need."""
        prompts = [str(p) for p in prompts]
        if len(prompts) < 2:
            raise ValueError(f"a round needs at least 2 images to compare, got {len(prompts)} prompts")
        if self.k is not None and self.k >= len(prompts):
            raise ValueError(f"k={self.k} must be smaller than the number of images per round ({len(prompts)})")
        if generator is None:
            seed = int(seed) if seed is not None else int(torch.randint(0, 2**31 - 1, (1,)).item())
            generator = torch.Generator().manual_seed(seed)
        else:
            seed = int(generator.initial_seed())
        differentiable = self.mode == "learned"
        rollout = self.trainer.estimator.rollout(self.trainer.chain, prompts, generator, differentiable_reward=differentiable)
        images = rollout.images.detach().float().cpu()
        hashes = [image_sha256(a) for a in to_uint8(images)]
        return PreferenceRound(uuid.uuid4().hex, prompts, seed, images, hashes, rollout)

    def click(self, round: PreferenceRound, chosen: Sequence[int] | None = None, ranks: Sequence[int] | None = None) -> list[ClickRecord]:
        """Record the user's choice (logged and fsynced before anything uses it)."""
        if round.clicked:
            raise ValueError(f"round {round.round_id} was already clicked")
        if chosen is not None and self.k is not None and len(list(chosen)) != self.k:
            raise ValueError(f"chosen={list(chosen)} must pick exactly k={self.k} images")
        flags, rank_list, _ = click_rewards(round.size, chosen, ranks)
        round.records = self.log.append_round(round.round_id, round.prompts, round.seed, to_uint8(round.images), flags, rank_list, self.mode)
        if self.reward is not None:
            self.reward.refit(self.log)
        return round.records

    def rewards_for(self, round: PreferenceRound) -> torch.Tensor:
        """Rewards of the round: clicks (direct) or the refitted head on the rollout's images (learned)."""
        if not round.clicked:
            raise ValueError(f"round {round.round_id} has no click yet; call click() first")
        if self.mode == "direct":
            recs = sorted(round.records or [], key=lambda r: r.index)
            chosen = None if recs[0].rank is not None else [r.index for r in recs if r.chosen]
            ranks = [r.rank for r in recs] if recs[0].rank is not None else None
            return click_rewards(round.size, chosen, ranks)[2]  # type: ignore[arg-type]
        assert self.reward is not None
        return self.reward(round.rollout.images, round.prompts)

    def update(self, round: PreferenceRound) -> PreferenceUpdate:
        """One optimiser step from the round's clicks, through the round's own trajectories."""
        if round.updated:
            raise ValueError(f"round {round.round_id} was already used for an update")
        if round.rollout is None:
            raise ValueError(f"round {round.round_id} has no rollout (rounds do not survive a restart; sample a new one)")
        rewards = self.rewards_for(round)
        report = self.trainer.update_from_rewards(round.rollout, rewards)
        round.updated, round.rollout = True, None  # free the kept graph / states
        values = [float(v) for v in rewards.detach().cpu()]
        norm = float(report.update_norm)
        self.log.append_event("update", round_id=round.round_id, rewards=values, update_norm=norm, mode=self.mode,
                              step=int(report.step))
        return PreferenceUpdate(round.round_id, values, norm, report)

    def history(self) -> dict[str, list[ClickRecord]]:
        """Every clicked round in the log (survives restarts)."""
        return self.log.rounds()
