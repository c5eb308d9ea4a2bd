"""Loss curve of a training run (PIL only, no matplotlib): ``python -m rlr_core.tiny.report``."""

from __future__ import annotations

import argparse
import csv

import numpy as np
from PIL import Image, ImageDraw


def read_loss(csv_path):
    rows = {}
    with open(csv_path) as f:
        for row in csv.DictReader(f):  # a resumed run may repeat steps: keep the last
            rows[int(row["step"])] = (float(row["loss"]), float(row["elapsed_min"]))
    steps = np.array(sorted(rows))
    losses = np.array([rows[s][0] for s in steps])
    minutes = np.array([rows[s][1] for s in steps])
    return steps, losses, minutes


def smooth(x, window=50):
    if len(x) < 2:
        return x
    w = min(window, len(x))
    c = np.cumsum(np.insert(x, 0, 0.0))
    out = np.empty_like(x)
    for i in range(len(x)):
        lo = max(0, i - w + 1)
        out[i] = (c[i + 1] - c[lo]) / (i + 1 - lo)
    return out


def loss_table(csv_path, every=250):
    steps, losses, minutes = read_loss(csv_path)
    s = smooth(losses)
    rows = ["| step | minutes | loss (50-step mean) |", "|---:|---:|---:|"]
    for i in range(len(steps)):
        if steps[i] % every == 0 or i == len(steps) - 1:
            rows.append(f"| {steps[i]} | {minutes[i]:.1f} | {s[i]:.4f} |")
    return "\n".join(rows)


def plot_loss(csv_path, png_path, size=(480, 240)):
    steps, losses, _ = read_loss(csv_path)
    W, H = size
    L, R, T, B = 48, 10, 10, 28
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    d.rectangle([L, T, W - R, H - B], outline=(0, 0, 0))
    s = smooth(losses)
    lo, hi = float(np.percentile(losses, 1)), float(np.percentile(losses, 99))
    hi = max(hi, lo + 1e-6)

    def xy(st, v):
        x = L + (W - L - R) * (st - steps[0]) / max(steps[-1] - steps[0], 1)
        y = T + (H - T - B) * (1 - (min(max(v, lo), hi) - lo) / (hi - lo))
        return x, y

    d.point([xy(a, b) for a, b in zip(steps, losses)], fill=(170, 190, 230))
    d.line([xy(a, b) for a, b in zip(steps, s)], fill=(200, 30, 30), width=2)
    d.text((L, H - B + 6), f"step {steps[0]}", fill=(0, 0, 0))
    d.text((W - R - 70, H - B + 6), f"step {steps[-1]}", fill=(0, 0, 0))
    d.text((2, T), f"{hi:.3f}", fill=(0, 0, 0))
    d.text((2, H - B - 10), f"{lo:.3f}", fill=(0, 0, 0))
    d.text((L + 6, T + 4), "training loss (blue: per step, red: 50-step mean)", fill=(0, 0, 0))
    img.save(png_path)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--csv", default="runs/tiny-shapes-train/loss.csv")
    p.add_argument("--png", default="assets/tiny-shapes/loss.png")
    p.add_argument("--every", type=int, default=250)
    a = p.parse_args(argv)
    plot_loss(a.csv, a.png)
    print(loss_table(a.csv, a.every))


if __name__ == "__main__":
    main()
