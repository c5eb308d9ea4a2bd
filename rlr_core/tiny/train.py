"""Train the bundled tiny text-to-image model on procedural shapes (CPU, resumable in chunks).

    python -m rlr_core.tiny.train --out assets/tiny-shapes [--steps N] [--minutes M] [--resume]

Data are a pure function of the step (batch k uses seeds k*B .. k*B+B-1, noise seeded by k), so a
resumed run reproduces an uninterrupted one. Checkpoints (model, EMA, optimizer, step, elapsed
time) go to ``--ckpt`` every ``--ckpt-minutes``; the EMA weights are exported to ``--out`` every
``--export-minutes`` and at the end; the loss goes to ``<ckpt>/loss.csv``.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import time
from pathlib import Path

import torch


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="assets/tiny-shapes")
    p.add_argument("--ckpt", default=None, help="checkpoint folder (resumable state; default runs/<out's name>-train, "
                                                "runs/<out's name>-finetune with --init)")
    p.add_argument("--steps", type=int, default=6000, help="total optimizer steps")
    p.add_argument("--minutes", type=float, default=None, help="stop this chunk after M minutes")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--decay-start", type=int, default=4600,
                   help="step from which the learning rate decays linearly to --lr-final at --steps")
    p.add_argument("--lr-final", type=float, default=4e-5)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--prediction", default="v_prediction", choices=["v_prediction", "epsilon"])
    p.add_argument("--weighting", default="plain", choices=["eps", "min-snr", "plain"],
                   help="per-timestep loss weight, in the units of the prediction: 'eps' = the "
                        "epsilon-MSE weighting (v: alpha_bar = SNR/(1+SNR), keeps the low-noise steps "
                        "where edges and corners form at full weight), 'min-snr' = min(SNR, gamma) in x0 "
                        "units (Hang et al. 2023; down-weights the low-noise steps), 'plain' = unweighted "
                        "MSE of the prediction. 'eps' and 'min-snr' are floored at --snr-floor")
    p.add_argument("--min-snr", type=float, default=5.0, help="gamma of --weighting min-snr")
    p.add_argument("--snr-floor", type=float, default=0.2,
                   help="lower bound of the weight (v-prediction with zero terminal SNR must still "
                        "learn the t=999 step, whose epsilon weight is 0)")
    p.add_argument("--offset-noise", type=float, default=0.0)
    p.add_argument("--cfg-dropout", type=float, default=0.1, help="fraction of empty captions")
    p.add_argument("--generic-shape", type=float, default=0.0,
                   help="fraction of captions whose shape word becomes 'shape' ('a red shape on a white background'): "
                        "the model learns that such a caption fits any shape, so its drawings of it vary in shape")
    p.add_argument("--init", default=None,
                   help="start from the weights of an exported model folder instead of random ones (a fine-tuning "
                        "run: its steps count from 0; its data seeds are those of the same steps of the first run)")
    p.add_argument("--export-only", action="store_true", help="export the EMA weights of the checkpoint and exit")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ckpt-minutes", type=float, default=3.0)
    p.add_argument("--export-minutes", type=float, default=6.0)
    p.add_argument("--guidance", type=float, default=3.0, help="default guidance written to rlr_studio.json")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def lr_at(args, step: int) -> float:
    """Linear warm-up, constant, then (optionally) linear decay to ``lr_final`` at ``steps``."""
    lr = args.lr * min(1.0, (step + 1) / args.warmup)
    if args.decay_start is not None and step >= args.decay_start:
        frac = min(1.0, (step - args.decay_start) / max(args.steps - args.decay_start, 1))
        lr = args.lr + frac * (args.lr_final - args.lr)
    return lr


def loss_weights(alphas_cumprod: torch.Tensor, args) -> torch.Tensor:
    """Per-timestep weight of the squared prediction error (see ``--weighting``).

    With v = sqrt(a) eps - sqrt(1-a) x0 and x_t fixed, an error dv of the v prediction is an error
    sqrt(a) dv of eps and sqrt(1-a) dv of x0, so in v units the eps-MSE weight is a = SNR/(1+SNR)
    and the x0-MSE weight is 1-a = 1/(1+SNR)."""
    a = alphas_cumprod.double()
    snr = a / (1 - a).clamp_min(1e-12)
    v = args.prediction == "v_prediction"
    if args.weighting == "plain":
        return torch.ones_like(a).float()
    if args.weighting == "eps":
        w = a if v else torch.ones_like(a)
    else:  # min-snr: min(SNR, gamma) in x0 units, converted to the prediction's units
        x0_weight = torch.minimum(snr, torch.full_like(snr, args.min_snr))
        w = x0_weight * (1 - a) if v else x0_weight / snr.clamp_min(1e-12)
    return w.clamp_min(args.snr_floor).float()


RECIPE_KEYS = ("steps", "decay_start", "weighting", "batch", "lr", "lr_final", "warmup", "ema", "prediction",
               "min_snr", "snr_floor", "offset_noise", "cfg_dropout", "seed", "generic_shape", "init")


def _recipe(args: dict) -> dict:
    """The arguments that change the weights (not paths, threads or checkpoint timing); a key an older
    checkpoint's arguments lack had its default value then."""
    defaults = vars(parse_args([]))
    return {k: args.get(k, defaults[k]) for k in RECIPE_KEYS}


def _command(out: str, phase: dict, resume: bool) -> str:
    defaults = _recipe(vars(parse_args([])))
    flags = [f"--{k.replace('_', '-')} {phase[k]}" for k in RECIPE_KEYS
             if k in ("steps", "decay_start", "weighting") or phase[k] != defaults[k]]
    return " ".join(["python -m rlr_core.tiny.train", f"--out {out}", *flags] + (["--resume"] if resume else []))


def _commands(out: str, phases: list[dict]) -> list[str]:
    """Commands that reproduce a run, one per phase: a phase that a later one replaced ends at the
    step where that one began (its learning rate had not started to decay there)."""
    cmds = []
    for i, ph in enumerate(phases):
        if i + 1 < len(phases):
            ph = dict(ph, steps=phases[i + 1]["from_step"])
        cmds.append(_command(out, ph, resume=i > 0))
    return cmds


def _save_atomic(obj, path: Path):
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _history(init: str | None) -> dict:
    """The trained steps, minutes and commands of the model a fine-tune starts from (nothing for a fresh run)."""
    history = {"trained_steps": 0, "trained_minutes": 0.0, "train_commands": []}
    if init:
        meta = json.loads((Path(init) / "rlr_studio.json").read_text())
        history = {key: meta.get(key, value) for key, value in history.items()}
    return history


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    import numpy as np

    from .data import generic_caption, make_batch
    from .model import DEFAULTS, build_models, encode, export, load

    ckpt_dir = Path(args.ckpt or f"runs/{Path(args.out).name}-{'finetune' if args.init else 'train'}")
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    unet, text_encoder, tokenizer, scheduler = build_models(args.prediction, tokenizer_dir=str(ckpt_dir / "tokenizer"))
    state_path = ckpt_dir / "state.pt"
    resuming = args.resume and state_path.exists()
    if args.init and not resuming:  # a fine-tune starts from the exported weights (a resumed one from its checkpoint)
        init_unet, init_text, *_ = load(args.init)
        unet.load_state_dict(init_unet.state_dict())
        text_encoder.load_state_dict(init_text.state_dict())
    earlier = _history(args.init)
    params = [p for p in list(unet.parameters()) + list(text_encoder.parameters())]
    emb = text_encoder.get_input_embeddings().weight
    groups = [{"params": [p for p in params if p is not emb], "weight_decay": 0.01},
              {"params": [emb], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.99))
    ema_unet, ema_text = copy.deepcopy(unet).eval(), copy.deepcopy(text_encoder).eval()
    for p in list(ema_unet.parameters()) + list(ema_text.parameters()):
        p.requires_grad_(False)
    step, elapsed = 0, 0.0
    phases: list[dict] = []
    if resuming:
        st = torch.load(state_path, map_location="cpu", weights_only=False)
        unet.load_state_dict(st["unet"]); text_encoder.load_state_dict(st["text"])
        ema_unet.load_state_dict(st["ema_unet"]); ema_text.load_state_dict(st["ema_text"])
        opt.load_state_dict(st["opt"])
        step, elapsed = st["step"], st["elapsed"]
        earlier = st.get("earlier", earlier)  # as read at the start: a fine-tune in place has overwritten --init since
        # phases saved by an older version lack some recipe keys: those were the saved args' values
        phases = [{**_recipe(st["args"]), **ph} for ph in st.get("phases") or [{"from_step": 0}]]
        print(f"resumed at step {step} ({elapsed / 60:.1f} min trained)", flush=True)
    elif state_path.exists():
        raise SystemExit(f"{state_path} exists: pass --resume or choose another --ckpt")
    (ckpt_dir / "args.json").write_text(json.dumps(vars(args), indent=2))
    if not args.export_only and (not phases or _recipe(vars(args)) != {k: v for k, v in phases[-1].items()
                                                                       if k != "from_step"}):
        phases.append({"from_step": step, **_recipe(vars(args))})  # a resumed run may change the recipe

    w = loss_weights(scheduler.alphas_cumprod.float(), args)

    log_path = ckpt_dir / "loss.csv"
    new_log = not log_path.exists() or not args.resume
    if not new_log:  # drop rows logged after the checkpoint (the resumed run redoes those steps)
        rows = log_path.read_text().splitlines(keepends=True)
        log_path.write_text("".join(r for r in rows if not r[:1].isdigit() or int(r.split(",")[0]) <= step))
    log_f = open(log_path, "w" if new_log else "a", newline="")
    log = csv.writer(log_f)
    if new_log:
        log.writerow(["step", "loss", "lr", "sec_per_step", "elapsed_min"])

    def save_state():
        log_f.flush()
        _save_atomic({"unet": unet.state_dict(), "text": text_encoder.state_dict(),
                      "ema_unet": ema_unet.state_dict(), "ema_text": ema_text.state_dict(),
                      "opt": opt.state_dict(), "step": step, "elapsed": elapsed, "args": vars(args),
                      "phases": phases, "earlier": earlier}, state_path)

    def do_export():
        defaults = dict(DEFAULTS, guidance_scale=args.guidance)
        export(args.out, ema_unet, ema_text, tokenizer, scheduler, defaults=defaults,
               extra={"trained_steps": earlier["trained_steps"] + step,
                      "trained_minutes": round(earlier["trained_minutes"] + elapsed / 60, 1),
                      "train_commands": earlier["train_commands"] + _commands(args.out, phases)})
        log_f.flush()
        try:  # loss curve next to the weights (model card)
            from .report import plot_loss

            plot_loss(log_path, Path(args.out) / "loss.png")
        except Exception as exc:  # noqa: BLE001 - a plot must never stop training
            print(f"loss plot failed: {exc}", flush=True)
        print(f"exported EMA weights at step {step} to {args.out}", flush=True)

    if args.export_only:
        if not (args.resume and step > 0):
            raise SystemExit("--export-only needs --resume and a checkpoint")
        do_export()
        return

    chunk_start = time.time()
    last_ckpt = last_export = time.time()
    unet.train(); text_encoder.train()
    running = None
    while step < args.steps:
        if args.minutes is not None and time.time() - chunk_start > args.minutes * 60:
            break
        t0 = time.time()
        B = args.batch
        x0, caps, samples = make_batch(range(step * B, step * B + B))
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        drop = torch.rand(B, generator=g) < args.cfg_dropout
        caps = ["" if d else c for c, d in zip(caps, drop.tolist())]
        if args.generic_shape > 0:  # drawn apart from g, so that a run without it draws the noise it always did
            generic = np.random.default_rng([args.seed, step, 11]).random(B) < args.generic_shape
            caps = [generic_caption(s) if pick and c else c for c, s, pick in zip(caps, samples, generic)]
        x0 = torch.from_numpy(x0) * 2 - 1
        noise = torch.randn(x0.shape, generator=g)
        if args.offset_noise > 0:
            noise = noise + args.offset_noise * torch.randn(B, 3, 1, 1, generator=g)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (B,), generator=g)
        xt = scheduler.add_noise(x0, noise, t)
        target = scheduler.get_velocity(x0, noise, t) if args.prediction == "v_prediction" else noise
        lr = lr_at(args, step)
        for gr in opt.param_groups:
            gr["lr"] = lr
        hidden = encode(text_encoder, tokenizer, caps)
        pred = unet(xt, t, encoder_hidden_states=hidden).sample
        per = ((pred.float() - target) ** 2).mean(dim=(1, 2, 3))
        loss = (per * w[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(list(ema_unet.parameters()) + list(ema_text.parameters()), params):
                e.lerp_(p, 1 - decay)
        step += 1
        dt = time.time() - t0
        elapsed += dt
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        log.writerow([step, f"{loss.item():.5f}", f"{lr:.2e}", f"{dt:.3f}", f"{elapsed / 60:.2f}"])
        if step % 25 == 0:
            log_f.flush()
            print(f"step {step} loss {running:.4f} {dt:.2f}s/step elapsed {elapsed / 60:.1f} min", flush=True)
        if time.time() - last_ckpt > args.ckpt_minutes * 60:
            save_state(); last_ckpt = time.time()
        if time.time() - last_export > args.export_minutes * 60:
            do_export(); last_export = time.time()
    save_state()
    do_export()
    log_f.close()
    print(f"done: step {step}, {elapsed / 60:.1f} min of training", flush=True)


if __name__ == "__main__":
    main()
