"""Measuring the memory one gradient estimate needs.

Two numbers are reported:

- ``peak_memory_mb``: on CUDA the peak allocated memory (``torch.cuda.max_memory_allocated``)
  above what was allocated at the start; on CPU the peak resident set size above the start (noisy:
  the allocator reuses memory). On Linux that is the kernel's own peak mark (``VmHWM``, reset at the
  start through ``/proc/self/clear_refs``, so after an estimate ``getrusage``'s ``ru_maxrss`` reads the
  peak since that estimate began); elsewhere a background thread samples the RSS every few milliseconds.
  The thread costs more than it seems: on a busy machine its wake-ups take the GIL from the estimate
  (3-4x the time of a millisecond-sized estimate was measured).
- ``graph_memory_mb``: the peak of the bytes autograd holds saved for backward (each storage
  counted once while any graph still holds it; parameters excluded). This is the memory the
  computation graphs need, device-independent and deterministic, so it is what tests compare
  across chain lengths.
"""

from __future__ import annotations

import os
import re
import threading
import time
from typing import Any

import torch

try:  # psutil ships with gradio's dependencies; the meter degrades gracefully without it
    import psutil
except ImportError:  # pragma: no cover
    psutil = None


class MemoryMeter:
    """Context manager measuring peak memory and autograd-saved bytes of the code inside it."""

    def __init__(self, device: torch.device | str | None = None, sample_interval_s: float = 0.002) -> None:
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.sample_interval_s = sample_interval_s
        self.peak_memory_mb = 0.0
        self.graph_memory_mb = 0.0
        self._live_bytes = 0
        self._peak_graph_bytes = 0
        self._holders: dict[int, list] = {}  # storage pointer -> [number of saved refs, bytes]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._peak_mark = False  # measuring with the kernel's peak mark instead of the thread
        self._start_rss = 0
        self._peak_before_reset = 0  # the mark when a nested meter reset it
        self._hooks: Any = None

    # autograd's saved-tensor hooks: count live saved storages, keep the tensor unchanged
    def _pack(self, tensor: torch.Tensor) -> Any:
        if isinstance(tensor, torch.nn.Parameter):
            return tensor
        try:
            storage = tensor.untyped_storage()
            ptr, nbytes = storage.data_ptr(), storage.nbytes()
        except (RuntimeError, NotImplementedError):  # tensors without storage (e.g. sparse)
            return tensor
        holder = self._holders.setdefault(ptr, [0, nbytes])
        if holder[0] == 0:
            self._live_bytes += nbytes
            self._peak_graph_bytes = max(self._peak_graph_bytes, self._live_bytes)
        holder[0] += 1
        return _SavedTensor(tensor, self, ptr)

    def _release(self, ptr: int) -> None:
        holder = self._holders.get(ptr)
        if holder is None:
            return
        holder[0] -= 1
        if holder[0] == 0:
            self._live_bytes -= holder[1]
            del self._holders[ptr]

    @staticmethod
    def _unpack(saved: Any) -> torch.Tensor:
        if not isinstance(saved, _SavedTensor):
            return saved
        if saved.tensor._version != saved.version:  # keep autograd's own check, which hooks bypass
            raise RuntimeError(
                "one of the variables needed for gradient computation has been modified by an inplace "
                f"operation (saved at version {saved.version}, now {saved.tensor._version})"
            )
        return saved.tensor

    def _reset_peak_mark(self) -> bool:
        """Reset the kernel's peak-RSS mark of this process (Linux); False where that is not possible.
        Meters still open (nested) keep the peak they had seen so far."""
        before = _peak_mark_bytes()
        if before is None:
            return False
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
        except OSError:
            return False
        for meter in _OPEN_PEAK_MARK_METERS:
            meter._peak_before_reset = max(meter._peak_before_reset, before)
        _OPEN_PEAK_MARK_METERS.append(self)
        return True

    def _sample_rss(self, start_rss: int) -> None:
        process = psutil.Process(os.getpid())
        peak = start_rss
        while not self._stop.is_set():
            peak = max(peak, process.memory_info().rss)
            time.sleep(self.sample_interval_s)
        peak = max(peak, process.memory_info().rss)
        self.peak_memory_mb = (peak - start_rss) / 2**20

    def __enter__(self) -> "MemoryMeter":
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self._cuda_start = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif psutil is not None:
            start_rss = psutil.Process(os.getpid()).memory_info().rss
            self._start_rss = start_rss
            self._peak_mark = self._reset_peak_mark()
            if self._peak_mark:
                return self
            self._thread = threading.Thread(target=self._sample_rss, args=(start_rss,), daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._hooks.__exit__(*exc)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_memory_mb = (torch.cuda.max_memory_allocated(self.device) - self._cuda_start) / 2**20
        elif self._peak_mark:
            _OPEN_PEAK_MARK_METERS.remove(self)
            peak = max(_peak_mark_bytes() or 0, self._peak_before_reset, self._start_rss)
            self.peak_memory_mb = (peak - self._start_rss) / 2**20
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
        self.graph_memory_mb = self._peak_graph_bytes / 2**20


_OPEN_PEAK_MARK_METERS: list[MemoryMeter] = []


def _peak_mark_bytes() -> int | None:
    """The process's peak resident set size since the last reset (``VmHWM``), or None off Linux."""
    try:
        with open("/proc/self/status") as handle:
            match = re.search(r"^VmHWM:\s+(\d+) kB", handle.read(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


class _SavedTensor:
    """What autograd stores in place of a saved tensor while a MemoryMeter is active."""

    __slots__ = ("tensor", "meter", "ptr", "version")

    def __init__(self, tensor: torch.Tensor, meter: MemoryMeter, ptr: int) -> None:
        self.tensor, self.meter, self.ptr = tensor, meter, ptr
        self.version = tensor._version

    def __del__(self) -> None:
        self.meter._release(self.ptr)


class SavedBytesCounter:
    """Peak bytes autograd holds saved for backward, on any device, meta and fake tensors included.

    The same count as ``MemoryMeter.graph_memory_mb`` (each storage once while saved, parameters
    excluded), keyed by storage identity instead of data pointer so that it also works for
    tensors without data (``device="meta"``), where a graph's memory is counted without computing it.
    Storages listed in ``weight_storages`` (weights saved through a view, which MemoryMeter counts
    once per measurement although they are resident anyway) are summed apart in ``weight_bytes``.
    """

    def __init__(self, weight_storages: set[int] | None = None) -> None:
        self.live_bytes = 0
        self.peak_bytes = 0
        self.weight_bytes = 0  # bytes of weight storages saved through views (``weight_storages``)
        self._weights = weight_storages or set()
        self._weights_seen: set[int] = set()
        self._holders: dict[int, list[int]] = {}
        self._hooks: Any = None

    @staticmethod
    def storage_keys(*modules: Any) -> set[int]:
        """Storage identities of the parameters and buffers of ``modules`` (for ``weight_storages``)."""
        keys = set()
        for module in modules:
            if module is not None:
                for tensor in list(module.parameters()) + list(module.buffers()):
                    keys.add(tensor.untyped_storage()._cdata)
        return keys

    def _pack(self, tensor: torch.Tensor) -> Any:
        if isinstance(tensor, torch.nn.Parameter):
            return tensor
        try:
            storage = tensor.untyped_storage()
            key, nbytes = storage._cdata, storage.nbytes()
        except (RuntimeError, NotImplementedError):
            return tensor
        if key in self._weights:  # a view of a weight (e.g. W^T saved by a linear): counted apart, once
            if key not in self._weights_seen:
                self._weights_seen.add(key)
                self.weight_bytes += nbytes
            return tensor
        holder = self._holders.setdefault(key, [0, nbytes])
        if holder[0] == 0:
            self.live_bytes += nbytes
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        holder[0] += 1
        return _CountedTensor(tensor, self, key)

    def _release(self, key: int) -> None:
        holder = self._holders.get(key)
        if holder is None:
            return
        holder[0] -= 1
        if holder[0] == 0:
            self.live_bytes -= holder[1]
            del self._holders[key]

    @staticmethod
    def _unpack(saved: Any) -> torch.Tensor:
        return saved.tensor if isinstance(saved, _CountedTensor) else saved

    def __enter__(self) -> "SavedBytesCounter":
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._hooks.__exit__(*exc)


class _CountedTensor:
    """What autograd stores in place of a saved tensor while a SavedBytesCounter is active."""

    __slots__ = ("tensor", "counter", "key")

    def __init__(self, tensor: torch.Tensor, counter: SavedBytesCounter, key: int) -> None:
        self.tensor, self.counter, self.key = tensor, counter, key

    def __del__(self) -> None:
        self.counter._release(self.key)


class LiveBytesTracker(torch.utils._python_dispatch.TorchDispatchMode):
    """Peak bytes of the tensors created inside the block and still alive (any device, meta included).

    Every operator output's storage is followed with a weak reference until it is freed, so
    ``peak_bytes`` is the high-water mark of the working memory of the code run inside (activations
    in flight, saved tensors, gradient buffers), without the tensors that existed before.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live_bytes = 0
        self.peak_bytes = 0
        self._live: dict[int, tuple[Any, int]] = {}

    def _prune(self) -> None:
        dead = [key for key, (ref, _) in self._live.items() if ref.expired()]
        for key in dead:
            self.live_bytes -= self._live.pop(key)[1]

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        from torch.multiprocessing.reductions import StorageWeakRef
        from torch.utils._pytree import tree_flatten

        out = func(*args, **(kwargs or {}))
        self._prune()
        inputs = set()  # outputs aliasing an input (views) are not new memory
        for tensor in tree_flatten((args, kwargs))[0]:
            if isinstance(tensor, torch.Tensor):
                try:
                    inputs.add(tensor.untyped_storage()._cdata)
                except (RuntimeError, NotImplementedError):
                    pass
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            try:
                storage = tensor.untyped_storage()
            except (RuntimeError, NotImplementedError):
                continue
            ref = StorageWeakRef(storage)
            if ref.cdata not in self._live and ref.cdata not in inputs:
                self._live[ref.cdata] = (ref, storage.nbytes())
                self.live_bytes += storage.nbytes()
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        return out
