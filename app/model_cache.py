"""The process-level model cache: loaded weights keyed by model, LoRA rank / alpha / targets, dtype and device.

At most ``MAX_MODELS`` distinct weights are kept (each SD model is several GB). Runs with other sampler
settings get a *variant* of the loaded chain that shares its weights and LoRA parameters; each run keeps
its own LoRA, and the weights hold the LoRA of one run at a time (``ModelEntry.owner``; see
:func:`app.runs.using`). Loading goes through ``rlr_core.run.build_chain``, the one builder.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

from rlr_core.config import TrainConfig, resolve_lora_targets
from rlr_core.hub import WeightsUnavailableError
from rlr_core.run import build_chain

from .errors import FieldError
from .locks import WORK_LOCK

__all__ = ["MAX_MODELS", "MAX_VARIANTS", "ModelEntry", "ModelCache", "model_key", "sampler_key", "load_chain"]

MAX_MODELS = 2
"""Loaded model weights kept at once (each SD model is several GB); sampler-setting variants share them."""
MAX_VARIANTS = 8


@dataclass
class ModelEntry:
    """One loaded model (its weights once) and the sampler-setting variants of it in use."""

    key: tuple
    chain: Any  # the chain loaded first; variants share its modules and LoRA parameters
    initial_lora: dict[str, Any]  # the fresh LoRA right after loading (every new run starts here)
    default_guidance: float = 7.5
    owner: str | None = None  # id of the run whose LoRA is in the chain now
    loaded_at: float = field(default_factory=time.time)
    load_seconds: float = 0.0
    variants: OrderedDict = field(default_factory=OrderedDict)

    def variant(self, config: TrainConfig) -> Any:
        """The chain with ``config``'s sampler settings (shares the weights of ``chain``)."""
        key = sampler_key(config)
        chain = self.variants.get(key)
        if chain is None:
            if key == self.chain.loaded_sampler_key:  # the settings it was loaded with
                chain = self.chain
            else:
                guidance = self.default_guidance if config.guidance_scale is None else config.guidance_scale
                boundaries = list(config.prompt_boundaries) if config.uses_prompt_schedule else None
                chain = self.chain.with_sampler_settings(config.num_steps, guidance, config.eta, boundaries)
                chain.gradient_checkpointing = bool(config.gradient_checkpointing)
            self.variants[key] = chain
            while len(self.variants) > MAX_VARIANTS:
                self.variants.popitem(last=False)  # runs keep theirs; the cache only forgets it
        self.variants.move_to_end(key)
        return chain


def resolved_lora_targets(config: TrainConfig) -> tuple[str, ...]:
    """The config's LoRA targets as its model resolves them ("auto" is the model's own default)."""
    from rlr_core.models import model_defaults

    return tuple(resolve_lora_targets(config.lora_targets, auto=model_defaults(config.model)["lora_targets"]))


def same_lora_layout(a: TrainConfig, b: TrainConfig) -> bool:
    """Whether a LoRA trained under config ``a`` fits a chain built from ``b``: the same model, rank and
    resolved targets (so "auto" and the target set it stands for are the same)."""
    return (a.model, int(a.lora_rank), resolved_lora_targets(a)) == (b.model, int(b.lora_rank), resolved_lora_targets(b))


def model_key(config: TrainConfig) -> tuple:
    """Cache key of the weights: model, LoRA rank, alpha and targets (as the model resolves them: "auto" is its
    own default), dtype, device."""
    return (config.model, int(config.lora_rank), config.lora_alpha, resolved_lora_targets(config), config.dtype,
            config.device)


def sampler_key(config: TrainConfig) -> tuple:
    """The sampler settings a chain variant is built with."""
    boundaries = tuple(config.prompt_boundaries) if config.uses_prompt_schedule else None
    return (int(config.num_steps), config.guidance_scale, float(config.eta), boundaries, bool(config.gradient_checkpointing))


class ModelCache:
    """The loaded models: at most ``capacity`` distinct weights. A model no live run uses is dropped
    first (least recently used); when every loaded model is in use by other sessions, a new one is
    refused with a FieldError rather than loaded past the bound. ``in_use(session)``: the model keys of
    the live runs, those of ``session`` left out (the run registry, :func:`app.runs.models_in_use`)."""

    def __init__(self, capacity: int = MAX_MODELS, in_use: Callable[[str | None], set[tuple]] | None = None) -> None:
        self.capacity = capacity
        self.in_use = in_use or (lambda session: set())
        self._entries: OrderedDict[tuple, ModelEntry] = OrderedDict()
        self._lock = threading.RLock()

    def get(self, config: TrainConfig, session: str | None = None) -> ModelEntry:
        key = model_key(config)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                return entry
        with WORK_LOCK:  # loading is heavy work too
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None:
                    return entry
                self._make_room(session)
            start = time.perf_counter()
            chain = load_chain(config)
            chain.loaded_sampler_key = sampler_key(config)
            entry = ModelEntry(key, chain, chain.lora_state_dict(), default_guidance=float(chain.guidance_scale)
                               if config.guidance_scale is None else _default_guidance(config.model),
                               load_seconds=time.perf_counter() - start)
            with self._lock:
                self._entries[key] = entry
            return entry

    def _make_room(self, session: str | None) -> None:
        """Drop unused models until one more fits; FieldError when the others are all in use."""
        while len(self._entries) >= self.capacity:
            in_use = self.in_use(session)
            free = [key for key in self._entries if key not in in_use]
            if not free:
                loaded = ", ".join(sorted({key[0] for key in self._entries}))
                raise FieldError("Model", f"this server keeps at most {self.capacity} models in memory and they are in use "
                                          f"by other sessions ({loaded}); pick one of those or try again later")
            self._entries.pop(free[0])

    def keys(self) -> list[tuple]:
        with self._lock:
            return list(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def _default_guidance(model: str) -> float:
    from rlr_core.models import model_defaults

    return float(model_defaults(model)["guidance_scale"])


def load_chain(config: TrainConfig) -> Any:
    """``rlr_core.run.build_chain(config)`` (what ``TrainingRun.from_config`` loads), errors naming the Model field."""
    try:
        return build_chain(config)
    except WeightsUnavailableError as error:
        raise FieldError("Model", str(error)) from error
    except (OSError, ValueError) as error:
        raise FieldError("Model", f"could not load {config.model!r}: {error}") from error
