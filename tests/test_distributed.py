"""Data-parallel training on 2 CPU processes (gloo) against 1 process: same gradient, same LoRA,
rank 0 alone writes, resume on another number of processes, a failing process ends the run.

Every multi-process run is a real launcher (``torch.distributed.run`` = torchrun, or
``accelerate launch``) on 127.0.0.1 with a free port and one torch thread per process.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from rlr_core.distributed import BatchShard, World

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from distributed_worker import train, worker_config  # noqa: E402

HANG_CATCHER_S = 240  # generous: only catches a hang; the timing checks are tighter


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(nproc),
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *args]
    return subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=HANG_CATCHER_S)


def _write_yaml(path: Path, config) -> Path:
    path.write_text(yaml.safe_dump(config.to_dict()))
    return path


def _lora_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _movement_error(initial: dict[str, torch.Tensor], a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """|a - b| / |b - initial| over all LoRA weights: how much two runs' training moves differ."""
    difference = sum(float((a[k] - b[k]).double().pow(2).sum()) for k in b) ** 0.5
    moved = sum(float((b[k] - initial[k]).double().pow(2).sum()) for k in b) ** 0.5
    return difference / moved


def _load_lora(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(directory / "pytorch_lora_weights.safetensors"))


# ------------------------------------------------------------------------------ the split itself
def test_batch_shard_keeps_noise_sets_whole():
    # rlr-paper layout: 4 groups of 3 noise sets; rows i, i+3, i+6, i+9 share noise
    shards = [BatchShard.split(12, 4, World(rank=r, world_size=2)) for r in range(2)]
    assert [s.global_rows() for s in shards] == [[0, 3, 6, 9], [1, 2, 4, 5, 7, 8, 10, 11]]
    rows = sorted(r for s in shards for r in s.global_rows())
    assert rows == list(range(12))
    prompts = [f"p{i % 3}" for i in range(12)]
    local = shards[1].select(prompts)
    assert local == ["p1", "p2"] * 4  # the local batch keeps the group layout
    with pytest.raises(ValueError, match="batch_size must be at least 8 with 2 processes"):
        BatchShard.split(4, 4, World(rank=0, world_size=2))


# ------------------------------------------------------------------------------ 2 processes = 1 process
TWO_PROCESS_ESTIMATORS = ["rlr", "ddpo"]


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One 2-process launch trains every estimator in turn (each launch starts 2 fresh Pythons: seconds of imports)."""
    out = tmp_path_factory.mktemp("two-processes")
    return out, _torchrun("tests/distributed_worker.py", str(out), *TWO_PROCESS_ESTIMATORS)


@pytest.mark.parametrize("estimator", TWO_PROCESS_ESTIMATORS)
def test_two_processes_give_the_gradient_and_lora_of_one(tmp_path, two_process_runs, estimator):
    out, done = two_process_runs
    assert done.returncode == 0, done.stderr[-3000:]
    two = torch.load(out / estimator / "result.pt", weights_only=False)
    torch.set_num_threads(1)
    one = train(estimator, tmp_path / "one")
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert len(set(two["checksums"])) == 1, f"the processes hold different LoRAs: {two['checksums']}"
    assert len(two["gradients"]) == len(one["gradients"]) >= 3
    # the first update starts from the same LoRA: the gradients agree to float32 rounding
    for g1, g2 in zip(one["gradients"][:1], two["gradients"][:1]):
        assert torch.allclose(g2, g1, rtol=1e-5, atol=1e-5 * float(g1.abs().max())), float((g2 - g1).abs().max())
    # later updates start from LoRAs that differ by float32 rounding amplified by AdamW (below), so their gradients
    # agree to 1e-3 of their norm (ddpo on the bundled weights: 1.8e-4); a missing all-reduce: ~50%
    for g1, g2 in zip(one["gradients"], two["gradients"]):
        assert float((g2 - g1).norm()) <= 1e-3 * float(g1.norm())
    # after 3 iterations (lr 1e-3) the LoRAs agree: AdamW divides every gradient entry by its own
    # size, so float32 rounding of entries near 0 can move a few weights by a fraction of one step
    # (lr); the training moves as a whole agree to 1% (a missing all-reduce: ~50%)
    assert _lora_close(one["lora"], two["lora"]) < 1e-3
    assert _movement_error(one["initial"], two["lora"], one["lora"]) < 1e-2
    # only rank 0 wrote: one metrics line per iteration, the files of a 1-process run
    lines = (out / estimator / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]
    files_two = sorted(str(p.relative_to(out / estimator / "run")) for p in (out / estimator / "run").rglob("*"))
    files_one = sorted(str(p.relative_to(tmp_path / "one")) for p in (tmp_path / "one").rglob("*"))
    assert files_two == files_one
    rewards_two = [json.loads(line)["rewards"] for line in lines]
    rewards_one = [json.loads(line)["rewards"] for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert len(rewards_two[0]) == 8
    assert torch.allclose(torch.tensor(rewards_two), torch.tensor(rewards_one), atol=1e-4)


# ------------------------------------------------------------------------------ CLI: accelerate, resume on 1
@pytest.mark.skipif(importlib.util.find_spec("accelerate") is None, reason="accelerate not installed")
def test_accelerate_launch_then_resume_on_one_process(tmp_path):
    from rlr_core.cli import main

    two_dir, one_dir = tmp_path / "two", tmp_path / "one"
    config = worker_config("rlr", two_dir, checkpoint_every=1, eval_seeds=[0, 1], eval_every=0,
                           reward="saturation")
    path = _write_yaml(tmp_path / "run.yaml", config)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_ip", "127.0.0.1", "--main_process_port", str(_free_port()),
               "-m", "rlr_core.cli", "--config", str(path), "--steps", "2", "--quiet"]
    env = dict(_env(), CUDA_VISIBLE_DEVICES="")  # CPU processes (gloo) even on a GPU machine
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=HANG_CATCHER_S)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in (two_dir / "checkpoints").iterdir()) == ["step-000001", "step-000002"]
    assert not [p for p in tmp_path.iterdir() if p.name not in ("two", "run.yaml")]  # nothing outside output_dir
    assert len((two_dir / "metrics.jsonl").read_text().splitlines()) == 2
    assert sorted(p.name for p in (two_dir / "eval").iterdir()) == ["before.png", "step-000002.png"]

    torch.set_num_threads(1)
    assert main(["--config", str(path), "--resume", "--steps", "3", "--quiet"]) == 0  # 1 process
    assert main(["--config", str(path), "--output-dir", str(one_dir), "--steps", "3", "--quiet"]) == 0
    resumed = [json.loads(line) for line in (two_dir / "metrics.jsonl").read_text().splitlines()]
    straight = [json.loads(line) for line in (one_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in resumed] == [1, 2, 3]
    assert "resumed from" in resumed[2]["message"]
    assert resumed[2]["rewards"] == pytest.approx(straight[2]["rewards"], abs=1e-3)
    from rlr_core.run import TrainingRun

    # the LoRA init is seeded from config.seed: the initial LoRA of both runs, in the file's format
    initial = _load_lora(TrainingRun.from_config(config).trainer.export_lora(tmp_path / "initial"))
    resumed_lora, straight_lora = _load_lora(two_dir / "lora"), _load_lora(one_dir / "lora")
    assert _lora_close(resumed_lora, straight_lora) < 1e-3
    assert _movement_error(initial, resumed_lora, straight_lora) < 1e-2


ANALYTIC_ESTIMATORS = [
    # per-prompt baseline and grad-norm j statistics: estimator state that must be synchronised
    ("rlr", {"antithetic": False, "baseline": "prompt", "j_sampling": "grad-norm"}),
    ("ddpo", {"inner_epochs": 2}),
]


@pytest.mark.parametrize("estimator, options", ANALYTIC_ESTIMATORS, ids=[e for e, _ in ANALYTIC_ESTIMATORS])
def test_resume_of_two_process_checkpoint_on_one_process_is_exact(tmp_path, estimator, options):
    """On the analytic chain (float64 states; the estimators' gradient parts are float32) a 2-process
    run checkpointed at step 2 and resumed on 1 process ends where a 1-process run of 3 steps ends,
    to the float32 rounding of the parts."""
    from safetensors.torch import load_file

    from distributed_worker import analytic_train
    from rlr_core.training import latest_checkpoint

    two, one = str(tmp_path / "two"), str(tmp_path / "one")
    torch.multiprocessing.spawn(analytic_train, args=(2, _free_port(), two, 2, False, estimator, options), nprocs=2)
    assert latest_checkpoint(two).name == "step-000002"
    state = torch.load(latest_checkpoint(two) / "trainer_state.pt", weights_only=False)
    if estimator == "rlr":
        assert state["estimator"]["ho_grad_norms"] and state["estimator"]["prompt_baseline"]
    analytic_train(0, 1, 0, two, 3, True, estimator, options)  # resume on 1 process
    analytic_train(0, 1, 0, one, 3, False, estimator, options)  # 1 process throughout
    resumed = load_file(str(tmp_path / "two" / "lora" / "trainable_parameters.safetensors"))["param.0"]
    straight = load_file(str(tmp_path / "one" / "lora" / "trainable_parameters.safetensors"))["param.0"]
    assert torch.allclose(resumed, straight, rtol=1e-7, atol=1e-9), (resumed, straight)
    lines = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3]
    for a, b in zip(lines, reference):
        assert a["rewards"] == pytest.approx(b["rewards"], rel=1e-6)  # float32 in the reports
        assert a["grad_norms"] == pytest.approx(b["grad_norms"], rel=1e-6)


# ------------------------------------------------------------------------------ a failing process
FAILING_REWARD = '''
import os
calls = []

def reward(images, prompts):
    calls.append(1)
    if os.environ.get("RANK") == "1" and len(calls) >= 2:
        raise RuntimeError("plug-in reward failed on purpose on rank 1")
    return images.mean(dim=(1, 2, 3))
'''


def test_a_failing_process_ends_the_run_with_a_clear_message(tmp_path):
    plugin = tmp_path / "failing_reward.py"
    plugin.write_text(FAILING_REWARD)
    config = worker_config("rlr", tmp_path / "out", reward=str(plugin), checkpoint_every=1, steps=5)
    path = _write_yaml(tmp_path / "run.yaml", config)
    start = time.monotonic()
    done = _torchrun("-m", "rlr_core.cli", "--config", str(path), "--quiet")
    elapsed = time.monotonic() - start
    assert done.returncode != 0
    assert elapsed < 60 + 30, elapsed  # 60 s after the failure at the most (start-up included here)
    err = done.stderr
    assert "rlr-train (rank 1 of 2): error: training step 2 failed" in err, err[-3000:]
    assert "plug-in reward failed on purpose on rank 1" in err
    # rank 0 stopped too (its reduction lost rank 1) and kept the LoRA of the last completed iteration
    rank0 = [line for line in err.splitlines() if line.startswith("rlr-train (rank 0 of 2): error:")]
    assert rank0 and "LoRA of step 1 saved to" in rank0[0], err[-3000:]
    assert (tmp_path / "out" / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert [json.loads(line)["step"] for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()] == [1]
