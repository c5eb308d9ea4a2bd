"""Load and sampling time of the bundled tiny model, each measured in a fresh Python process.

    python benchmarks/tiny_load.py [--repeats 3] [--threads 2]

Prints, per repeat: the seconds to import torch + diffusers + transformers + peft, the first
``load_model("tiny")`` after those imports, a second load in the same process, and the seconds to
sample ``--images`` (32) images at the model's defaults (held-out prompts and seeds); then the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, os, sys, time
t0 = time.perf_counter()
import torch
torch.set_num_threads(int(sys.argv[1]))
import diffusers, transformers, peft  # noqa: F401  (the import cost every process pays once)
from diffusers import DDIMScheduler, UNet2DConditionModel  # noqa: F401
from transformers import CLIPTextModel, CLIPTokenizer  # noqa: F401
t1 = time.perf_counter()
from rlr_core.diffusers_chain import load_model
from rlr_core.sampling import sample
from rlr_core.tiny.data import HOLDOUT_START, eval_prompts
chain = load_model("tiny")
t2 = time.perf_counter()
load_model("tiny")
t3 = time.perf_counter()
images = int(sys.argv[2])
prompts = [p for p, *_ in eval_prompts()][:images]
sample(chain, prompts, seeds=list(range(HOLDOUT_START, HOLDOUT_START + images)))
t4 = time.perf_counter()
print(json.dumps({"imports": t1 - t0, "first_load": t2 - t1, "second_load": t3 - t2,
                  "fresh_process_total": t2 - t0, "sample_seconds": t4 - t3, "images": images, "num_steps": chain.num_steps}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--images", type=int, default=32, help="images sampled after loading (held-out prompts and seeds)")
    args = p.parse_args()
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(args.threads))
    rows = []
    for _ in range(args.repeats):
        out = subprocess.run([sys.executable, "-c", CHILD, str(args.threads), str(args.images)], env=env, check=True,
                             capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    keys = ["imports", "first_load", "second_load", "fresh_process_total", "sample_seconds"]
    print(f"tiny model, {args.threads} CPU threads, {rows[0]['num_steps']} sampling steps, {args.images} images sampled")
    print("| repeat | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for i, r in enumerate(rows, 1):
        print(f"| {i} | " + " | ".join(f"{r[k]:.2f} s" for k in keys) + " |")
    print("| median | " + " | ".join(f"{statistics.median(r[k] for r in rows):.2f} s" for k in keys) + " |")


if __name__ == "__main__":
    main()
