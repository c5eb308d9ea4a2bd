"""The picture of this page: the spikiness gain on the 8 fixed seeds after every round of the three screened
sessions, for each head (python benchmarks/results/clicks/shape-gradient/plot.py)."""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
SOURCES = {"the default (newton page)": HERE.parent / "newton" / "runs.jsonl",
           "two head updates per round": HERE / "head2.jsonl",
           "without the colour statistics": HERE / "no-colour.jsonl",
           "object colours": HERE / "object-colour.jsonl",
           "one-standard-error weights": HERE / "one-standard-error.jsonl",
           "colour cap 1 (colour-cap page)": HERE.parent / "colour-cap" / "runs.jsonl"}
SESSIONS = [(0.0, 2), (0.0, 8), (0.25, 3)]  # (wrong clicks, seed)


def main() -> None:
    fig, axes = plt.subplots(1, len(SESSIONS), figsize=(13, 3.6), sharey=True)
    for ax, (noise, seed) in zip(axes, SESSIONS):
        for label, path in SOURCES.items():
            for run in map(json.loads, path.read_text().splitlines()):
                if (run["attribute"] == "spiky" and run["noise"] == noise and run["seed"] == seed
                        and run.get("clicker", "best") == "best"):
                    curve = [sum(values) / len(values) for values in run["curve"]]
                    ax.plot(range(len(curve)), [value - curve[0] for value in curve], label=label)
        ax.axhline(0, color="gray", lw=0.8)
        ax.set_title(f"spiky, {int(noise * 100)}% wrong clicks, seed {seed}")
        ax.set_xlabel("round")
    axes[0].set_ylabel("spikiness gain, 8 fixed seeds")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(HERE / "shape-gradient.png", dpi=90)


if __name__ == "__main__":
    main()
