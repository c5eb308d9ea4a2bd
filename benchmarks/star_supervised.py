"""Can a LoRA make the tiny model draw stars for "a red circle on a white background" at all?

    python benchmarks/star_supervised.py [--lora-targets cross-attention] [--steps 300] [--lr 0.003] [--threads 1]

A feasibility check for the star demo, with no reward and no RL. The base tiny model draws 64 red
stars (prompt "a red star on a white background", seeds 30,000,000+). A fresh LoRA is then trained
with the plain denoising loss (the model's own prediction type) to produce those images when the
UNet is conditioned on the *circle* prompt. The check samples the circle prompt on the star demo's
32 held-out seeds (20,000,000+) with the LoRA on, and counts clean stars with
``rlr_core.tiny.detect.is_clean_star``. Prints one JSON line; ``--out`` also writes the images as
a PNG.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

CIRCLE = "a red circle on a white background"
STAR = "a red star on a white background"
EVAL_SEED0 = 20_000_000  # the star demo's held-out seeds
DATA_SEED0 = 30_000_000


def train_circle_to_star(lora_targets: str, steps: int, lr: float, batch: int = 16, seed: int = 0,
                         num_steps: int | None = None) -> dict:
    """Train the LoRA (see the module docstring); return the clean-star fraction and the images."""
    from rlr_core.diffusers_chain import load_model
    from rlr_core.sampling import sample
    from rlr_core.tiny.detect import detect, is_clean_star

    chain = load_model("tiny", lora_targets=lora_targets, device="cpu", **({"num_steps": num_steps} if num_steps else {}))
    with torch.no_grad():  # a fresh LoRA changes nothing (lora_B = 0): these are the base model's stars
        stars = sample(chain, [STAR] * 64, seeds=list(range(DATA_SEED0, DATA_SEED0 + 64))) * 2 - 1
    circle = chain.condition([CIRCLE]).phase_embeds[-1]
    scheduler = chain.scheduler
    optimizer = torch.optim.AdamW(chain.trainable_parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    losses = []
    for _ in range(steps):
        x0 = stars[torch.randint(len(stars), (batch,), generator=generator)]
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=generator)
        target = scheduler.get_velocity(x0, noise, t) if chain.prediction_type == "v_prediction" else noise
        prediction = chain.unet(scheduler.add_noise(x0, noise, t), t, encoder_hidden_states=circle.expand(batch, -1, -1)).sample
        loss = F.mse_loss(prediction, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    seconds = time.perf_counter() - start
    with torch.no_grad():
        images = sample(chain, [CIRCLE] * 32, seeds=list(range(EVAL_SEED0, EVAL_SEED0 + 32)))
    found = [detect(image) for image in images]
    return {
        "lora_targets": lora_targets,
        "trainable_parameters": chain.num_trainable_parameters(),
        "steps": steps,
        "lr": lr,
        "train_seconds": round(seconds, 1),
        "loss_first_last_50": [round(float(np.mean(losses[:50])), 4), round(float(np.mean(losses[-50:])), 4)],
        "clean_star_fraction": sum(map(is_clean_star, found)) / len(found),
        "solidity_star_fraction": sum(d.shape == "star" for d in found) / len(found),
        "_images": images,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lora-targets", default="cross-attention")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=0.003)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--num-steps", type=int, default=0, help="sampling steps T (default: the model's)")
    parser.add_argument("--out", default="", help="write the 32 circle-prompt images after training to this PNG")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = train_circle_to_star(args.lora_targets, args.steps, args.lr, num_steps=args.num_steps or None)
    images = result.pop("_images")
    if args.out:
        from PIL import Image

        grid = (images.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
        grid = grid.reshape(2, 16, 32, 32, 3).transpose(0, 2, 1, 3, 4).reshape(64, 512, 3)
        Image.fromarray(grid).resize((1536, 192), Image.NEAREST).save(args.out)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
