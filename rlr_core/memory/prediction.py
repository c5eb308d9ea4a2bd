"""Predicting the memory of a gradient estimate without running the model at full cost (docs/memory.md).

How: the model (UNet + VAE + reward model, with LoRA) is rebuilt on the ``meta`` device and each *part*
of an estimate is traced once (:mod:`rlr_core.memory.trace`):

- ``step_first`` / ``step_inner``: the autograd graph of one sampling step with grad on (input
  without / with a graph of its own);
- ``log_prob``: the Gaussian log-probability of a step's sample (one state's bytes: also what a
  checkpointed step keeps of its input);
- ``decode`` / ``reward``: the VAE decode and the reward model;
- ``*_work``: the working memory of one no-grad pass (ZO steps and plain sampling keep no graph).

Each estimator declares the graphs one estimate keeps at its peak (``Estimator.memory_pieces``: graphs
held together, and graphs built in turn while those wait); this module prices each graph with the traced
parts (:func:`graph_bytes`) and adds them up: the held ones summed, plus the largest of those built in
turn. For example rlr with h keeps HO(h) = step_first + (h - 1) step_inner + log_prob while its FO step
(step_first + decode + reward) is built; full-bp keeps all T steps; zo keeps nothing.

``graph_bytes`` is what tests check against measurement (within 10% on reduced SD-shaped models):
the activation graph plus the weights autograd saves through views (``W^T`` of a linear layer),
which ``MemoryMeter`` counts once per measurement although they are resident anyway (they are
left out of ``peak_bytes``, whose weights term already holds them).
``peak_bytes`` adds the weights (base model in its dtype, reward model, LoRA + gradient + AdamW
state in float32), the largest no-grad working set, and with gradient checkpointing the graph of
the largest recomputed segment (a step or a decode slice, rebuilt in the backward pass; a checkpointed
estimator step adds one whole step). It is an estimate of the device's peak allocation; CUDA adds its
context and allocator slack (``CUDA_OVERHEAD_GB``, used by :func:`fits` and :func:`choose_h`).
"""

from __future__ import annotations

import math
import os
from dataclasses import replace
from typing import Any

import torch

from ..estimators import ESTIMATORS, Estimator, get_estimator
from ..estimators.memory_pieces import Graph, MemoryPieces
from .specs import (CUDA_OVERHEAD_GB, GB, REWARD_KINDS, ModelSpec, PartMemory, Prediction, Settings, reward_kind,
                    settings_from_chain, spec_for_arch, spec_from_chain)
from .trace import trace_parts

__all__ = [
    "CUDA_OVERHEAD_GB", "ESTIMATOR_NAMES", "FIRST_ORDER_ONLY", "GB", "REWARD_KINDS", "ModelSpec", "PartMemory",
    "Prediction", "Settings", "choose_h", "combine", "fits", "free_memory_gb", "graph_bytes", "per_step_memory",
    "predict", "recompute_bytes", "reward_kind", "settings_from_chain", "spec_for_arch", "spec_from_chain",
    "trace_parts", "weight_views",
]

ESTIMATOR_NAMES: tuple[str, ...] = tuple(ESTIMATORS)
"""Every registered estimator: each declares its memory pieces, so each gets a prediction."""
FIRST_ORDER_ONLY: tuple[str, ...] = tuple(name for name, cls in ESTIMATORS.items() if cls.requires_differentiable_reward)
"""Estimators that need a differentiable reward (no prediction for spec reward "none")."""


def _spec_and_settings(model: Any, batch_size: int, reward: Any, overrides: dict[str, Any]) -> tuple[ModelSpec, Settings]:
    if isinstance(model, ModelSpec):
        spec, settings = model, Settings(batch_size=int(batch_size))
    elif isinstance(model, str):
        spec, settings = spec_for_arch(model), Settings(batch_size=int(batch_size))
    else:
        spec, settings = spec_from_chain(model, reward), settings_from_chain(model, batch_size)
    given = {k: v for k, v in overrides.items() if v is not None}
    if "dtype" in given and isinstance(given["dtype"], torch.dtype):
        given["dtype"] = str(given["dtype"]).replace("torch.", "")
    return spec, replace(settings, **given)


def graph_bytes(parts: PartMemory, graph: Graph) -> int:
    """Bytes of one declared graph: its chained model calls, the input states of its checkpointed calls
    (one state each: the bytes a log-probability saves), its log-probability, decode and reward."""
    total = parts.step_first + (graph.calls - 1) * parts.step_inner if graph.calls else 0
    total += graph.checkpointed * parts.log_prob
    total += parts.log_prob if graph.log_prob else 0
    total += parts.decode if graph.decode else 0
    total += parts.reward if graph.reward else 0
    return total


def _estimator(estimator: str | Estimator, options: dict[str, Any]) -> Estimator:
    """The estimator a prediction is for: an instance as given, or built from its name and ``options``."""
    if isinstance(estimator, Estimator):
        return estimator
    return get_estimator(estimator, **options)


def _pieces(estimator: Estimator, spec: ModelSpec) -> MemoryPieces:
    pieces = estimator.memory_pieces(spec.num_steps, spec.differentiable_reward)
    if estimator.requires_differentiable_reward and not spec.differentiable_reward:
        raise ValueError(f"estimator {estimator.name!r} needs a differentiable reward (spec reward='none')")
    return pieces


def combine(parts: PartMemory, spec: ModelSpec, estimator: str | Estimator, options: dict[str, Any] | None = None
            ) -> tuple[int, dict[str, int]]:
    """Activation graph bytes at the peak of ``estimator`` from the traced parts, and each piece's bytes
    (the held pieces sum to it, plus the largest of those built in turn).

    Weights saved through views are not included (see :func:`weight_views`).
    """
    pieces = _pieces(_estimator(estimator, options or {}), spec)
    held = {name: graph_bytes(parts, graph) for name, graph in pieces.held.items()}
    in_turn = {name: graph_bytes(parts, graph) for name, graph in pieces.in_turn.items()}
    return sum(held.values()) + max(in_turn.values(), default=0), {**held, **in_turn}


def recompute_bytes(parts: PartMemory, pieces: MemoryPieces) -> int:
    """Graph rebuilt in the backward pass by the largest checkpointed segment: the chain's own
    checkpointing (``parts.recompute``), plus one whole step when the estimator checkpoints its steps."""
    graphs = [g for g in pieces.graphs() if not g.empty]
    if not graphs:  # inference only: never runs backward
        return 0
    return parts.recompute + (parts.step_first if any(g.checkpointed for g in graphs) else 0)


def weight_views(parts: PartMemory, pieces: MemoryPieces) -> int:
    """Bytes of weights the graph saves through views: counted once by ``MemoryMeter``, resident anyway.
    UNet views count when some model call keeps its graph (checkpointed calls keep only their inputs)."""
    graphs = pieces.graphs()
    views = parts.unet_views if any(g.calls for g in graphs) else 0
    if any(g.decode for g in graphs):
        views += parts.vae_views
    if any(g.reward for g in graphs):
        views += parts.reward_views
    return views


def predict(
    model: Any,
    estimator: str | Estimator = "rlr",
    batch_size: int = 1,
    reward: Any = None,
    dtype: str | torch.dtype | None = None,
    gradient_checkpointing: bool | None = None,
    attention: str | None = None,
    autocast: bool | None = None,
    decode_slice_size: int | None = None,
    **options: Any,
) -> Prediction:
    """Predicted graph and peak memory of one ``estimator`` estimate.

    ``estimator``: a built estimator, or the name of one with its ``options`` (e.g. h for rlr / rlr-paper,
    k for truncated-bp, k_max for alignprop (None: num_steps, the worst case), jumps for refl); unknown
    options raise ValueError as ``get_estimator`` does. ``model``: a loaded ``DiffusersChain`` (its
    settings are the defaults; ``reward`` is the reward object it trains with), a :class:`ModelSpec`, or
    an architecture name of ``rlr_core.models.sd_arch``.
    """
    spec, settings = _spec_and_settings(model, batch_size, reward, {
        "dtype": dtype, "gradient_checkpointing": gradient_checkpointing, "attention": attention,
        "autocast": autocast, "decode_slice_size": decode_slice_size})
    built = _estimator(estimator, options)
    parts = trace_parts(spec, settings)
    activations, pieces = combine(parts, spec, built)
    declared = built.memory_pieces(spec.num_steps, spec.differentiable_reward)
    views = weight_views(parts, declared)
    recompute = recompute_bytes(parts, declared)
    peak = parts.weights + activations + parts.work + recompute
    pieces.update({"weights": parts.weights, "work": parts.work, "recompute": recompute, "weight_views": views})
    return Prediction(built.name, dict(options), settings, int(activations + views), int(peak), pieces)


def per_step_memory(model: Any, batch_size: int = 1, **overrides: Any) -> dict[str, float]:
    """GiB per HO step (graph of one inner step), FO (step + decode + reward) and per ZO / sampling step (working set)."""
    spec, settings = _spec_and_settings(model, batch_size, overrides.pop("reward", None), overrides)
    parts = trace_parts(spec, settings)
    return {"ho_step_gb": parts.step_inner / GB, "fo_gb": parts.fo / GB, "zo_step_gb": parts.step_work / GB,
            "decode_gb": parts.decode / GB, "reward_gb": parts.reward / GB, "weights_gb": parts.weights / GB}


def fits(prediction: Prediction, budget_gb: float, device_type: str = "cuda") -> bool:
    """True when the predicted peak (+ ``CUDA_OVERHEAD_GB`` on CUDA) is within ``budget_gb``."""
    overhead = CUDA_OVERHEAD_GB if device_type == "cuda" else 0.0
    return prediction.peak_gb + overhead <= budget_gb


# --------------------------------------------------------------------------------------------
# h: auto
# --------------------------------------------------------------------------------------------


def free_memory_gb(device: torch.device | str) -> float:
    """Free memory of ``device`` in GiB: CUDA ``mem_get_info``, else the system's available RAM."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free / GB
    try:
        import psutil

        return psutil.virtual_memory().available / GB
    except ImportError:  # pragma: no cover
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / GB


def choose_h(
    chain_or_spec: Any,
    batch_size: int,
    memory_budget_gb: float | None = None,
    reward: Any = None,
    max_h: int | None = None,
    dtype: str | torch.dtype | None = None,
    device_type: str | None = None,
    estimator: str = "rlr",
    options: dict[str, Any] | None = None,
) -> tuple[int, bool, float]:
    """``h: auto``: the largest HO length h whose predicted peak fits, and whether it needs checkpointing.

    ``estimator`` ("rlr" or "rlr-paper") and its ``options`` (``h`` aside) decide what else the
    prediction counts, e.g. the control variate's stand-in graph (``control_variate``, ``cv_jumps``).

    Returns ``(h, gradient_checkpointing, predicted_gb)``. Gradient checkpointing (inside the HO /
    FO segments) is switched on only when it lets a larger h fit than without it. ``h`` is at
    most ``max_h`` (default: num_steps - 1). ``memory_budget_gb`` defaults to the free memory of
    the chain's device plus the chain's own resident weights (they are part of the prediction);
    with a spec and no budget, the free memory of cuda if available else of the CPU.
    ``predicted_gb`` includes ``CUDA_OVERHEAD_GB`` on CUDA.
    Raises ValueError naming the memory needed (h = 1 with checkpointing) and the budget when
    nothing fits.
    """
    if isinstance(chain_or_spec, ModelSpec):
        spec = chain_or_spec
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        resident = 0.0
    else:
        spec = spec_from_chain(chain_or_spec, reward)
        device = torch.device(chain_or_spec.device)
        resident = trace_parts(spec, settings_from_chain(chain_or_spec, batch_size)).weights / GB if memory_budget_gb is None else 0.0
    device_type = device_type or device.type
    if memory_budget_gb is None:
        budget = free_memory_gb(device) + resident
        source = f"free memory of {device} ({budget - resident:.2f} GB) + the loaded weights ({resident:.2f} GB)"
    else:
        if not isinstance(memory_budget_gb, (int, float)) or isinstance(memory_budget_gb, bool) or not memory_budget_gb > 0:
            raise ValueError(f"memory_budget_gb must be a number > 0 (GB) or None (free device memory), got {memory_budget_gb!r}")
        budget, source = float(memory_budget_gb), "memory_budget_gb"
    top = spec.num_steps - 1 if max_h is None else int(max_h)
    if top < 1 or top > spec.num_steps - 1:
        raise ValueError(f"max_h must be between 1 and num_steps - 1 = {spec.num_steps - 1}, got {max_h!r}")
    base = chain_or_spec if not isinstance(chain_or_spec, ModelSpec) else spec
    extra = {k: v for k, v in (options or {}).items() if k != "h"}  # what else the estimator keeps (its stand-in...)
    overhead = CUDA_OVERHEAD_GB if device_type == "cuda" else 0.0

    def largest(checkpointing: bool) -> tuple[int, float]:
        best, best_gb = 0, math.inf
        for h in range(1, top + 1):  # linear in h: stop at the first that does not fit
            gb = predict(base, estimator, batch_size, reward=reward, dtype=dtype,
                         gradient_checkpointing=checkpointing, **{**extra, "h": h}).peak_gb + overhead
            if gb > budget:
                return best, (best_gb if best else gb)
            best, best_gb = h, gb
        return best, best_gb

    plain_h, plain_gb = largest(False)
    ckpt_h, ckpt_gb = largest(True)
    if ckpt_h > plain_h:
        return ckpt_h, True, ckpt_gb
    if plain_h >= 1:
        return plain_h, False, plain_gb
    raise ValueError(
        f"h: auto: nothing fits: rlr with h=1 and gradient checkpointing needs {ckpt_gb:.2f} GB (predicted peak, "
        f"batch_size={batch_size}) but {budget:.2f} GB are available ({source}); lower batch_size, use dtype "
        f"float16 / bfloat16, or raise memory_budget_gb"
    )
