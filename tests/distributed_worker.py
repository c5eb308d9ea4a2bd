"""A short data-parallel training run for tests/test_distributed.py (started under torchrun, or called in-process).

``python -m torch.distributed.run --nproc_per_node 2 tests/distributed_worker.py OUT_DIR ESTIMATOR...``
trains the tiny model for 3 iterations with a global batch of 8 per estimator, one after the other in the same
processes (one launch), and writes, on rank 0, ``OUT_DIR/ESTIMATOR/result.pt``: the gradient of every update (flat,
before clipping), the LoRA before and after training and every rank's LoRA checksum (they must be equal).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

ITERATIONS = 3
BATCH_SIZE = 8


def worker_config(estimator: str, output_dir: str | os.PathLike, **changes: Any):
    """The config every run of these tests uses (tiny model, 3 sampling steps, batch 8, 3 iterations)."""
    from rlr_core.config import TrainConfig

    values = dict(model="tiny", num_steps=3, batch_size=BATCH_SIZE, steps=ITERATIONS, estimator=estimator,
                  prompts=["a red circle", "a blue square", "a green triangle", "a yellow star"],
                  eval_seeds=[], checkpoint_every=0, output_dir=str(output_dir), device="cpu", dtype="float32")
    values.update(changes)
    return TrainConfig(**values)


def train(estimator: str, output_dir: str | os.PathLike) -> dict[str, Any]:
    """Train ``ITERATIONS`` iterations (data parallel when the process group is up); return what the test compares."""
    from rlr_core import distributed
    from rlr_core.estimators.base import flatten
    from rlr_core.run import TrainingRun

    world = distributed.init_from_env("cpu")
    trainer = TrainingRun.from_config(worker_config(estimator, output_dir)).trainer
    initial = trainer.lora_state()
    gradients: list[torch.Tensor] = []
    apply_update = trainer.apply_update

    def recording_update(estimate):  # the gradient every process steps with, before clipping
        gradients.append(flatten([p.grad for p in trainer.params], trainer.params).clone())
        return apply_update(estimate)

    trainer.apply_update = recording_update
    for _ in trainer.run():
        pass
    lora = trainer.lora_state()
    checksum = torch.tensor([float(sum(v.double().sum() for v in lora.values()))], dtype=torch.float64)
    checksums = [checksum.clone() for _ in range(world.world_size)]
    if world.distributed:
        torch.distributed.all_gather(checksums, checksum)
    return {"gradients": gradients, "initial": initial, "lora": lora, "checksums": [float(c) for c in checksums],
            "world_size": world.world_size}


def main() -> int:
    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    from rlr_core import distributed

    for estimator in sys.argv[2:]:
        result = train(estimator, out / estimator / "run")
        if distributed.current_world().is_main:
            torch.save(result, out / estimator / "result.pt")
    distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())


def analytic_train(rank: int, world_size: int, port: int, output_dir: str, steps: int, resume: bool,
                   estimator: str, options: dict[str, Any]) -> None:
    """Train the analytic chain (float64) on ``world_size`` processes (``torch.multiprocessing.spawn`` target)."""
    torch.set_num_threads(1)
    from rlr_core import distributed
    from rlr_core.chain import LinearGaussianChain, QuadraticReward
    from rlr_core.config import TrainConfig
    from rlr_core.estimators import get_estimator
    from rlr_core.trainer import Trainer

    if world_size > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                          WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
        distributed.init_from_env("cpu")
    config = TrainConfig(estimator=estimator, estimator_options=options, batch_size=BATCH_SIZE, steps=steps,
                         lr=0.05, prompts=["a", "b", "c"], eval_seeds=[], checkpoint_every=1,
                         keep_checkpoints=5, output_dir=output_dir, resume=resume)
    chain = LinearGaussianChain(num_steps=6, dim=3, num_params=4, seed=0)
    trainer = Trainer(chain, QuadraticReward(dim=3), get_estimator(estimator, **options), config)
    for _ in trainer.run():
        pass
    distributed.shutdown()
