"""User reward plug-ins: ``"package.module:function"`` or ``"/path/to/file.py"``.

The function is called as ``fn(images, prompts)`` with images [B, 3, H, W] in [0, 1] and must
return B numbers (tensor, array or list). Plug-ins run arbitrary code, so they are refused in hosted
mode (``get_reward(..., hosted=True)`` or ``RLR_STUDIO_HOSTED=1``).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
from pathlib import Path
from typing import Callable

import torch

from rlr_core.hosted import HOSTED_ENV
from rlr_core.rewards.simple import check_images


def is_plugin_spec(name: str) -> bool:
    """True for ``module:function`` or a path to a ``.py`` file."""
    return name.endswith(".py") or (":" in name and not name.startswith(":") and not name.endswith(":"))


def hosted_mode(hosted: bool | None = None) -> bool:
    """The explicit flag when given, else ``RLR_STUDIO_HOSTED`` in {1, true, yes, on}."""
    if hosted is not None:
        return bool(hosted)
    return os.environ.get(HOSTED_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def load_plugin_function(spec: str, function: str = "") -> Callable:
    """Import the callable named by ``spec`` (``module:function`` or ``file.py``; ``function`` overrides)."""
    if spec.endswith(".py"):
        path = Path(spec).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"reward plug-in file {spec!r} does not exist; give 'module:function' or an existing .py file")
        module_name = f"rlr_reward_plugin_{hashlib.sha1(str(path).encode()).hexdigest()[:12]}"
        loader_spec = importlib.util.spec_from_file_location(module_name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise ValueError(f"reward plug-in file {spec!r} cannot be imported as a Python module")
        module = importlib.util.module_from_spec(loader_spec)
        loader_spec.loader.exec_module(module)
        attr = function or "reward"
    else:
        module_name, _, attr = spec.partition(":")
        attr = function or attr
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ValueError(f"reward plug-in module {module_name!r} cannot be imported: {exc}") from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise ValueError(f"reward plug-in {spec!r} has no function {attr!r}; callables found: {public}")
    return fn


class PluginReward:
    """Wraps a user function to the Reward protocol (shape, dtype and device are checked/fixed)."""

    differentiable: bool

    def __init__(self, spec: str, function: str = "", differentiable: bool | None = None) -> None:
        self.fn = load_plugin_function(spec, function)
        self.name = spec if not function else f"{spec}:{function}" if spec.endswith(".py") else spec.split(":")[0] + ":" + function
        if differentiable is None:
            differentiable = bool(getattr(self.fn, "differentiable", False))
        self.differentiable = bool(differentiable)

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        check_images(images, prompts)
        out = self.fn(images, list(prompts))
        if not isinstance(out, torch.Tensor):
            out = torch.as_tensor(out, dtype=torch.float32)
        out = out.to(device=images.device, dtype=torch.float32).reshape(-1)
        if out.shape[0] != images.shape[0]:
            raise ValueError(f"reward plug-in {self.name!r} returned {out.shape[0]} values for {images.shape[0]} images; it must return one number per image")
        if self.differentiable and not out.requires_grad and images.requires_grad:
            raise ValueError(f"reward plug-in {self.name!r} was declared differentiable but its output has no gradient; pass differentiable=False")
        return out
