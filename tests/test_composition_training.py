"""The default rlr learns a composition reward: shrinking the shape (shape-size), decided in the early steps."""

from __future__ import annotations

import os

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPT = "a red circle on a white background"
EVAL_SEEDS = [20_000_000 + i for i in range(8)]


def short_size_run(tmp_path, estimator: str, options: dict) -> tuple[list[float], list[float]]:
    """Bundled tiny model, 8 sampling steps, batch 4, lr 0.003, 12 iterations on shape-size (target area 0.08:
    smaller than any shape the model was trained on); rewards of 8 held-out seeds before and after."""
    from rlr_core.config import TrainConfig
    from rlr_core.run import TrainingRun
    from rlr_core.trainer import Trainer

    config = TrainConfig(model="tiny", num_steps=8, prompts=[PROMPT], steps=12, batch_size=4, lr=0.003, seed=0,
                         reward="shape-size", estimator=estimator, estimator_options=options, eval_seeds=[],
                         eval_every=0, checkpoint_every=0, output_dir=str(tmp_path / estimator))
    chain, reward, built = TrainingRun.from_config(config).parts()
    trainer = Trainer(chain, reward, built, config)
    _, before = trainer.evaluate(EVAL_SEEDS, [PROMPT] * len(EVAL_SEEDS), adapters=False)
    reports = list(trainer.run())
    _, after = trainer.evaluate(EVAL_SEEDS, [PROMPT] * len(EVAL_SEEDS), adapters=True)
    assert len(reports) == 12 and all(r.skipped is None for r in reports)
    return before, after


def test_default_rlr_shrinks_the_shape(tmp_path, one_thread):
    """Measured (2026-12-04, one thread): the default rlr -1.589 -> -0.282 (every seed up); truncated-bp, which
    differentiates the last step only, -1.589 -> -1.316 (+0.27): it fails the 0.6 bar below, so this test can fail."""
    before, after = short_size_run(tmp_path, "rlr", {})
    gain = sum(after) / len(after) - sum(before) / len(before)
    assert gain > 0.6, (gain, before, after)
    assert sum(a > b for a, b in zip(after, before)) >= 7, (before, after)
    assert torch.isfinite(torch.tensor(after)).all()
