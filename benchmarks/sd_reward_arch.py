"""The reward of the SD-scale benchmark (sd_scale.py): the aesthetic reward at full size with random CLIP weights.

Moved here from ``rlr_core.sd_arch`` (the models layer may not import rewards).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

# The LAION head is not bundled: by default it is read from the data folder beside the checkout
# (the folder "shared/data" next to the checkout, where the benchmark machines keep it); pass head_path otherwise.
LAION_HEAD_PATH = Path(__file__).resolve().parents[2] / "shared" / "data" / "laion-aesthetic-head-sac-logos-ava1-l14-linearMSE.pth"


def random_aesthetic_reward(head_path: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                            precision: str = "fp32"):
    """The aesthetic reward at full size: random-init open_clip ViT-L/14 + the real LAION head.

    ``head_path`` defaults to :data:`LAION_HEAD_PATH` (FileNotFoundError when absent).
    """
    from rlr_core.rewards import get_reward

    path = Path(head_path) if head_path else LAION_HEAD_PATH
    if not path.is_file():
        raise FileNotFoundError(f"head_path: no LAION aesthetic head at {path}")
    return get_reward("aesthetic", clip_model="ViT-L-14", pretrained="random", head_path=str(path),
                      device=device, precision=precision)
