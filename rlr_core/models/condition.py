"""Prompt conditioning of a diffusers chain: one text embedding per phase (coarse, mid, fine) and the empty prompt."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..prompts import phase_texts


@dataclass
class DiffusersCondition:
    """Encoded prompts: one text embedding per phase (coarse, mid, fine) and the empty prompt.

    ``phase_embeds[p]`` is [B, L, D] for phase p; ``uncond_embeds`` is [B, L, D] (the empty prompt,
    for classifier-free guidance); ``boundaries`` are the two step indices that split the phases.
    """

    phase_embeds: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    uncond_embeds: torch.Tensor
    prompts: list[str]
    boundaries: tuple[int, int]

    @property
    def batch_size(self) -> int:
        """Number of prompts encoded."""
        return int(self.uncond_embeds.shape[0])

    def phase(self, k: int) -> int:
        """Phase (0 coarse, 1 mid, 2 fine) of sampling step k."""
        b1, b2 = self.boundaries
        return 0 if k < b1 else (1 if k < b2 else 2)

    def embeds_for_step(self, k: int) -> torch.Tensor:
        """The conditional text embedding used at sampling step k."""
        return self.phase_embeds[self.phase(k)]

    def select(self, index: Sequence[int] | slice | torch.Tensor) -> "DiffusersCondition":
        """The condition of a sub-batch (e.g. one antithetic half)."""
        idx = list(range(self.batch_size))[index] if isinstance(index, slice) else index
        idx_t = torch.as_tensor(idx, dtype=torch.long, device=self.uncond_embeds.device)
        prompts = [self.prompts[int(i)] for i in idx_t.tolist()]
        embeds = tuple(e.index_select(0, idx_t) for e in self.phase_embeds)
        return DiffusersCondition(embeds, self.uncond_embeds.index_select(0, idx_t), prompts, self.boundaries)


@torch.no_grad()
def encode_texts(tokenizer: Any, text_encoder: Any, texts: list[str], device: torch.device,
                 dtype: torch.dtype) -> torch.Tensor:
    """Text embeddings [N, L, D] of ``texts`` (padded to the tokenizer's length, 77 when unset)."""
    max_len = int(getattr(tokenizer, "model_max_length", 77) or 77)
    if max_len > 100000:
        max_len = 77
    tokens = tokenizer(texts, padding="max_length", max_length=max_len, truncation=True, return_tensors="pt")
    ids = tokens.input_ids.to(device)
    return text_encoder(ids)[0].to(dtype)


def encode_prompts(tokenizer: Any, text_encoder: Any, prompts: list[str], boundaries: tuple[int, int],
                   device: torch.device, dtype: torch.dtype) -> DiffusersCondition:
    """Encode prompts (plain str: same text in all phases; ``ScheduledPrompt``: coarse/mid/fine) and ""."""
    if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)) or len(prompts) == 0:
        raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r}")
    phases = [phase_texts(p) for p in prompts]
    unique = sorted({text for texts in phases for text in texts} | {""})
    embeds = encode_texts(tokenizer, text_encoder, unique, device, dtype)
    index = {text: i for i, text in enumerate(unique)}
    per_phase = tuple(
        embeds[torch.tensor([index[texts[p]] for texts in phases], device=embeds.device)] for p in range(3)
    )
    uncond = embeds[index[""]].unsqueeze(0).expand(len(prompts), -1, -1).contiguous()
    return DiffusersCondition(per_phase, uncond, [str(p) for p in prompts], boundaries)
