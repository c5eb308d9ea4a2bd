"""Shared set-up for the benchmark scripts: the model to measure and a differentiable toy reward."""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch


class Redness:
    """Differentiable weight-free reward used for timing (mean red minus mean green/blue)."""

    name = "redness"
    differentiable = True

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return images[:, 0].mean((1, 2)) - images[:, 1:].mean((1, 2, 3))


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", default="tiny", help='"tiny" (bundled), a diffusers folder or a Hub id')
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lora-rank", type=int, default=4)
    p.add_argument("--reward", default="redness", help='"redness" or any rlr_core reward name')
    p.add_argument("--eta", type=float, default=1.0, help="DDIM eta of the stochastic steps (> 0 for LR terms)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    return p


def make_reward(name: str, device: str):
    if name == "redness":
        return Redness()
    from rlr_core.rewards import get_reward

    return get_reward(name)


def load(args, num_steps: int):
    from rlr_core.diffusers_chain import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    # attention: the targets every published number of these scripts was measured with
    return load_model(args.model, num_steps=num_steps, lora_rank=args.lora_rank, lora_targets="attention", eta=args.eta,
                      device=args.device, dtype=args.dtype)


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    print(" | ".join(c.ljust(widths[c]) for c in columns))
    print("-|-".join("-" * widths[c] for c in columns))
    for r in rows:
        print(" | ".join(_fmt(r.get(c)).ljust(widths[c]) for c in columns))


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)
