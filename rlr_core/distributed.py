"""Data-parallel training over several processes (``torchrun`` / ``accelerate launch``).

A launcher starts N copies of ``rlr-train`` and describes the job in environment variables
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``). Each copy calls
:func:`init_from_env` (the CLI does), which joins the process group: gloo on a CPU, nccl on
CUDA. The Trainer then works out its share of every batch with :class:`BatchShard`:

- the global batch of ``batch_size`` rows is ``groups`` noise groups of ``n`` noise sets
  (rows ``i, i + n, i + 2n, ...`` share noise: antithetic twins, ZO +/- halves); every process
  takes whole noise sets ``[start, stop)``, so noise groups stay intact however the batch is
  split;
- the estimator draws the noise (and per-sample ZO directions) of global noise set ``i`` from
  its own generator seeded from ``(seed, step, i)``, so a sample does not depend on the number
  of processes;
- each process computes its rows' contribution to the gradient of the whole batch (means are
  sums over local rows divided by the *global* batch size; baselines and normalisation use the
  gathered rewards of the whole batch), the contributions are summed over the processes
  (``all_reduce``) and every process takes the same AdamW step, so the LoRA stays identical
  everywhere;
- rank 0 alone writes files (metrics, images, checkpoints, LoRA, tracker events).

With one process nothing here communicates: :func:`current_world` is ``World()`` (rank 0 of 1)
and a ``BatchShard`` of one process is the whole batch.
"""

from __future__ import annotations

import datetime
import os
import sys
from dataclasses import dataclass
from typing import Any, Sequence

import torch

__all__ = [
    "BatchShard",
    "DEFAULT_TIMEOUT_S",
    "World",
    "any_process",
    "barrier",
    "broadcast_parameters",
    "collective_timeout_s",
    "current_world",
    "init_from_env",
    "launched_world",
    "launched_world_size",
    "max_over_processes",
    "process_device",
    "shutdown",
    "sum_over_processes",
]

DEFAULT_TIMEOUT_S = 1800.0
"""How long a collective operation may wait for the other processes (seconds; env ``RLR_DIST_TIMEOUT_S``).

Rank 0 evaluates and writes checkpoints while the others wait in the next iteration's
reduction, so this must exceed the slowest evaluation. A process that *fails* does not wait for
it: it exits, and the others' next reduction fails at once (gloo) or the launcher stops them."""


@dataclass(frozen=True)
class World:
    """Where this process stands in the job: rank ``rank`` of ``world_size`` (``local_rank`` on its machine)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only process that writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when more than one process trains."""
        return self.world_size > 1

    def label(self) -> str:
        """``"rank 1 of 2"`` (empty for a single process), for messages."""
        return f"rank {self.rank} of {self.world_size}" if self.distributed else ""


def launched_world_size() -> int:
    """``WORLD_SIZE`` set by a launcher (1 when not launched by one)."""
    return _env_int("WORLD_SIZE", 1)


def launched_world() -> World:
    """This process's place as the launcher's environment says (before or without joining the group)."""
    return World(rank=_env_int("RANK", 0), world_size=launched_world_size(), local_rank=_env_int("LOCAL_RANK", 0))


def current_world() -> World:
    """The process group this process has joined, or ``World()`` (one process)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return World()
    return World(
        rank=torch.distributed.get_rank(),
        world_size=torch.distributed.get_world_size(),
        local_rank=_env_int("LOCAL_RANK", 0),
    )


def process_device(device: str) -> str:
    """The device this process trains on: ``auto`` / ``cuda`` become ``cuda:LOCAL_RANK`` when several
    processes share a machine with GPUs; anything else is kept."""
    if launched_world_size() > 1 and device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{_env_int('LOCAL_RANK', 0) % torch.cuda.device_count()}"
    return device


def init_from_env(device: str = "auto", timeout_s: float | None = None) -> World:
    """Join the process group a launcher described in the environment; return this process's World.

    Nothing happens for a single process (``WORLD_SIZE`` unset or 1). The backend is nccl when
    ``device`` (after :func:`process_device`) is a CUDA device, gloo otherwise. Raises
    RuntimeError naming the missing variable when the launcher's variables are incomplete.
    """
    world_size = launched_world_size()
    if world_size <= 1:
        return World()
    if torch.distributed.is_initialized():
        return current_world()
    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE={world_size} but {', '.join(missing)} not set: start several processes with "
            "torchrun or accelerate launch (see docs/distributed.md)"
        )
    device = process_device(device)
    use_cuda = device.startswith("cuda") and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(torch.device(device))
    if timeout_s is None:
        timeout_s = collective_timeout_s()
    torch.distributed.init_process_group(
        backend="nccl" if use_cuda else "gloo",
        init_method="env://",
        rank=_env_int("RANK", 0),
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    return current_world()


def collective_timeout_s() -> float:
    """How long a collective operation waits for the other processes: ``RLR_DIST_TIMEOUT_S`` or DEFAULT_TIMEOUT_S."""
    return float(os.environ.get("RLR_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S))


def barrier(timeout_s: float | None = None) -> None:
    """Wait for every process (at most ``timeout_s``, default :func:`collective_timeout_s`: rank 0 may
    still be evaluating or saving); on gloo a process that does not arrive is named in the
    RuntimeError (``monitored_barrier``). No-op for one process."""
    if not current_world().distributed:
        return
    if timeout_s is None:
        timeout_s = collective_timeout_s()
    if torch.distributed.get_backend() == "gloo":
        torch.distributed.monitored_barrier(timeout=datetime.timedelta(seconds=timeout_s))
    else:
        torch.distributed.barrier()


def shutdown() -> None:
    """Leave the process group after a barrier (the end of a successful run). No-op for one process."""
    if current_world().distributed:
        barrier()
        torch.distributed.destroy_process_group()


def broadcast_parameters(parameters: Sequence[torch.Tensor]) -> None:
    """Copy rank 0's values of ``parameters`` to every process (the same LoRA everywhere)."""
    if not current_world().distributed:
        return
    with torch.no_grad():
        for p in parameters:
            buffer = _to_comm(p.detach().clone())
            torch.distributed.broadcast(buffer, src=0)
            p.copy_(buffer.to(p.device, p.dtype))


def any_process(flag: bool) -> bool:
    """True when ``flag`` is true on any process (e.g. a stop request): every process calls it."""
    if not current_world().distributed:
        return bool(flag)
    value = _to_comm(torch.tensor([1.0 if flag else 0.0]))
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item() > 0)


def max_over_processes(value: float) -> float:
    """The largest ``value`` over the processes (e.g. peak memory)."""
    if not current_world().distributed:
        return float(value)
    tensor = _to_comm(torch.tensor([float(value)], dtype=torch.float64))
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return float(tensor.item())


def sum_over_processes(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over the processes (a new tensor on ``tensor``'s device and dtype)."""
    if not current_world().distributed:
        return tensor
    buffer = _to_comm(tensor.detach().clone())
    torch.distributed.all_reduce(buffer, op=torch.distributed.ReduceOp.SUM)
    return buffer.to(tensor.device, tensor.dtype)


@dataclass(frozen=True)
class BatchShard:
    """This process's rows of a global batch: whole noise sets ``[start, stop)`` of ``num_sets``.

    The global batch has ``groups * num_sets`` rows; global row ``g * num_sets + i`` belongs to
    noise set ``i`` (rows of one set share noise and prompt). The local batch keeps the same
    layout: ``groups`` blocks of ``stop - start`` rows, block ``g`` holding global rows
    ``g * num_sets + start .. g * num_sets + stop - 1``.
    """

    groups: int
    num_sets: int
    start: int
    stop: int
    world_size: int = 1

    @classmethod
    def split(cls, batch_size: int, groups: int, world: World) -> "BatchShard":
        """Split ``batch_size`` rows in ``groups`` noise groups evenly over ``world``'s processes.

        Raises ValueError naming ``batch_size`` when a process would get no noise set.
        """
        if groups < 1 or batch_size % groups:
            raise ValueError(f"batch_size must be a multiple of {groups} (the estimator's noise groups); got {batch_size}")
        num_sets = batch_size // groups
        if num_sets < world.world_size:
            raise ValueError(
                f"batch_size must be at least {groups * world.world_size} with {world.world_size} processes "
                f"(every process takes whole noise sets of {groups} rows); got {batch_size}"
            )
        start = world.rank * num_sets // world.world_size
        stop = (world.rank + 1) * num_sets // world.world_size
        return cls(groups=groups, num_sets=num_sets, start=start, stop=stop, world_size=world.world_size)

    @property
    def local_size(self) -> int:
        """Rows of this process."""
        return self.groups * (self.stop - self.start)

    @property
    def global_size(self) -> int:
        """Rows of the whole batch."""
        return self.groups * self.num_sets

    def global_rows(self) -> list[int]:
        """The global row index of every local row, in local order."""
        return [g * self.num_sets + i for g in range(self.groups) for i in range(self.start, self.stop)]

    def select(self, rows: Sequence[Any]) -> list[Any]:
        """This process's entries of a global per-row list (e.g. the batch's prompts)."""
        if self.world_size == 1:
            return list(rows)
        return [rows[r] for r in self.global_rows()]

    def gather(self, local: torch.Tensor) -> torch.Tensor:
        """The global per-row tensor from every process's local rows (detached; same on every process).

        Every process writes its rows into zeros and the copies are summed: adding zeros is exact,
        so the gathered values are bit for bit the local ones.
        """
        local = local.detach()
        if self.world_size == 1:
            return local
        if local.shape[0] != self.local_size:
            raise ValueError(f"expected {self.local_size} local rows, got {local.shape[0]}")
        full = torch.zeros((self.global_size, *local.shape[1:]), dtype=local.dtype, device=local.device)
        full[torch.tensor(self.global_rows(), device=local.device)] = local
        return sum_over_processes(full)

    def gather_objects(self, local: Sequence[Any]) -> list[Any]:
        """The global per-row list of picklable objects (e.g. prompts) from every process's rows."""
        if self.world_size == 1:
            return list(local)
        pieces: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(pieces, (self.global_rows(), list(local)))
        result: list[Any] = [None] * self.global_size
        for rows, values in pieces:
            for row, value in zip(rows, values):
                result[row] = value
        return result


def _to_comm(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` on the device the backend communicates from (CUDA for nccl, CPU for gloo)."""
    if torch.distributed.get_backend() == "nccl":
        return tensor.to(torch.device("cuda", torch.cuda.current_device()))
    return tensor.cpu()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value.strip() else default
    except ValueError:
        print(f"rlr_core.distributed: ignoring {name}={value!r} (not an integer)", file=sys.stderr)
        return default
