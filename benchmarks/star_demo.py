"""The star demo: a short run moves "a red circle" images toward the text "a red star".

    python benchmarks/star_demo.py [--config benchmarks/star_demo.yaml] [--steps N] [--seeds K]
                                   [--out benchmarks/results/star-demo] [--threads 2]

The prompt is "a red circle on a white background"; the reward is the clip reward on the bundled
tiny-clip with ``text="a red star on a white background"`` (offline). The run is the preset
``benchmarks/star_demo.yaml`` (full-bp on a cross-attention LoRA; ``--config`` runs a variant, e.g. with
the estimator rlr). Before (LoRA off) and after N iterations,
K images are sampled on fixed held-out seeds and read by the non-learned tiny detector
(``rlr_core.tiny.detect``): ``clean_star_fraction`` is the share of images that pass
``is_clean_star`` (the largest shape concave, exactly 5 points, >= 40 px, >= 90% of the foreground);
``star_fraction`` is the share whose largest shape the solidity rule alone calls a star (noise, blobs
and empty canvases pass that one too). Writes ``before_after.png`` (top row before, bottom row after) and
``star_demo.json`` (numbers, per-iteration rewards, wall-clock, the command) to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "benchmarks" / "star_demo.yaml"
EVAL_SEED0 = 20_000_000  # held out: training data seeds < 10,000,000, tiny-model eval seeds 10,000,000+


def detector_summary(images: torch.Tensor) -> dict:
    """What the tiny detector reads: share of each shape, of red, of white backgrounds, of all three
    at once ("a red star on a white background"), and the mean area of the largest shape (pixels)."""
    from rlr_core.tiny.detect import detect, is_clean_star

    found = [detect(im) for im in images]
    points = [int(d.features.get("points", 0)) for d in found]  # 0: no shape found
    n = max(len(found), 1)
    shapes = {s: sum(d.shape == s for d in found) / n for s in ("star", "circle", "square", "triangle")}
    return {
        "star_fraction": shapes["star"],
        # the stricter test (5 points, >= 40 px, no noise): the solidity rule alone calls noise, empty
        # canvases and blobs "star" too
        "clean_star_fraction": sum(is_clean_star(d) for d in found) / n,
        "shape_fractions": shapes,
        "red_fraction": sum(d.color == "red" for d in found) / n,
        "white_background_fraction": sum(d.background == "white" for d in found) / n,
        "red_star_on_white_fraction": sum(d.shape == "star" and d.color == "red" and d.background == "white" for d in found) / n,
        "mean_shape_area": sum(float(d.features.get("area", 0.0)) for d in found) / n,
        # graded: how far the shapes are from a star (a disc has solidity ~0.97, a star ~0.6) and how many points
        "mean_solidity": sum(float(d.features.get("solidity", 1.0)) for d in found) / n,
        "points_counts": {str(k): points.count(k) for k in sorted(set(points))},
        "detected": [d.shape for d in found],
    }


def run_demo(config_path: str | Path = DEFAULT_CONFIG, steps: int | None = None, seeds: int = 32, output_dir: str | None = None,
             lr: float | None = None, batch_size: int | None = None, verbose: bool = False, measure_every: int = 0,
             overrides: list[str] = ()) -> dict:
    """Run the preset for ``steps`` iterations; return before/after detector and reward numbers and the images.

    ``measure_every`` > 0 also measures the held-out seeds every that many iterations (``during``:
    reward and clean / solidity star fractions; its sampling time is not counted in ``train_seconds``).
    ``overrides`` are ``KEY=VALUE`` strings applied to the config as ``rlr-train --set`` does."""
    from rlr_core.cli import apply_overrides
    from rlr_core.config import TrainConfig
    from rlr_core.run import TrainingRun
    from rlr_core.sampling import sample
    from rlr_core.training import Trainer

    config = apply_overrides(TrainConfig.from_file(config_path, validate=False), overrides).validate()
    if steps is not None:
        config.steps = int(steps)
    if lr is not None:
        config.lr = float(lr)
    if batch_size is not None:
        config.batch_size = int(batch_size)
    config.eval_every = 0
    config.checkpoint_every = 0
    config.output_dir = output_dir or tempfile.mkdtemp(prefix="star-demo-")
    chain, reward, estimator = TrainingRun.from_config(config).parts()
    prompt = config.prompts[0]
    eval_seeds = [EVAL_SEED0 + i for i in range(seeds)]
    prompts = [prompt] * seeds

    def measure(adapters: bool) -> tuple[torch.Tensor, dict]:
        context = chain.adapters_disabled() if not adapters else contextlib.nullcontext()
        with context, torch.no_grad():
            images = sample(chain, prompts, seeds=eval_seeds)
            rewards = reward(images, prompts)
        return images, {"reward_mean": float(rewards.mean()), **detector_summary(images)}

    t0 = time.time()
    before_images, before = measure(adapters=False)
    if verbose:
        print(json.dumps({"before": {k: v for k, v in before.items() if k != "detected"}}), flush=True)
    trainer = Trainer(chain, reward, estimator, config)
    history, during = [], []
    measure_seconds = 0.0
    t_train = time.time()
    for report in trainer.run():
        history.append({"step": report.step, "reward_mean": round(float(report.reward_mean), 3), "seconds": round(float(report.seconds), 2),
                        **({"kl": round(report.info["kl"], 3), "grad_norm_kl": round(report.grad_norms["kl"], 4),
                            "grad_norm_total": round(report.grad_norms["total"], 4)} if "kl" in report.info else {})})
        if verbose:
            print(json.dumps(history[-1]), flush=True)
        if measure_every and report.step % measure_every == 0 and report.step < config.steps:
            t_measure = time.time()
            _, now = measure(adapters=True)
            during.append({"step": report.step, **{k: now[k] for k in ("reward_mean", "clean_star_fraction", "star_fraction",
                                                                     "red_fraction", "white_background_fraction", "mean_solidity")}})
            measure_seconds += time.time() - t_measure
            if verbose:
                print(json.dumps({"during": during[-1]}), flush=True)
    train_seconds = time.time() - t_train - measure_seconds
    after_images, after = measure(adapters=True)
    return {
        "prompt": prompt,
        "reward": {"name": config.reward, **config.reward_options},
        "estimator": {"name": config.estimator, **config.estimator_options},
        "iterations": config.steps,
        "batch_size": config.batch_size,
        "lr": config.lr,
        "lora_rank": config.lora_rank,
        "lora_targets": config.lora_targets,
        "kl_weight": config.kl_weight,
        "num_steps": config.num_steps,
        "eval_seeds": [eval_seeds[0], eval_seeds[-1]],
        "before": before,
        "after": after,
        "history": history,
        **({"during": during} if measure_every else {}),
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.time() - t0, 1),
        "torch_threads": torch.get_num_threads(),
        "_images": (before_images, after_images),
    }


def save_before_after(before: torch.Tensor, after: torch.Tensor, path: Path, columns: int = 16, scale: int = 3) -> None:
    """PNG: rows of ``before`` images, then rows of ``after`` images, a gap between the two blocks."""
    from PIL import Image

    def grid(images: torch.Tensor) -> np.ndarray:
        arr = (images.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
        n, h, w, _ = arr.shape
        rows = (n + columns - 1) // columns
        pad = 2
        canvas = np.full((rows * (h * scale + pad) + pad, columns * (w * scale + pad) + pad, 3), 200, dtype=np.uint8)
        for i, a in enumerate(arr):
            r, c = divmod(i, columns)
            y, x = pad + r * (h * scale + pad), pad + c * (w * scale + pad)
            canvas[y : y + h * scale, x : x + w * scale] = a.repeat(scale, 0).repeat(scale, 1)
        return canvas

    top, bottom = grid(before), grid(after)
    gap = np.full((8, top.shape[1], 3), 255, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate([top, gap, bottom])).save(path)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(DEFAULT_CONFIG))
    p.add_argument("--steps", type=int, default=None, help="iterations (default: the config's)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the config's)")
    p.add_argument("--batch-size", type=int, default=None, help="batch size (default: the config's)")
    p.add_argument("--seeds", type=int, default=32, help="fixed held-out seeds measured before and after")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "star-demo"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--measure-every", type=int, default=0,
                   help="also measure the held-out seeds every N iterations (0 = only before and after)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, as rlr-train --set (e.g. estimator=rlr); repeatable")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="star-demo-") as run_dir:
        result = run_demo(args.config, args.steps, args.seeds, run_dir, args.lr, args.batch_size, verbose=True,
                          measure_every=args.measure_every, overrides=args.set)
    before_images, after_images = result.pop("_images")
    out = Path(args.out)
    save_before_after(before_images, after_images, out / "before_after.png")
    result["command"] = " ".join(["python benchmarks/star_demo.py", *(sys.argv[1:] if argv is None else argv)])
    (out / "star_demo.json").write_text(json.dumps(result, indent=2) + "\n")
    b, a = result["before"], result["after"]
    print(f"clean star fraction {b['clean_star_fraction']:.3f} -> {a['clean_star_fraction']:.3f}; "
          f"star fraction {b['star_fraction']:.3f} -> {a['star_fraction']:.3f}; reward {b['reward_mean']:.2f} -> {a['reward_mean']:.2f}; "
          f"{result['iterations']} iterations in {result['train_seconds']:.0f} s (total {result['total_seconds']:.0f} s); wrote {out}")
    return result


if __name__ == "__main__":
    main()
