"""Experiment tracking: every StepReport to TensorBoard or Weights & Biases (``report_to``).

``report_to: none`` (default) writes nothing beyond ``metrics.jsonl``. ``tensorboard`` writes
event files to ``output_dir/tensorboard`` (offline; view with ``tensorboard --logdir
output_dir/tensorboard``); ``wandb`` logs to a Weights & Biases run (needs ``pip install wandb``
and ``wandb login``, or ``WANDB_MODE=offline``). Both log the same things per iteration:
``reward/mean``, ``reward/std``, ``grad_norm/<part>``, ``cosine/<a~b>``, ``update_norm``,
``seconds``, ``memory/peak_mb``, ``memory/graph_mb``, ``eval/reward_mean``, and the fixed-seed
evaluation grids as images (``eval/images``; ``eval/before`` at step 0). Only rank 0 tracks.
tensorboard and wandb are imported only when chosen, so the plain install works without them.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from typing import Any

from ..config import REPORT_TO  # "none", "tensorboard", "wandb"

__all__ = ["REPORT_TO", "Tracker", "check_report_to", "create_tracker", "report_scalars"]


class Tracker:
    """Receives every StepReport of a run (the base class discards them: ``report_to: none``)."""

    def log(self, report: Any) -> None:
        """Record one iteration's scalars and, when present, its evaluation images."""

    def flush(self) -> None:
        """Write buffered events to disk (called when ``Trainer.run()`` ends)."""

    def close(self) -> None:
        """End the tracking run (``rlr-train`` calls it when training is over)."""


class TensorBoardTracker(Tracker):
    """Scalars and evaluation grids as TensorBoard events (``torch.utils.tensorboard``)."""

    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir))

    def log(self, report: Any) -> None:
        for tag, value in report_scalars(report).items():
            self.writer.add_scalar(tag, value, report.step)
        for tag, images, step in _report_images(report):
            self.writer.add_image(tag, _grid_array(images), step, dataformats="HWC")

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker(Tracker):
    """Scalars and evaluation grids as a Weights & Biases run."""

    def __init__(self, output_dir: Path, config: dict[str, Any]) -> None:
        wandb = _import_wandb()
        name = Path(output_dir).name or "rlr"
        self.wandb = wandb
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "rlr-studio"), name=name,
                              dir=str(output_dir), config=config, mode=os.environ.get("WANDB_MODE") or None)

    def log(self, report: Any) -> None:
        data: dict[str, Any] = dict(report_scalars(report))
        for tag, images, step in _report_images(report):
            if step != report.step:  # the "before" grid belongs to step 0
                self.run.log({tag: self.wandb.Image(_grid_array(images))}, step=step)
            else:
                data[tag] = self.wandb.Image(_grid_array(images))
        self.run.log(data, step=report.step)

    def close(self) -> None:
        self.run.finish()


def check_report_to(report_to: str) -> None:
    """ValueError starting with ``report_to`` when the chosen tracker cannot be used here."""
    if report_to not in REPORT_TO:
        raise ValueError(f"report_to must be one of {', '.join(REPORT_TO)}; got {report_to!r}")
    if report_to == "tensorboard":
        if importlib.util.find_spec("tensorboard") is None:  # torch.utils.tensorboard needs it
            raise ValueError(
                "report_to: tensorboard needs the tensorboard package: pip install -e \".[scale]\" "
                "(or pip install tensorboard), or set report_to: none"
            )
    elif report_to == "wandb":
        wandb = _import_wandb()
        mode = os.environ.get("WANDB_MODE", "").lower()
        if mode not in ("offline", "disabled", "dryrun") and not os.environ.get("WANDB_API_KEY") and not _wandb_logged_in(wandb):
            raise ValueError(
                "report_to: wandb is not configured: run `wandb login` (or set WANDB_API_KEY), or set "
                "WANDB_MODE=offline to log locally; or use report_to: tensorboard / none"
            )


def create_tracker(report_to: str, output_dir: str | os.PathLike, config: dict[str, Any] | None = None) -> Tracker:
    """The tracker ``report_to`` names, writing under ``output_dir`` (checked with ``check_report_to``)."""
    check_report_to(report_to)
    if report_to == "tensorboard":
        return TensorBoardTracker(Path(output_dir) / "tensorboard")
    if report_to == "wandb":
        return WandbTracker(Path(output_dir), config or {})
    return Tracker()


def report_scalars(report: Any) -> dict[str, float]:
    """The finite scalars of a StepReport under their tracker tags."""
    values: dict[str, Any] = {
        "reward/mean": report.reward_mean,
        "reward/std": report.reward_std,
        "update_norm": report.update_norm,
        "seconds": report.seconds,
        "memory/peak_mb": report.peak_memory_mb,
        "memory/graph_mb": report.graph_memory_mb,
        "eval/reward_mean": report.eval_reward_mean,
        "guard/heldout_reward": getattr(report, "heldout_reward", None),
        "guard/diversity": getattr(report, "diversity", None),
        "guard/kl": getattr(report, "kl", None),
        **{f"grad_norm/{name}": value for name, value in report.grad_norms.items()},
        **{f"cosine/{name}": value for name, value in report.cosines.items()},
    }
    return {tag: float(v) for tag, v in values.items() if isinstance(v, (int, float)) and math.isfinite(float(v))}


def _report_images(report: Any) -> list[tuple[str, list[Any], int]]:
    images = []
    if report.before_images:
        images.append(("eval/before", report.before_images, 0))
    if report.eval_images:
        images.append(("eval/images", report.eval_images, report.step))
    return images


def _grid_array(images: list[Any]) -> Any:
    import numpy as np

    from ..images import image_grid

    return np.asarray(image_grid(images).convert("RGB"))


def _import_wandb() -> Any:
    try:
        import wandb
    except ImportError:
        raise ValueError(
            "report_to: wandb needs the wandb package, which is not installed: pip install wandb "
            "(then wandb login), or use report_to: tensorboard (offline) / none"
        ) from None
    return wandb


def _wandb_logged_in(wandb: Any) -> bool:
    """Whether wandb finds credentials (``wandb login``), without prompting or network."""
    try:
        return bool(wandb.login(prompt=False, verify=False))
    except Exception:  # an older wandb without these arguments
        return False
