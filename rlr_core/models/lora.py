"""LoRA on a diffusers UNet: attach the adapters (peft), their state, and the ONE save / load path.

``save_lora`` writes ``pytorch_lora_weights.safetensors`` (diffusers format: plain diffusers loads it with
``StableDiffusionPipeline.load_lora_weights``) and ``rlr_lora.json``; ``load_lora`` reads them back, checking
everything before the first tensor is copied. The LoRA tensors stay float32 whatever the base dtype.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import Any, ContextManager, Iterator, Sequence

import torch

from ..chain import perturb_parameters
from ..config import LORA_TARGET_SETS

LORA_TARGET_MODULES: tuple[str, ...] = LORA_TARGET_SETS["attention"]  # the default: every attention projection
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
LORA_CONFIG_NAME = "rlr_lora.json"


def attach_lora(unet: Any, rank: int, alpha: float, targets: list[str]) -> list[tuple[str, torch.nn.Parameter]]:
    """Add a gaussian-initialised peft LoRA adapter of ``rank`` / ``alpha`` to the ``targets`` of ``unet``;
    return its (float32, trainable) parameters by name in the UNet's fixed order (every other parameter frozen)."""
    from peft import LoraConfig

    try:
        unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=targets))
    except ValueError as error:  # peft's NoMatchingPeftModuleError
        if "not found" not in str(error):
            raise
        raise ValueError(f"lora_targets {targets} matched no module of the UNet; allowed: one of "
                         f"{list(LORA_TARGET_SETS)} or module-name suffixes such as 'attn2.to_k'") from None
    named: list[tuple[str, torch.nn.Parameter]] = []
    for name, param in unet.named_parameters():
        if "lora_" in name:
            param.data = param.data.to(torch.float32)
            param.requires_grad_(True)
            named.append((name, param))
        else:
            param.requires_grad_(False)
    if not named:
        raise ValueError(f"lora_targets {targets} matched no module of the UNet")
    return named


def read_lora_file(directory: str | os.PathLike, rank: int, alpha: float, targets: Sequence[str]) -> dict[str, torch.Tensor]:
    """The peft-named LoRA tensors of a ``save_lora`` folder (or its ``.safetensors`` file), after checking the
    file type and, when ``rlr_lora.json`` is there, that its rank, alpha and targets match. ValueError /
    FileNotFoundError name the problem."""
    from diffusers.utils import convert_unet_state_dict_to_peft
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(directory)
    weight_file = path / LORA_WEIGHT_NAME if path.is_dir() else path
    if weight_file.suffix.lower() != ".safetensors":
        raise ValueError(
            f"LoRA weights must be a .safetensors file (written by save_lora); got {weight_file.name!r} "
            "(pickle formats such as .bin, .pt and .ckpt are refused: loading them can run code)"
        )
    if not weight_file.is_file():
        raise FileNotFoundError(f"no LoRA weights at {weight_file} (expected {LORA_WEIGHT_NAME} from save_lora)")
    try:
        raw = load_file(str(weight_file))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ValueError(f"{weight_file} is not a readable safetensors file ({error}); nothing was loaded") from None
    unet_sd = {k[len("unet."):]: v for k, v in raw.items() if k.startswith("unet.")}
    if not unet_sd:
        raise ValueError(f"{weight_file} holds no UNet LoRA weights (keys starting with 'unet.')")
    peft_sd = convert_unet_state_dict_to_peft(unet_sd)
    ours: dict[str, torch.Tensor] = {}
    for key, value in peft_sd.items():
        if ".lora_A." not in key and ".lora_B." not in key:
            continue  # e.g. alpha entries
        ours[re.sub(r"\.(lora_[AB])\.", r".\1.default.", key)] = value
    config_file = path / LORA_CONFIG_NAME if path.is_dir() else None
    if config_file is not None and config_file.is_file():
        _check_saved_config(config_file, rank, alpha, targets)
    return ours


def _check_saved_config(config_file: Path, rank: int, alpha: float, targets: Sequence[str]) -> None:
    try:
        saved = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{config_file} is not valid JSON ({error}); nothing was loaded") from None
    if not isinstance(saved, dict) or not all(
        isinstance(saved.get(key, 0), (int, float)) for key in ("lora_rank", "lora_alpha")
    ):
        raise ValueError(f"{config_file} must map lora_rank and lora_alpha to numbers; nothing was loaded")
    if int(saved.get("lora_rank", rank)) != rank:
        raise ValueError(
            f"saved lora_rank={saved.get('lora_rank')} differs from this chain's lora_rank={rank}; "
            f"load the model with lora_rank={saved.get('lora_rank')}"
        )
    if float(saved.get("lora_alpha", alpha)) != float(alpha):
        raise ValueError(f"saved lora_alpha={saved.get('lora_alpha')} differs from this chain's lora_alpha={alpha}")
    saved_targets = saved.get("target_modules")
    if isinstance(saved_targets, list) and sorted(map(str, saved_targets)) != sorted(targets):
        raise ValueError(
            f"saved target_modules={saved_targets} differ from this chain's lora_targets={list(targets)}; "
            f"load the model with lora_targets={saved_targets}; nothing was loaded"
        )


class LoraAdapters:
    """The LoRA half of a chain: theta = the adapter tensors ``_lora_named`` on ``unet``.

    Expects ``unet``, ``_lora_named``, ``lora_rank``, ``lora_alpha``, ``lora_targets`` and ``model_name``
    on the instance (set by ``DiffusersChain.__init__`` with :func:`attach_lora`).
    """

    unet: Any
    _lora_named: list[tuple[str, torch.nn.Parameter]]
    lora_rank: int
    lora_alpha: float
    lora_targets: list[str]
    model_name: str

    def trainable_parameters(self) -> list[torch.Tensor]:
        """The LoRA tensors (float32), in the UNet's fixed module order."""
        return [p for _, p in self._lora_named]

    def num_trainable_parameters(self) -> int:
        """Number of scalar LoRA parameters."""
        return int(sum(p.numel() for p in self.trainable_parameters()))

    def perturbed(self, seed: int, scale: float) -> ContextManager:
        """Temporarily theta += scale * xi(seed) over the LoRA tensors; restored exactly on exit."""
        return perturb_parameters(self.trainable_parameters(), seed, scale)

    @contextlib.contextmanager
    def adapters_disabled(self) -> Iterator[None]:
        """Run the base model (LoRA off) inside the block; LoRA is re-enabled on exit, even on error."""
        self.unet.disable_adapters()
        try:
            yield
        finally:
            self.unet.enable_adapters()

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        """LoRA tensors by parameter name (CPU clones), for checkpoints."""
        return {name: p.detach().to("cpu").clone() for name, p in self._lora_named}

    def load_lora_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load tensors from ``lora_state_dict()`` (same names and shapes, exactly; finite values).

        Every key, shape and value is checked before the first tensor is copied: on any error a
        ValueError names the problem and the LoRA is unchanged.
        """
        values = self._checked_lora_values(state_dict)
        with torch.no_grad():
            for (_, param), value in zip(self._lora_named, values):
                param.copy_(value.to(device=param.device, dtype=param.dtype))

    def _checked_lora_values(self, state_dict: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """The tensors of ``state_dict`` in this chain's LoRA order, once all are known good.

        ValueError when a key is missing or unexpected, or a value is not a floating-point tensor
        of this chain's shape with finite entries (the first bad key, in the UNet's order, is named).
        """
        if not isinstance(state_dict, dict):
            raise ValueError(f"a LoRA state dict must be a dict of name: tensor; got {type(state_dict).__name__}")
        expected = {name for name, _ in self._lora_named}
        missing, unexpected = expected - set(state_dict), set(state_dict) - expected
        if missing or unexpected:
            raise ValueError(
                f"LoRA state dict does not match this model (lora_rank={self.lora_rank}): "
                f"{len(missing)} missing keys (e.g. {sorted(missing)[:2]}), "
                f"{len(unexpected)} unexpected keys (e.g. {sorted(map(str, unexpected))[:2]}); nothing was loaded"
            )
        values = []
        for name, param in self._lora_named:
            value = state_dict[name]
            if not isinstance(value, torch.Tensor) or not value.is_floating_point():
                kind = value.dtype if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(f"LoRA tensor {name} must be a floating-point tensor; got {kind}; nothing was loaded")
            if tuple(value.shape) != tuple(param.shape):
                raise ValueError(
                    f"LoRA tensor {name} has shape {tuple(value.shape)}, expected {tuple(param.shape)} "
                    f"(lora_rank={self.lora_rank}); nothing was loaded"
                )
            if not bool(torch.isfinite(value).all()):
                raise ValueError(f"LoRA tensor {name} holds non-finite values (NaN or inf); nothing was loaded")
            values.append(value)
        return values

    def lora_is_untrained(self) -> bool:
        """True when every lora_B tensor is zero: the LoRA changes nothing yet (a fresh initialisation)."""
        return not any(bool(param.detach().any()) for name, param in self._lora_named if ".lora_B." in name)

    def reset_lora(self, seed: int) -> None:
        """Initialise the LoRA afresh from ``seed``, as peft's ``init_lora_weights="gaussian"`` does:
        lora_A ~ N(0, (1 / lora_rank)^2), lora_B = 0, so the LoRA changes nothing until trained.

        Drawn on the CPU in float32 in the UNet's fixed parameter order: the same seed gives the
        same LoRA in every process and on every device (the Trainer calls this at the start of a
        fresh run, so identical configs train identically). The tensors are updated in place.
        """
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        with torch.no_grad():
            for name, param in self._lora_named:
                if ".lora_A." in name:
                    value = torch.randn(param.shape, generator=generator, dtype=torch.float32) / self.lora_rank
                else:
                    value = torch.zeros(param.shape, dtype=torch.float32)
                param.copy_(value.to(device=param.device, dtype=param.dtype))

    def save_lora(self, directory: str | os.PathLike) -> Path:
        """Write ``pytorch_lora_weights.safetensors`` (diffusers format) and ``rlr_lora.json`` into ``directory``.

        The weights load in plain diffusers with ``StableDiffusionPipeline.load_lora_weights(directory)``.
        """
        from diffusers import StableDiffusionPipeline
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        peft_sd = get_peft_model_state_dict(self.unet, adapter_name="default")
        peft_sd = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in peft_sd.items()}
        unet_sd = convert_state_dict_to_diffusers(peft_sd)
        metadata = {
            "r": self.lora_rank,
            "lora_alpha": self.lora_alpha,
            "target_modules": sorted(self.lora_targets),
            "init_lora_weights": "gaussian",
        }
        StableDiffusionPipeline.save_lora_weights(
            save_directory=str(out), unet_lora_layers=unet_sd, weight_name=LORA_WEIGHT_NAME,
            safe_serialization=True, unet_lora_adapter_metadata=metadata,
        )
        info = {
            "format": "diffusers-lora",
            "weight_name": LORA_WEIGHT_NAME,
            "base_model": self.model_name,
            "lora_rank": self.lora_rank,
            "lora_alpha": self.lora_alpha,
            "target_modules": list(self.lora_targets),
            "num_parameters": self.num_trainable_parameters(),
        }
        (out / LORA_CONFIG_NAME).write_text(json.dumps(info, indent=2), encoding="utf-8")
        return out

    def load_lora(self, directory: str | os.PathLike) -> None:
        """Load LoRA weights written by ``save_lora`` (or any diffusers-format UNet LoRA of the same rank).

        ``directory``: a folder holding ``pytorch_lora_weights.safetensors`` (and ``rlr_lora.json``), or
        the ``.safetensors`` file itself. Only safetensors are read (pickle files such as ``.bin`` /
        ``.pt`` can run code and are refused). Rank, alpha, every key, shape and value are checked
        before anything is copied: on any error a ValueError names the problem and the LoRA is unchanged.
        """
        self.load_lora_state_dict(read_lora_file(directory, self.lora_rank, self.lora_alpha, self.lora_targets))
