"""What a checkpoint and an exported LoRA hold, and how they are written and read back.

A checkpoint (``output_dir/checkpoints/step-NNNNNN/``) is ``trainer_state.pt`` -- format 1: the step, the
LoRA, the optimizer state, the global RNG states, the estimator's state, the config and the "before"
rewards -- plus the config as ``config.yaml``. The exported LoRA (``output_dir/lora``) is the chain's
diffusers-format adapter (``chain.save_lora``) for LoRA chains, else ``trainable_parameters.safetensors``.
Both are written atomically (:func:`rlr_core.training.run_folder.atomic_directory`). See docs/config.md
(``checkpoint_every``, ``keep_checkpoints``, ``resume``).

:class:`CheckpointMethods` gives the Trainer its LoRA and checkpoint methods (``lora_state``,
``export_lora``, ``snapshot`` / ``restore``, ``save_checkpoint``, ``load_checkpoint``, ...) on top of these functions.
"""

from __future__ import annotations

import copy
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from ..chain import Chain, LoraChain
from .run_folder import CHECKPOINT_FILE, atomic_directory, checkpoint_dir, checkpoint_dirs, rng_state, set_rng_state
from .updates import zero_grads

__all__ = ["CheckpointMethods", "lora_state", "load_lora_state", "write_lora", "write_checkpoint", "read_checkpoint", "differing_fields"]


def lora_state(chain: Chain) -> dict[str, torch.Tensor]:
    """The trained weights: ``chain.lora_state_dict()`` when available, else the trainable parameters."""
    if isinstance(chain, LoraChain):
        return {k: v.detach().cpu().clone() for k, v in chain.lora_state_dict().items()}
    return {f"param.{i}": p.detach().cpu().clone() for i, p in enumerate(chain.trainable_parameters())}


def load_lora_state(chain: Chain, state: dict[str, torch.Tensor]) -> None:
    """Inverse of :func:`lora_state` (values are copied into the existing tensors)."""
    if isinstance(chain, LoraChain) and not all(k.startswith("param.") for k in state):
        chain.load_lora_state_dict(state)
        return
    params = chain.trainable_parameters()
    if len(state) != len(params):
        raise ValueError(f"checkpoint has {len(state)} parameter tensors, the chain has {len(params)}")
    with torch.no_grad():
        for i, p in enumerate(params):
            value = state[f"param.{i}"]
            if value.shape != p.shape:
                raise ValueError(f"checkpoint parameter {i} has shape {tuple(value.shape)}, chain has {tuple(p.shape)}")
            p.copy_(value.to(device=p.device, dtype=p.dtype))


def write_lora(chain: Chain, directory: Path) -> None:
    """Write the LoRA of ``chain`` to ``directory`` atomically (``chain.save_lora`` in the diffusers format
    when available, else ``trainable_parameters.safetensors``)."""

    def write(tmp: Path) -> None:
        if isinstance(chain, LoraChain):
            chain.save_lora(str(tmp))
        else:
            from safetensors.torch import save_file

            tmp.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in lora_state(chain).items()}, str(tmp / "trainable_parameters.safetensors"))

    atomic_directory(directory, write)


def write_checkpoint(directory: Path, state: dict[str, Any], config: Any) -> None:
    """Atomically write ``state`` (``trainer_state.pt``) and ``config`` (``config.yaml``) to ``directory``
    (written to a temporary directory, then renamed)."""

    def write(tmp: Path) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        torch.save(state, tmp / CHECKPOINT_FILE)
        config.to_yaml(tmp / "config.yaml")

    atomic_directory(directory, write)


def read_checkpoint(directory: str | os.PathLike, current_config: dict[str, Any]) -> dict[str, Any]:
    """The state saved by :func:`write_checkpoint` in ``directory``; ValueError when it is not a checkpoint.
    Warns naming the config fields that change the trajectory and differ from ``current_config``."""
    path = Path(directory) / CHECKPOINT_FILE
    if not path.is_file():
        raise ValueError(f"resume: {str(directory)!r} is not a checkpoint (no {CHECKPOINT_FILE})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # estimator states with custom objects; our own file, written by write_checkpoint
        state = torch.load(path, map_location="cpu", weights_only=False)
    differing = differing_fields(state.get("config", {}), current_config)
    if differing:
        warnings.warn(
            f"resuming with config fields changed since the checkpoint: {', '.join(differing)}", stacklevel=3
        )
    return state


_RUN_ONLY_FIELDS = {"steps", "output_dir", "resume", "eval_seeds", "eval_every", "eval_prompts", "log_every",
                    "report_samples", "checkpoint_every", "keep_checkpoints", "device", "report_to", "keep_best",
                    "guard_tolerance", "min_diversity", "early_stop_patience", "heldout_reward",
                    "heldout_reward_options"}


def differing_fields(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Config fields that change the training trajectory and differ from the checkpoint's."""
    return [k for k in current if k not in _RUN_ONLY_FIELDS and k in saved and saved[k] != current[k]]


class CheckpointMethods:
    """The Trainer's LoRA and checkpoint methods (a mixin of ``rlr_core.training.trainer.Trainer``).

    Uses the Trainer's ``chain``, ``params``, ``optimizer``, ``estimator``, ``config``, ``output_dir``,
    ``world``, ``step``, ``before_rewards``, ``guard``, ``before_guard`` and ``_boundary_rng``. Only rank 0 writes files.
    """

    def lora_state(self) -> dict[str, torch.Tensor]:
        """The trained weights: ``chain.lora_state_dict()`` when available, else the trainable parameters."""
        return lora_state(self.chain)

    def snapshot(self) -> dict[str, Any]:
        """The trainable parameters and the optimizer state now, for :meth:`restore` (a click session's
        update that its check rejects)."""
        return {"params": [p.detach().clone() for p in self.params],
                "optimizer": copy.deepcopy(self.optimizer.state_dict()), "step": self.step}

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Parameters and optimizer state back to ``snapshot`` (from :meth:`snapshot`), and the exported LoRA
        with them. The step counter stays: the undone iterations keep their metrics lines. Checkpoints the undone
        iterations wrote are replaced by one of the restored state at the current step, so a resume does not
        bring the undone update back."""
        with torch.no_grad():
            for param, saved in zip(self.params, snapshot["params"]):
                param.copy_(saved)
        self.optimizer.load_state_dict(snapshot["optimizer"])
        self.export_lora(self.output_dir / "lora")
        undone = [d for d in checkpoint_dirs(self.output_dir) if d.name > checkpoint_dir(self.output_dir, snapshot["step"]).name]
        if undone and self.world.is_main:
            for directory in undone:
                shutil.rmtree(directory, ignore_errors=True)
            self.save_checkpoint(checkpoint_dir(self.output_dir, self.step))

    def load_lora_state(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of ``lora_state`` (values are copied into the existing tensors)."""
        load_lora_state(self.chain, state)

    def export_lora(self, directory: str | os.PathLike) -> Path:
        """Write the LoRA to ``directory`` atomically (``chain.save_lora`` in the diffusers format when
        available, else ``trainable_parameters.safetensors``) and return the directory.
        Only rank 0 writes (data parallelism: every process holds the same LoRA)."""
        directory = Path(directory)
        if self.world.is_main:
            write_lora(self.chain, directory)
        return directory

    def save_checkpoint(self, directory: str | os.PathLike, rng: dict[str, Any] | None = None) -> Path:
        """Atomically write a checkpoint to ``directory``: LoRA, optimizer, step, RNG states,
        estimator state and config. Only rank 0 writes; the state is the same on every process, so
        any number of processes can resume it."""
        directory = Path(directory)
        if not self.world.is_main:
            return directory
        state = {
            "format": 1,
            "step": self.step,
            "lora": self.lora_state(),
            "optimizer": self.optimizer.state_dict(),
            "rng": rng if rng is not None else rng_state(),
            "estimator": self.estimator.state_dict(),
            "config": self.config.to_dict(),
            "before_rewards": self.before_rewards,
            "guard": self.guard.state_dict(),
            "before_guard": self.before_guard,
        }
        write_checkpoint(directory, state, self.config)
        return directory

    def load_checkpoint(self, directory: str | os.PathLike) -> int:
        """Restore LoRA, optimizer, step, RNG states and estimator state from ``directory``; return the step."""
        state = read_checkpoint(directory, self.config.to_dict())
        self.load_lora_state(state["lora"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("estimator") is not None:
            self.estimator.load_state_dict(state["estimator"])
        set_rng_state(state["rng"])
        self.step = int(state["step"])
        self.before_rewards = state.get("before_rewards")
        if state.get("guard") is not None:  # the reward-hacking guard: base figures, best so far, patience
            self.guard.load_state_dict(state["guard"])
        self.before_guard = state.get("before_guard")
        self._started = True
        return self.step

    def _save_after_failure(self) -> tuple[str | None, str | None]:
        saved = checkpoint = None
        if not self.world.is_main:  # rank 0 alone writes
            return saved, checkpoint
        try:
            zero_grads(self.params)
            if self.config.checkpoint_every and self.step > 0:
                directory = checkpoint_dir(self.output_dir, self.step)
                checkpoint = str(self.save_checkpoint(directory, rng=self._boundary_rng))
        except Exception:  # pragma: no cover - best effort while handling another error
            checkpoint = None
        try:
            saved = str(self.export_lora(self.output_dir / "lora"))
        except Exception:  # pragma: no cover
            saved = None
        return saved, checkpoint
