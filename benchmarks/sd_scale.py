"""What fits in your GPU: predicted peak memory of each estimator on SD 1.5 (512 px) and SD 2.1 (768 px).

    python benchmarks/sd_scale.py                      # predicted table -> benchmarks/results/sd-scale/
    python benchmarks/sd_scale.py --cpu-run            # + one real RLR estimate, SD 1.5 architecture, 512 px, CPU
    python benchmarks/sd_scale.py --measure --device cuda          # real CUDA runs (benchmarks/gpu_check.sh)
    python benchmarks/sd_scale.py --measure --device cpu --tiny --out DIR   # smoke test of --measure

Predictions come from ``rlr_core.memory_model`` (the model traced on the meta device: nothing is
computed at full cost): fp16 base weights with autocast, SDPA attention, T = 50 DDIM steps, CFG 7.5,
LoRA rank 4, aesthetic reward (open_clip ViT-L/14 fp32 + LAION head). "fits" adds
``CUDA_OVERHEAD_GB`` (CUDA context + allocator slack) to the predicted peak. ``--measure`` writes
``gpu.json`` (CUDA peak memory, seconds per estimate and per plain sampling pass), which the table
shows beside the prediction when present.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from rlr_core import memory_model as mm  # noqa: E402

OUT_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "sd-scale"
BUDGETS_GB = (8, 12, 16, 24, 40, 80)
BATCHES = (1, 2, 4)
MODELS = (("sd15", 512), ("sd21", 768))
CONFIGS: list[tuple[str, dict, bool]] = (
    [("rlr", {"h": h}, ckpt) for h in range(1, 5) for ckpt in (False, True)]
    + [("full-bp", {}, False), ("full-bp", {}, True)]
    + [("truncated-bp", {"k": k}, False) for k in range(1, 6)]
    + [("ddpo", {}, False), ("zo", {}, False)]
)


def config_label(estimator: str, options: dict, ckpt: bool) -> str:
    """A row label such as ``rlr h=2 +ckpt``."""
    opts = " ".join(f"{k}={v}" for k, v in options.items())
    return " ".join(x for x in (estimator, opts, "+ckpt" if ckpt else "") if x)


def smallest_fit(peak_gb: float) -> str:
    """The smallest budget of BUDGETS_GB the peak (+ CUDA overhead) fits in, or '>80'."""
    for budget in BUDGETS_GB:
        if peak_gb + mm.CUDA_OVERHEAD_GB <= budget:
            return str(budget)
    return f">{BUDGETS_GB[-1]}"


def predicted_rows(num_steps: int = 50, models: tuple = MODELS, batches: tuple = BATCHES) -> list[dict]:
    """Every (model, config, batch) prediction as plain data."""
    rows = []
    for arch, size in models:
        spec = mm.spec_for_arch(arch, num_steps=num_steps)
        for estimator, options, ckpt in CONFIGS:
            for batch, autocast in [(b, True) for b in batches] + [(1, False)]:
                pred = mm.predict(spec, estimator, batch, dtype="float16", autocast=autocast,
                                  gradient_checkpointing=ckpt, **options)
                rows.append({"model": arch, "image_size": size, "config": config_label(estimator, options, ckpt),
                             "autocast": autocast,
                             "estimator": estimator, "options": options, "gradient_checkpointing": ckpt,
                             "batch_size": batch, "graph_gb": round(pred.graph_gb, 3), "peak_gb": round(pred.peak_gb, 3),
                             "fits_gb": smallest_fit(pred.peak_gb),
                             "fits": {str(b): pred.peak_gb + mm.CUDA_OVERHEAD_GB <= b for b in BUDGETS_GB}})
    return rows


def anchors(batches: tuple = BATCHES) -> dict:
    """Per-step memory of SD 1.5 at 512 px (fp16, batch 1 with CFG) beside the paper's SD 1.4 figures."""
    spec = mm.spec_for_arch("sd15")
    out = {}
    for batch in sorted({1, *batches}):  # batch 1 is compared with the paper
        step = mm.per_step_memory(spec, batch, dtype="float16", autocast=True)
        out[str(batch)] = {k: round(v, 3) for k, v in step.items()}
        eager = mm.per_step_memory(spec, batch, dtype="float16", autocast=True, attention="eager")
        out[str(batch)]["ho_step_gb_eager_attention"] = round(eager["ho_step_gb"], 3)
    out["paper_sd14"] = {"ho_step_gb": 8.0, "zo_step_gb": 0.24}
    return out


def markdown(rows: list[dict], anchor: dict, gpu: dict | None, cpu: dict | None, models: tuple = MODELS,
             batches: tuple = BATCHES) -> str:
    """The README table(s)."""
    lines = ["# What fits in your GPU (predicted)", "",
             "Command: `python benchmarks/sd_scale.py`. Predicted by `rlr_core.memory_model` (meta-device trace, "
             "no full-cost run): fp16 weights + autocast, SDPA, T = 50, CFG 7.5, LoRA r4, aesthetic reward "
             f"(ViT-L/14 fp32 + LAION head). Cells: predicted peak GiB / smallest of {', '.join(map(str, BUDGETS_GB))} GB "
             f"it fits in (peak + {mm.CUDA_OVERHEAD_GB} GB CUDA overhead). rlr needs an even batch with its default "
             "antithetic twins (batch 1: antithetic=false). CUDA autocast runs GroupNorm / LayerNorm / softmax in "
             "float32 and keeps those float32 inputs for backward, so fp16 weights *without* autocast (LoRA matmuls "
             "in float32 then) need less memory: see the second-to-last column.", ""]
    measured = {}
    for run in (gpu or {}).get("runs", []):
        if "error" not in run:
            measured[(run["model"], run["config"], run["batch_size"])] = run
    for arch, size in models:
        lines += [f"## {arch} ({size} px)", "",
                  "| config | " + " | ".join(f"batch {b}" for b in batches)
                  + " | batch 1, fp16 without autocast | GPU measured (batch 1) |",
                  "|---|" + "---|" * len(batches) + "---|---|"]
        for estimator, options, ckpt in CONFIGS:
            label = config_label(estimator, options, ckpt)
            cells = []
            for batch, autocast in [(b, True) for b in batches] + [(1, False)]:
                row = next(r for r in rows if r["model"] == arch and r["config"] == label
                           and r["batch_size"] == batch and r["autocast"] == autocast)
                cells.append(f"{row['peak_gb']:.1f} / {row['fits_gb']}")
            run = measured.get((arch, label, 1))
            gpu_cell = f"{run['cuda_peak_gb']:.1f} GB, {run['seconds_per_estimate']:.1f} s" if run else "pending"
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {gpu_cell} |")
        lines.append("")
    a1 = anchor["1"]
    lines += ["## Per-step memory vs the paper (SD 1.5, 512 px, fp16, CFG: UNet batch 2)", "",
              "| batch | HO step graph GB (SDPA) | HO step graph GB (eager attention) | FO (step + decode + reward) GB "
              "| ZO / sampling step working set GB |",
              "|---|---|---|---|---|"]
    for b in (key for key in anchor if key.isdigit()):
        a = anchor[b]
        lines.append(f"| {b} | {a['ho_step_gb']:.2f} | {a['ho_step_gb_eager_attention']:.2f} | {a['fo_gb']:.2f} "
                     f"| {a['zo_step_gb']:.2f} |")
    lines += ["", f"Paper (SD 1.4, batch and precision not stated): about 8 GB per HO step vs 0.24 GB per ZO step; "
              f"ours at batch 1: {a1['ho_step_gb']:.2f} GB (SDPA) / {a1['ho_step_gb_eager_attention']:.2f} GB (eager "
              f"attention) vs {a1['zo_step_gb']:.2f} GB. A ZO step keeps no graph here: its cost is the working set "
              "of one no-grad UNet call, not a per-step accumulation.", ""]
    if cpu:
        lines += ["## Real CPU run (measured)", "", f"Command: `{cpu['command']}`", "",
                  "| what | value |", "|---|---|"]
        for key in ("model", "settings", "seconds", "peak_rss_gb", "rss_growth_gb", "graph_gb_measured",
                    "graph_gb_predicted", "peak_gb_predicted"):
            lines.append(f"| {key} | {cpu[key]} |")
        lines.append("")
    if gpu:
        lines += measured_markdown(gpu)
    lines.append("GPU column: " + ("measured by benchmarks/gpu_check.sh on " + gpu.get("device", "?") if gpu
                                   else "pending (no CUDA machine was available; run benchmarks/gpu_check.sh)"))
    return "\n".join(lines) + "\n"


def measured_markdown(gpu: dict) -> list[str]:
    """Every measured run of gpu.json: CUDA peak against the predicted peak, seconds against a sampling pass."""
    lines = [f"## Measured on {gpu.get('device', '?')} (batch 1, T = {gpu.get('num_steps', '?')}, torch "
             f"{gpu.get('torch', '?')})", "",
             "| model | config | CUDA peak GB | predicted peak GB | graph GB measured / predicted "
             "| s per estimate | s per sampling pass | estimate / sampling |",
             "|---|---|---|---|---|---|---|---|"]
    for run in gpu.get("runs", []):
        if "error" in run:
            lines.append(f"| {run['model']} | {run['config']} | failed: {run['error'][:80]} | "
                         f"{run.get('peak_gb_predicted', '?')} | | | | |")
            continue
        lines.append(f"| {run['model']} | {run['config']} | {run['cuda_peak_gb']:.2f} | {run['peak_gb_predicted']:.2f} "
                     f"| {run['graph_gb_measured']:.2f} / {run['graph_gb_predicted']:.2f} "
                     f"| {run['seconds_per_estimate']:.2f} | {run['seconds_per_sampling_pass']:.2f} "
                     f"| {run.get('estimate_over_sampling', 0):.2f} |")
    return lines + [""]


# --------------------------------------------------------------------------------------------
# Real runs
# --------------------------------------------------------------------------------------------


def model_dir(arch: str, root: Path, width_divisor: int = 1, image_size: int | None = None) -> Path:
    """A random-init diffusers folder of ``arch`` under ``root`` (written once, bf16 weights)."""
    from rlr_core.sd_arch import write_pipeline

    path = root / f"{arch}-w{width_divisor}-{image_size or 'native'}"
    if not (path / "rlr_studio.json").is_file():
        write_pipeline(arch, path, width_divisor=width_divisor, image_size=image_size, dtype="bfloat16")
    return path


def cpu_run(args: argparse.Namespace) -> dict:
    """One RLR estimate on the SD 1.5 architecture at 512 px on CPU (T = 4, batch 1, aesthetic reward)."""
    import psutil

    from rlr_core.diffusers_chain import load_model
    from rlr_core.estimators import get_estimator
    from sd_reward_arch import random_aesthetic_reward

    torch.set_num_threads(max(1, args.threads))
    path = model_dir("sd15", Path(args.model_root))
    rss0 = psutil.Process().memory_info().rss
    chain = load_model(str(path), num_steps=4, lora_rank=4, device="cpu", dtype=args.cpu_dtype,
                       gradient_checkpointing=args.cpu_ckpt)
    reward = random_aesthetic_reward(device="cpu")
    estimator = get_estimator("rlr", h=args.cpu_h, antithetic=False, baseline="none")
    pred = mm.predict(chain, "rlr", 1, reward=reward, h=args.cpu_h)
    start = time.perf_counter()
    result = estimator.estimate(chain, reward, ["a photo of a lighthouse at dawn"], torch.Generator().manual_seed(0))
    seconds = time.perf_counter() - start
    # the estimate's MemoryMeter resets the kernel's peak mark when it starts (Linux): this is the peak while
    # the estimate ran, the loaded weights included, not the loading's own transient
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    settings = (f"T=4, batch 1, h={args.cpu_h}, antithetic=false, baseline=none, dtype={args.cpu_dtype}, "
                f"gradient_checkpointing={args.cpu_ckpt}, SDPA, CFG 7.5, LoRA r4, {torch.get_num_threads()} threads")
    return {
        "command": (f"python benchmarks/sd_scale.py --cpu-run --cpu-h {args.cpu_h} --cpu-dtype {args.cpu_dtype} "
                    f"--cpu-ckpt {args.cpu_ckpt} --threads {args.threads}"),
        "model": "sd15 architecture, random init (rlr_core.sd_arch), 512 px; reward: aesthetic, random ViT-L-14 + real LAION head",
        "settings": settings,
        "seconds": round(seconds, 1),
        "peak_rss_gb": round(peak_rss / mm.GB, 2),
        "rss_before_load_gb": round(rss0 / mm.GB, 2),
        "rss_growth_gb": round(result.peak_memory_mb / 1024, 2),
        "graph_gb_measured": round(result.graph_memory_mb / 1024, 3),
        "graph_gb_predicted": round(pred.graph_gb, 3),
        "peak_gb_predicted": round(pred.peak_gb, 2),
        "peak_gb_predicted_note": "weights + activation graph + working set + recompute; compare with peak_rss_gb - rss_before_load_gb",
        "finite_gradient": bool(torch.isfinite(result.total).all()),
    }


# What --measure runs besides rlr h = 1..4: (estimator, options, gradient checkpointing). full-bp and alignprop
# only with checkpointing (without, SD 1.5 at T = 50 predicts > 100 GB); zo needs an even batch (not measured).
MEASURED_BASELINES: tuple[tuple[str, dict, bool], ...] = (
    ("truncated-bp", {"k": 1}, False), ("truncated-bp", {"k": 2}, False), ("full-bp", {}, True),
    ("ddpo", {"baseline": "none"}, False), ("alignprop", {}, True),
    ("draft-lv", {}, False), ("refl", {}, False),
)


def measured_configs(hs: tuple, baselines: bool) -> list[tuple[str, dict, bool]]:
    """The (estimator, options, checkpointing) triples of --measure: rlr at batch 1 (no antithetic twin, no
    baseline: one trajectory) for every h, with and without checkpointing, then the baselines."""
    rlr = [("rlr", {"h": h, "antithetic": False, "baseline": "none"}, ckpt) for ckpt in (False, True) for h in hs]
    return rlr + (list(MEASURED_BASELINES) if baselines else [])


def measured_label(estimator: str, options: dict, ckpt: bool) -> str:
    """The table label of a measured config (batch-1 settings such as antithetic=False left out)."""
    shown = {k: v for k, v in options.items() if k not in ("antithetic", "baseline")}
    return config_label(estimator, shown, ckpt)


def measure(args: argparse.Namespace) -> dict:
    """Real runs for gpu.json: per model and config, CUDA peak allocated (CPU: peak RSS of the process), seconds
    per estimate and per plain sampling pass at batch 1. gpu.json is rewritten after every run, so a run cut
    short keeps what it measured; a config that fails (out of memory) is recorded with its error."""
    from rlr_core.diffusers_chain import load_model
    from rlr_core.estimators import get_estimator
    from rlr_core.rewards import get_reward
    from rlr_core.sampling import sample
    from sd_reward_arch import random_aesthetic_reward

    device = torch.device(args.device)
    models = [("sd15", 64)] if args.tiny else [m for m in MODELS if m[0] in args.models]
    steps = 4 if args.tiny else args.steps
    hs = (1, 2) if args.tiny else tuple(args.h)
    configs = measured_configs(hs, args.baselines)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result_file = Path(args.out) / ("gpu_tiny.json" if args.tiny else "gpu.json")
    report = {"device": name, "tiny": bool(args.tiny), "torch": torch.__version__, "num_steps": steps, "runs": []}
    prompt = ["a photo of a lighthouse at dawn"]

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for arch, size in models:
        path = model_dir(arch, Path(args.model_root), width_divisor=20 if args.tiny else 1,
                         image_size=size if args.tiny else None)
        for ckpt in (False, True):
            chain = load_model(str(path), num_steps=steps, lora_rank=4, device=str(device),
                               dtype="float32" if args.tiny else "float16", autocast=not args.tiny,
                               gradient_checkpointing=ckpt)
            reward = (get_reward("saturation") if args.tiny
                      else random_aesthetic_reward(head_path=args.head, device=device))
            sample(chain, prompt, torch.Generator().manual_seed(0))  # warm-up (kernels, allocator)
            synchronize()
            start = time.perf_counter()
            sample(chain, prompt, torch.Generator().manual_seed(0))
            synchronize()
            sample_seconds = time.perf_counter() - start
            for estimator_name, options, config_ckpt in configs:
                if config_ckpt != ckpt:
                    continue
                run = {"model": arch, "image_size": chain.image_size[0],
                       "config": measured_label(estimator_name, options, ckpt), "estimator": estimator_name,
                       "options": options, "batch_size": 1, "num_steps": steps,
                       "dtype": str(chain.dtype).replace("torch.", ""),
                       "seconds_per_sampling_pass": round(sample_seconds, 3)}
                try:
                    estimator = get_estimator(estimator_name, **options)
                    pred = mm.predict(chain, estimator, 1, reward=reward)
                    run.update(graph_gb_predicted=round(pred.graph_gb, 4), peak_gb_predicted=round(pred.peak_gb, 3))
                    if device.type == "cuda":
                        synchronize()
                        torch.cuda.reset_peak_memory_stats(device)
                    start = time.perf_counter()
                    result = estimator.estimate(chain, reward, prompt, torch.Generator().manual_seed(0))
                    synchronize()
                    seconds = time.perf_counter() - start
                    if device.type == "cuda":  # absolute peak: weights, LoRA grads, graph, workspace
                        peak = torch.cuda.max_memory_allocated(device)
                    else:
                        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
                    run.update(cuda_peak_gb=round(peak / mm.GB, 3),
                               graph_gb_measured=round(result.graph_memory_mb / 1024, 4),
                               seconds_per_estimate=round(seconds, 3),
                               estimate_over_sampling=round(seconds / sample_seconds, 2),
                               finite_gradient=bool(torch.isfinite(result.total).all()))
                    del result
                except Exception as error:  # noqa: BLE001 - an OOM of one config must not lose the others
                    run["error"] = f"{type(error).__name__}: {str(error)[:300]}"
                report["runs"].append(run)
                print(json.dumps(run), flush=True)
                result_file.write_text(json.dumps(report, indent=2), encoding="utf-8")
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            del chain, reward
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(OUT_DIR), help="output folder (default benchmarks/results/sd-scale)")
    p.add_argument("--steps", type=int, default=50, help="T of the table and of --measure")
    p.add_argument("--cpu-run", action="store_true", help="also run one real RLR estimate at 512 px on CPU")
    p.add_argument("--cpu-h", type=int, default=1)
    p.add_argument("--cpu-dtype", default="bfloat16", help="base weights of --cpu-run (LoRA stays float32)")
    p.add_argument("--cpu-ckpt", type=lambda s: s.lower() in ("1", "true", "yes"), default=True)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads of --cpu-run (1: shared CPUs)")
    p.add_argument("--measure", action="store_true", help="real runs (CUDA: gpu_check.sh) -> gpu.json")
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="with --measure: a reduced SD-shaped model (smoke test)")
    p.add_argument("--h", type=int, nargs="+", default=[1, 2, 3, 4])
    p.add_argument("--baselines", action="store_true",
                   help="with --measure: also the baselines (truncated-bp, full-bp, ddpo, alignprop, draft-lv, refl)")
    p.add_argument("--head", default=None, help="LAION aesthetic head file (default: sd_reward_arch.LAION_HEAD_PATH)")
    p.add_argument("--models", nargs="+", default=[arch for arch, _ in MODELS], choices=[arch for arch, _ in MODELS],
                   help="architectures of the predicted table")
    p.add_argument("--batches", type=int, nargs="+", default=list(BATCHES), help="batch sizes of the predicted table")
    p.add_argument("--model-root", default=os.environ.get("RLR_SD_ARCH_DIR", "/tmp/rlr-sd-arch"),
                   help="where random-init SD folders are written once")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.measure:
        measure(args)
        if args.tiny:
            return
    cpu_file = out / "cpu_run.json"
    if args.cpu_run:
        cpu_file.write_text(json.dumps(cpu_run(args), indent=2), encoding="utf-8")
    models = tuple((arch, size) for arch, size in MODELS if arch in args.models)
    batches = tuple(args.batches)
    rows = predicted_rows(args.steps, models, batches)
    anchor = anchors(batches)
    cpu = json.loads(cpu_file.read_text()) if cpu_file.is_file() else None
    gpu_file = out / "gpu.json"
    gpu = json.loads(gpu_file.read_text()) if gpu_file.is_file() else None
    (out / "predicted.json").write_text(json.dumps({"rows": rows, "anchors": anchor, "budgets_gb": BUDGETS_GB,
                                                    "cuda_overhead_gb": mm.CUDA_OVERHEAD_GB}, indent=2), encoding="utf-8")
    text = markdown(rows, anchor, gpu, cpu, models, batches)
    (out / "sd_scale.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
