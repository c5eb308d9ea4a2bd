"""Experiment tracking (``report_to``): TensorBoard events of a short run, clear errors for wandb."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlr_core.config import TrainConfig
from rlr_core.run import ConfigError, TrainingRun

ROOT = Path(__file__).resolve().parents[1]


def _config(tmp_path, **changes) -> TrainConfig:
    values = dict(model="tiny", num_steps=4, batch_size=2, steps=2, prompts=["a red circle"], eval_seeds=[0, 1],
                  eval_every=1, checkpoint_every=0, device="cpu", dtype="float32", output_dir=str(tmp_path / "out"))
    values.update(changes)
    return TrainConfig(**values)


def test_tensorboard_events_hold_the_reward_curve_and_eval_images(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    torch.set_num_threads(1)
    run = TrainingRun.from_config(_config(tmp_path, report_to="tensorboard"))
    reports = list(run.trainer.run())
    log_dir = tmp_path / "out" / "tensorboard"
    assert list(log_dir.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    for tag in ("reward/mean", "reward/std", "grad_norm/total", "update_norm", "seconds", "memory/peak_mb",
                "eval/reward_mean"):
        assert tag in tags["scalars"], (tag, tags["scalars"])
    curve = events.Scalars("reward/mean")
    assert [e.step for e in curve] == [1, 2]
    assert [e.value for e in curve] == pytest.approx([r.reward_mean for r in reports], rel=1e-6)
    # the default rlr's parts: fo, ho (its residual, dropped: zero, so no cosine) and cv
    assert "cosine/fo~cv" in tags["scalars"], tags["scalars"]
    images = events.Images("eval/images")
    assert [e.step for e in images] == [1, 2]
    assert images[0].width >= 64 and images[0].height >= 32  # a grid of the 2 fixed-seed images
    assert [e.step for e in events.Images("eval/before")] == [0]


def test_wandb_offline_run_logs_scalars_and_eval_images(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    torch.set_num_threads(1)
    run = TrainingRun.from_config(_config(tmp_path, report_to="wandb"))
    list(run.trainer.run())
    run.trainer.tracker.close()
    media = [p.name for p in (tmp_path / "out" / "wandb").rglob("media/images/eval/*.png")]
    assert sum(name.startswith("before") for name in media) == 1, media
    assert sum(name.startswith("images") for name in media) == 2, media  # one grid per evaluation


def test_report_to_none_writes_no_tracker_files(tmp_path):
    torch.set_num_threads(1)
    run = TrainingRun.from_config(_config(tmp_path, steps=1, eval_seeds=[]))
    list(run.trainer.run())
    assert not (tmp_path / "out" / "tensorboard").exists()


def test_wandb_missing_is_a_clear_config_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError, installed or not
    with pytest.raises(ConfigError) as info:
        TrainingRun.from_config(_config(tmp_path, report_to="wandb"))
    assert info.value.field == "report_to"
    assert "pip install wandb" in str(info.value) and "tensorboard" in str(info.value)

    from rlr_core.cli import main

    path = tmp_path / "run.yaml"
    _config(tmp_path, report_to="wandb").save(path)
    assert main(["--config", str(path), "--quiet"]) == 2
    assert "report_to: wandb needs the wandb package" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before anything was loaded or written


def test_report_to_names_the_allowed_values(tmp_path):
    with pytest.raises(ValueError, match="report_to must be one of none, tensorboard, wandb; got 'mlflow'"):
        _config(tmp_path, report_to="mlflow").validate()


def test_plain_install_needs_neither_accelerate_nor_tensorboard():
    """The library and the CLI import neither package unless report_to / a launcher asks for it."""
    code = (
        "import sys\n"
        "import rlr_core.cli, rlr_core.run, rlr_core.training, rlr_core.distributed, rlr_core.training.tracking\n"
        "bad = [m for m in ('accelerate', 'tensorboard', 'wandb') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1"))
    assert done.returncode == 0, done.stderr
