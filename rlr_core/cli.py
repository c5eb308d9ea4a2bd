"""``rlr-train``: run the Trainer headless from a config file.

    rlr-train --print-config > run.yaml            # a default config to edit
    rlr-train --config run.yaml                    # train; metrics, images and LoRA go to output_dir
    rlr-train --config run.yaml --resume --steps 200   # continue from the newest checkpoint
    rlr-train --config run.yaml --set lr=5e-4 --set estimator_options.h=3

Data parallel: ``torchrun --nproc_per_node N -m rlr_core.cli --config run.yaml`` (or
``accelerate launch --multi_gpu --num_processes N -m rlr_core.cli ...``) trains on N processes
(rlr_core.distributed); rank 0 alone shows progress and writes files.

Exit codes: 0 success (also after Ctrl-C, which stops after the current iteration and saves),
2 bad config or command line (the message names the field), 1 a failure while training (the
LoRA trained so far is saved first).
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any, Sequence

from .config import TrainConfig, parse_yaml

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_CONFIG = 2


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``rlr-train``."""
    parser = argparse.ArgumentParser(
        prog="rlr-train",
        description="Fine-tune a text-to-image diffusion model against a reward (RLR Studio, headless).",
    )
    parser.add_argument("--config", metavar="FILE", help="config file (.yaml, .yml or .json)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in output_dir")
    parser.add_argument("--output-dir", metavar="DIR", help="override output_dir")
    parser.add_argument("--steps", type=int, metavar="N", help="override steps (total iterations, >= 1)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field (VALUE is parsed as YAML; KEY may be reward_options.NAME or estimator_options.NAME); repeatable",
    )
    parser.add_argument(
        "--print-config",
        nargs="?",
        const="-",
        metavar="FILE",
        help="write the default config as YAML to FILE (or stdout) and exit",
    )
    guard = parser.add_argument_group("reward-hacking guard (docs/guard.md)")
    guard.add_argument("--keep-best", action=argparse.BooleanOptionalAction, default=None,
                       help="export the LoRA of the best guarded evaluation (the last goes to output_dir/lora-last)")
    guard.add_argument("--early-stop-patience", type=int, metavar="N",
                       help="end after N evaluations without a better guarded score (0 = never)")
    guard.add_argument("--guard-tolerance", type=float, metavar="F",
                       help="refuse evaluations whose held-out reward fell more than F x |base| below the base's")
    guard.add_argument("--min-diversity", type=float, metavar="F",
                       help="refuse evaluations whose diversity (base model = 1.0) is below F (0 = off)")
    guard.add_argument("--heldout-reward", metavar="NAME", help="the held-out reward: auto, none or a reward name")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    return parser


def apply_overrides(config: TrainConfig, assignments: Sequence[str]) -> TrainConfig:
    """Apply ``key=value`` strings (values parsed as YAML, like a config file) and return the config.

    The result is not validated yet (``rlr_core.run.check_config`` checks it once all overrides are in).
    """
    data = config.to_dict()
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {assignment!r}")
        try:
            value = parse_yaml(raw) if raw.strip() else ""
        except ValueError as error:
            raise ValueError(f"--set {key}: value {raw!r}: {error}") from None
        if "." in key:
            parent, child = key.split(".", 1)
            if parent not in ("reward_options", "estimator_options"):
                raise ValueError(
                    f"--set {key}: only reward_options.NAME and estimator_options.NAME take a dotted key"
                )
            data[parent] = dict(data[parent], **{child: value})
        else:
            data[key] = value
    return TrainConfig.from_dict(data, validate=False)


def load_config(args: argparse.Namespace) -> TrainConfig:
    """The config of a command line: file, then ``--set``, ``--output-dir``, ``--steps``, ``--resume``, the guard's
    flags; not
    validated yet (``main`` checks it once, with ``rlr_core.run.check_config``)."""
    config = TrainConfig.from_file(args.config, validate=False)
    config = apply_overrides(config, args.set)
    if args.output_dir is not None:
        config.output_dir = args.output_dir
    if args.steps is not None:
        config.steps = args.steps
    if args.resume:
        config.resume = True
    for name in GUARD_FLAGS:
        value = getattr(args, name, None)
        if value is not None:
            setattr(config, name, value)
    return config


GUARD_FLAGS = ("keep_best", "early_stop_patience", "guard_tolerance", "min_diversity", "heldout_reward")
"""Config fields with their own rlr-train flag (``--keep-best``, ``--early-stop-patience``, ...)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``rlr-train``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)

    if args.print_config is not None:
        text = TrainConfig().to_yaml()
        if args.print_config == "-":
            sys.stdout.write(text)
        else:
            TrainConfig().save(args.print_config)
            print(f"wrote {args.print_config}", file=sys.stderr)
        return EXIT_OK
    if not args.config:
        parser.print_usage(sys.stderr)
        print("rlr-train: error: --config FILE is required (or --print-config to get one)", file=sys.stderr)
        return EXIT_BAD_CONFIG

    from . import distributed
    from .hub import WeightsUnavailableError
    from .run import TrainingRun, check_config
    from .trainer import TrainingStepError

    try:  # fields, tracker and output_dir, once, before the model loads: minutes lost otherwise
        config = check_config(load_config(args))
    except ValueError as error:
        return _bad_config(error)

    try:  # several processes (torchrun / accelerate launch): join them; nothing for one process
        world = distributed.init_from_env(config.device)
    except Exception as error:
        print(f"{_prog()}: error: could not join the other processes: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_FAILED
    config.device = distributed.process_device(config.device)
    quiet = args.quiet or not world.is_main  # progress and log lines on rank 0 only

    try:
        trainer = TrainingRun.from_config(config, checked=True).trainer
    except (ValueError, WeightsUnavailableError) as error:  # bad field, or the model cannot be fetched
        return _bad_config(error)
    except Exception as error:
        print(f"{_prog()}: error: could not set up the run: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_FAILED

    previous_handler = _install_sigint(trainer, quiet)
    if world.distributed:
        _install_sigterm()
    try:
        _train(trainer, config, quiet=quiet)
    except TrainingStepError as error:
        hint = ""
        if world.distributed:
            hint = ("; with several processes the first one to fail names the cause, the others stop "
                    "because they lost it")
        print(f"{_prog()}: error: {error}{hint}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGINT, previous_handler)
        trainer.tracker.close()
    distributed.shutdown()
    return EXIT_OK


def _train(trainer: Any, config: TrainConfig, quiet: bool) -> None:
    """Consume ``trainer.run()``: progress bar, log lines, evaluation PNG grids."""
    from tqdm import tqdm

    output = Path(config.output_dir)
    last = None
    # the bar shows from the start: loading a checkpoint or the "before" images take a while
    bar = tqdm(total=config.steps, desc="rlr-train", unit="it", disable=quiet)
    bar.set_postfix_str("before images (LoRA off), then iteration 1" if not config.resume else "resuming")
    try:
        for report in trainer.run():
            if last is None:
                bar.n = report.step - 1  # a resumed run starts later
                bar.refresh()
                if report.before_images:
                    _save_grid(report.before_images, output / "eval" / "before.png")
            if report.eval_images:
                _save_grid(report.eval_images, output / "eval" / f"step-{report.step:06d}.png")
            bar.update(1)
            bar.set_postfix(reward=f"{report.reward_mean:.4g}", skipped="yes" if report.skipped else "no")
            if not quiet and (report.step % config.log_every == 0 or report.skipped or report.step == config.steps):
                bar.write(_log_line(report))
            last = report
    finally:
        bar.close()
    if not quiet:
        done = last.step if last is not None else trainer.step
        kept = ""
        if config.keep_best:
            kept = f" (kept: {trainer.guard.kept_reason}; the last iteration's LoRA: {output / 'lora-last'})"
        print(
            f"rlr-train: {done}/{config.steps} iterations; metrics {output / 'metrics.jsonl'}, "
            f"LoRA {output / 'lora'}{kept}",
            file=sys.stderr,
        )


def _log_line(report: Any) -> str:
    parts = [f"step {report.step}/{report.total_steps}", f"reward {report.reward_mean:.4g} ± {report.reward_std:.3g}"]
    if report.grad_norms:
        parts.append("grad " + " ".join(f"{k}={v:.3g}" for k, v in report.grad_norms.items()))
    parts.append(f"update {report.update_norm:.3g}")
    if report.eval_reward_mean is not None:
        parts.append(f"eval {report.eval_reward_mean:.4g}")
        parts.extend(f"{name} {value:.4g}" for name, value in
                     (("heldout", report.heldout_reward), ("diversity", report.diversity), ("kl", report.kl))
                     if value is not None)
        if report.guard and report.guard.get("refused"):
            parts.append("guard refused: " + "; ".join(report.guard["refused"]))
    if report.skipped:
        parts.append(f"SKIPPED ({report.skipped})")
    if report.message:
        parts.append(report.message)
    return " | ".join(parts)


def _save_grid(images: list[Any], path: Path) -> None:
    from .images import image_grid

    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images).save(path)


def _bad_config(error: Exception) -> int:
    print(f"{_prog()}: error: bad config: {error}", file=sys.stderr)
    return EXIT_BAD_CONFIG


def _prog() -> str:
    """``rlr-train``, with ``(rank r of N)`` when a launcher started several processes."""
    from .distributed import launched_world

    label = launched_world().label()
    return f"rlr-train ({label})" if label else "rlr-train"


class LauncherStopped(RuntimeError):
    """The launcher sent SIGTERM (another process failed, or the job was cancelled)."""


def _install_sigterm() -> None:
    """SIGTERM (torchrun stops the other processes when one fails) becomes an exception, so the
    Trainer saves the LoRA of the last completed iteration before the process ends; while a failure
    is already being handled (saving) it is ignored (the launcher kills the process after its grace period)."""

    def handler(signum: int, frame: Any) -> None:
        if sys.exc_info()[1] is not None:  # already handling a failure: let it save the LoRA
            return
        raise LauncherStopped("stopped by the launcher (SIGTERM): another process failed or the job was cancelled")

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        pass


def _install_sigint(trainer: Any, quiet: bool) -> Any:
    """First Ctrl-C: stop after the current iteration (the LoRA is saved); second: interrupt."""
    try:
        previous = signal.getsignal(signal.SIGINT)
    except ValueError:  # not the main thread
        return None
    if previous is None:  # installed outside Python
        previous = signal.default_int_handler

    def handler(signum: int, frame: Any) -> None:
        if trainer.stop_requested:
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        trainer.stop()
        if not quiet:
            print("\nrlr-train: stopping after this iteration (Ctrl-C again to interrupt)", file=sys.stderr)

    try:
        signal.signal(signal.SIGINT, handler)
    except ValueError:
        return None
    return previous


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
