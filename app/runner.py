"""What the app does, without Gradio: runs (built by ``rlr_core.run.TrainingRun``), training
streams, preference rounds, diagnostics, export, generation. Every computation is a call into
``rlr_core``; this module only orchestrates (which run, which lock, which files) and reports bad
input as ``FieldError`` naming the form's field.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Iterator

from rlr_core.cancel import cancellable
from rlr_core.config import MAX_SEED, TrainConfig
from rlr_core.hub import WeightsUnavailableError
from rlr_core.images import to_pil
from rlr_core.rewards import default_clip_model
from rlr_core.rewards.preference import ClickLog, ClickReward, PreferenceReward, PreferenceSession
from rlr_core.run import TrainingRun
from rlr_core.sampling import sample
from rlr_core.trainer import TrainingStepError

from . import formatting, state
from .form import FORM_DEFAULTS, config_from_form, field_error, form_from_config, parse_int, parse_seed
from .settings import caps
from .state import FieldError, Run

PREFERENCE_MODES = ("direct", "learned")


# ----------------------------------------------------------------------------------- runs
def create_run(session: str, config: TrainConfig, hosted: bool, continue_lora: bool = False,
               reward: Any = None, kind: str = "train", run_id: str | None = None) -> Run:
    """Build the session's new run: the cached model, then ``TrainingRun.from_config`` (reward,
    estimator, Trainer); ``continue_lora`` starts from the session's current LoRA."""
    previous = state.session_run(session)
    try:
        config.validate(hosted=hosted)  # before loading anything
    except ValueError as error:
        raise field_error(error) from None
    entry = state.MODELS.get(config, session)
    chain = entry.variant(config)
    run_id = run_id or state.new_run_id()
    output_dir = state.run_dir(run_id)
    config = config.replace(output_dir=str(output_dir))
    try:
        with state.WORK_LOCK:  # the Trainer reads the chain's LoRA parameters: not while another request uses it
            training = TrainingRun.from_config(config, hosted=hosted, chain=chain, reward=reward)
    except WeightsUnavailableError as error:
        raise FieldError("Reward", f"{error} Pick a weight-free reward (saturation, brightness, ...) offline.") from None
    except ValueError as error:
        raise field_error(error) from None
    lora = None
    if continue_lora and previous is not None:
        lora = state.current_lora(previous)
        if set(lora) != set(entry.initial_lora) or any(
            tuple(lora[k].shape) != tuple(entry.initial_lora[k].shape) for k in lora
        ):
            raise FieldError(
                "Continue from the current LoRA",
                f"the session's LoRA ({previous.config.model}, rank {previous.config.lora_rank}, targets "
                f"{previous.config.lora_targets}) does not fit {config.model} with rank {config.lora_rank}, targets "
                f"{config.lora_targets}; uncheck it or use the same model, LoRA rank and LoRA targets",
            )
    run = Run(run_id, session, training, entry, chain, lora, output_dir, kind=kind)
    state.register(run, hosted)
    return run


def require_run(session: str, what: str) -> Run:
    run = state.session_run(session)
    if run is None:
        raise FieldError(what, "this session has no run yet: start training (or a preference round) first")
    return run


def train_stream(session: str, config: TrainConfig, hosted: bool, continue_lora: bool = False,
                 chunk: int | None = None) -> Iterator[Run]:
    """Create a run and yield it: once at once (phase "starting"), after each iteration, and at the end.

    The trainer is advanced one iteration at a time inside :func:`state.using`, so other sessions
    can use the same chain between iterations. Closing this generator stops the run and exports the
    LoRA. ``chunk``: on ZeroGPU, iterations per GPU call (see :mod:`app.zerogpu`).
    """
    from . import zerogpu

    run = create_run(session, config, hosted, continue_lora)
    run.status = "Starting: sampling the 'before' images (LoRA off), then iteration 1"
    run.running = True
    run.started_at = time.time()
    run.iterations_planned = run.config.steps - run.step
    yield run
    stepper = zerogpu.stepper(run, chunk)
    try:
        for report in stepper:
            record_report(run, report)
            if over_disk_quota(run, hosted):
                run.stop_requested = True
                run.trainer.stop()
                run.status = (f"Stopping: this run's files passed the {caps(hosted)['run_disk_bytes'] // 2**20} MB "
                              f"limit of this server; the LoRA is kept")
            yield run
        run.finished, run.running = True, False
        run.status = final_status(run)
        yield run
    except TrainingStepError as error:
        run.status = f"Failed: {error}"
        raise FieldError("training", str(error)) from None
    finally:
        run.running = False
        if not run.finished:
            run.stop_requested = True
            run.trainer.stop()
            with state.using(run):
                stepper.close()


def record_report(run: Run, report: Any) -> None:
    """Store what the UI shows of a StepReport in the run (history rows, before/after images)."""
    row = report.to_json_dict()
    run.history.append(row)
    if report.before_images is not None and run.before is None:
        run.before = formatting.captioned(report.before_images, run.trainer.eval_prompts, report.before_rewards)
    if report.eval_images is not None:
        run.after = formatting.captioned(report.eval_images, run.trainer.eval_prompts, report.eval_rewards)
        run.after_step = report.step
    run.status = formatting.status_line(run, row)


def over_disk_quota(run: Run, hosted: bool) -> bool:
    """True when the run's folder holds more than ``caps(hosted)["run_disk_bytes"]``."""
    return folder_bytes(run.output_dir) > caps(hosted)["run_disk_bytes"]


def folder_bytes(folder: Path) -> int:
    total = 0
    for path in folder.rglob("*") if folder.is_dir() else []:
        try:
            total += path.stat().st_size if path.is_file() else 0
        except OSError:
            pass
    return total


def cancel(session: str) -> None:
    """A cancelled request of ``session`` (closed page, client ``job.cancel()``): its training or
    probe is aborted at the next model call; the LoRA of the last completed iteration is kept."""
    state.abort_event(session).set()
    run = state.session_run(session)
    if run is not None and run.running:
        run.stop_requested = True
        run.trainer.abort()


def final_status(run: Run) -> str:
    """"finished N iterations" or "stopped at iteration N", and that the LoRA is kept."""
    last = run.history[-1] if run.history else None
    head = f"Stopped at iteration {run.step}" if run.step < run.config.steps else f"Finished {run.step} iterations"
    tail = formatting.status_line(run, last) if last else ""
    return f"{head}; LoRA kept (Export tab). {tail}".strip()


def stop(session: str) -> str:
    """Ask the session's training to stop after the iteration in progress; the answer for a toast."""
    run = state.session_run(session)
    if run is None or not run.running:
        return "Nothing is running in this session."
    run.stop_requested = True
    run.trainer.stop()
    if not run.history:
        return "Stopping before the first iteration; the LoRA is kept."
    return "Stopping after this iteration; the LoRA is kept."


def predict_memory(session: str, form: dict[str, Any], hosted: bool) -> str:
    """The memory model's prediction for one estimate of the form's settings (before Start)."""
    from rlr_core.memory_model import CUDA_OVERHEAD_GB, free_memory_gb, predict

    config = config_from_form(form, hosted)
    chain = state.MODELS.get(config, session).variant(config)
    try:
        with state.WORK_LOCK:
            training = TrainingRun.from_config(config.replace(output_dir=str(state.runs_root() / "predict")),
                                               hosted=hosted, chain=chain)
    except WeightsUnavailableError as error:
        raise FieldError("Reward", str(error)) from None
    except ValueError as error:
        raise field_error(error) from None
    estimator = training.estimator
    options = {k: getattr(estimator, k) for k in ("h", "k", "k_max", "jumps") if hasattr(estimator, k)}
    with state.WORK_LOCK:
        try:
            prediction = predict(chain, config.estimator, config.batch_size, reward=training.reward, **options)
        except (ValueError, NotImplementedError) as error:
            raise FieldError("Estimator", f"no memory prediction for this setting: {error}") from None
    device = chain.device
    overhead = CUDA_OVERHEAD_GB if device.type == "cuda" else 0.0
    chosen = getattr(estimator, "auto_choice", None)
    what = ", ".join(f"{k}={v}" for k, v in options.items())
    text = (f"Predicted for one {config.estimator} estimate ({what}, batch {config.batch_size}): "
            f"graph {formatting.format_megabytes(prediction.graph_mb)}, peak {formatting.format_sig(prediction.peak_gb + overhead)} GB "
            f"on {device.type}; free now {formatting.format_sig(free_memory_gb(device))} GB.")
    if chosen:
        text += f" h: auto chose h = {chosen['h']}" + (" with gradient checkpointing." if chosen["gradient_checkpointing"] else ".")
    return text


# ----------------------------------------------------------------------------------- generation
def generate(session: str, model: str, prompt: str, seed: Any, use_lora: bool, hosted: bool,
             num_images: int = 4) -> list[tuple[Any, str]]:
    """Images for ``prompt`` from seeds seed, seed+1, ... with the session's LoRA or the base model."""
    prompt = str(prompt or "").strip()
    if not prompt:
        raise FieldError("Prompt", "enter a prompt")
    seed = parse_seed("Seed", seed)
    n = parse_int("number of images", num_images, 1, caps(hosted)["generate_images"])
    model = str(model or "").strip()
    seeds = [(seed + i) % (MAX_SEED + 1) for i in range(n)]
    if use_lora:
        run = require_run(session, "use_lora")
        if model and model != run.config.model:
            raise FieldError("Model", f"this session's LoRA was trained on {run.config.model!r}, not {model!r}; "
                                      f"pass that model or use_lora=false")
        with state.using(run) as chain:
            images = sample(chain, [prompt] * n, seeds=seeds)
        label = f"{run.config.model} + LoRA ({run.step} it)"
    else:
        config = config_from_form({"model": model or "tiny"}, hosted)
        run = state.session_run(session)
        if run is not None and run.config.model == config.model:
            config = run.config  # same sampler settings as the session's run
        chain = state.MODELS.get(config, session).variant(config)
        with state.WORK_LOCK, chain.adapters_disabled():
            images = sample(chain, [prompt] * n, seeds=seeds)
        label = f"{config.model} (base)"
    return [(image, f"{label} · seed {s}") for image, s in zip(to_pil(images) or [], seeds)]


# ----------------------------------------------------------------------------------- batches
def noise_group_batch(run: Run, size: Any, differentiable_reward: bool, field_name: str, maximum: int) -> list[str]:
    """The run's prompts as a batch of ``size`` for its estimator's noise groups.

    The estimator splits the batch in g groups (samples i, i + n, i + 2n, ... share noise, n = size / g),
    and rows that share noise must share the prompt: n prompts, repeated g times
    (``rlr_core.estimators.base.grouped_prompts``). FieldError naming ``field_name`` unless size % g == 0.
    """
    from rlr_core.estimators.base import grouped_prompts

    groups = int(run.estimator.noise_groups(differentiable_reward))
    size = int(size)
    if size % groups:
        allowed = ", ".join(str(m) for m in range(groups, maximum + 1, groups)) or f"none up to {maximum}"
        raise FieldError(field_name, f"must be a multiple of {groups} for estimator {run.config.estimator!r} "
                                     f"(its batch is split in {groups} groups that share noise); "
                                     f"allowed: {allowed}; got {size}")
    return grouped_prompts(list(run.config.prompts), size, groups)


# ----------------------------------------------------------------------------------- preference
def preference_run(session: str, form: dict[str, Any], hosted: bool, mode: str, features: str) -> Run:
    """The session's click run for ``mode`` / ``features``, created when needed.

    A click run is a TrainingRun whose reward is the clicks (direct: ``ClickReward``) or the
    Bradley-Terry head refitted on them (learned); every click update is one of its Trainer
    iterations. It continues from the session's current LoRA when the model and rank fit.
    """
    kind = f"clicks-{mode}-{features}"
    run = state.session_run(session)
    if run is not None and run.kind == kind:
        return run
    if run is not None and run.running:
        raise FieldError("preference", "training is running in this session; stop it first")
    base = run.config if run is not None else config_from_form(form, hosted)
    if features == "auto" and default_clip_model(base.model) == "tiny-clip":
        features = "tiny-clip"  # the bundled image-text model: offline CLIP features for the tiny model
    run_id = state.new_run_id()
    log = ClickLog(state.run_dir(run_id) / "clicks.jsonl")
    head = PreferenceReward(log, features=features) if mode == "learned" else None
    config = base.replace(reward="preference", reward_options={"mode": mode, "features": features, "log_path": str(log.path)},
                          eval_every=max(base.eval_every, 1))
    continue_lora = (run is not None and run.config.model == config.model and run.config.lora_rank == config.lora_rank
                     and run.config.lora_targets == config.lora_targets)
    new = create_run(session, config, hosted, continue_lora, reward=head or ClickReward(), kind=kind, run_id=run_id)
    new.preference = PreferenceSession(new.trainer, log, mode=mode, k=None, reward=head)
    new.status = f"click run ({mode}, features {features}) from {'the current LoRA' if continue_lora else 'a fresh LoRA'}"
    return new


def preference_round(session: str, form: dict[str, Any], hosted: bool, k: int, mode: str,
                     features: str = "pixels") -> Run:
    """Show a new round of ``k`` images from the session's current model (a click run is created if needed)."""
    if mode not in PREFERENCE_MODES:
        raise FieldError("Mode", f"must be 'direct' or 'learned'; got {mode!r}")
    k = parse_int("Images per round", k, 2, caps(hosted)["pref_k"])
    run = preference_run(session, form, hosted, mode, features)
    prompts = noise_group_batch(run, k, mode == "learned", "Images per round", caps(hosted)["pref_k"])
    seed = 10_000 + run.config.seed * 1000 + run.counters["rounds"]
    with state.using(run):
        run.round = run.preference.new_round(prompts, seed=seed)
    run.counters["rounds"] += 1
    return run


def preference_update(session: str, chosen: list[int], best_only: bool) -> tuple[Run, Any]:
    """Record the clicks of the round on screen and run one Trainer iteration from them."""
    run = require_run(session, "preference")
    if run.round is None or run.round.updated:
        raise FieldError("preference", "no round on screen: click 'New round' first")
    chosen = sorted({int(i) for i in chosen})
    n = run.round.size
    if not chosen:
        raise FieldError("Preferred images", "select at least one image (click it, or tick its number)")
    if best_only and len(chosen) != 1:
        raise FieldError("Preferred images", f"'best one' mode: select exactly one image; got {len(chosen)}")
    if len(chosen) >= n:
        raise FieldError("Preferred images", f"leave at least one image unselected (a preference needs a contrast); "
                                             f"selected {len(chosen)} of {n}")
    with state.using(run):
        try:
            run.preference.click(run.round, chosen=chosen)
        except ValueError as error:
            raise FieldError("Preferred images", str(error)) from None
        try:
            update = run.preference.update(run.round)
        except TrainingStepError as error:
            raise FieldError("preference", str(error)) from None
    record_report(run, update.report)
    run.counters["clicks"] += len(chosen)
    run.counters["updates"] += 1
    return run, update


# ----------------------------------------------------------------------------------- diagnostics
def diagnostics(session: str, form: dict[str, Any], hosted: bool, estimators: list[str], repeats: int) -> list[dict]:
    """``rlr_core.diagnostics.probe`` on the session's model (with its LoRA) and reward."""
    from rlr_core.diagnostics import probe

    from rlr_core.estimators import list_estimators

    if not estimators:
        raise FieldError("Estimators", "pick at least one estimator")
    if isinstance(estimators, str):
        estimators = [estimators]
    unknown = [str(name)[:40] for name in estimators if name not in list_estimators()]
    if unknown:
        raise FieldError("Estimators", f"unknown {unknown[0]!r}; allowed values: {', '.join(list_estimators())}")
    estimators = list(dict.fromkeys(estimators))  # each estimator once
    repeats = parse_int("Repeats", repeats, 2, caps(hosted)["probe_repeats"])
    run = state.session_run(session)
    if run is None:
        run = create_run(session, config_from_form(form, hosted), hosted)
    if run.running:
        raise FieldError("diagnostics", "training is running in this session; stop it first")
    reward = run.reward
    if run.kind != "train":  # clicks have no reward function: probe the click run's LoRA with the form's reward
        chosen = config_from_form(form, hosted)
        probe_config = run.config.replace(reward=chosen.reward, reward_options=chosen.reward_options)
        try:
            reward = TrainingRun.from_config(probe_config, hosted=hosted, chain=run.chain).reward
        except ValueError as error:
            raise field_error(error) from None
    config = run.config
    prompts = noise_group_batch(run, config.batch_size, bool(reward.differentiable), "Batch size", caps(hosted)["batch_size"])
    specs: list[Any] = [(name, dict(config.estimator_options)) if name == config.estimator else name
                        for name in dict.fromkeys(estimators)]
    with state.using(run) as chain, cancellable(state.fresh_abort_event(session)):
        try:
            stats = probe(chain, reward, specs, prompts, repeats=repeats, seed=config.seed)
        except ValueError as error:
            raise FieldError("diagnostics", str(error)) from None
    return [s.row() for s in stats]


# ----------------------------------------------------------------------------------- export / import
def export(session: str) -> tuple[Path, Path, str]:
    """Write the LoRA (.safetensors, via chain.save_lora) and a config ``rlr-train`` runs as is; return
    the two paths and the usage snippet for the loaded model."""
    run = require_run(session, "export")
    if run.running:
        raise FieldError("export", "training is running; stop it (the LoRA is kept) or wait for the end")
    shutil.rmtree(run.output_dir / "export", ignore_errors=True)  # only the newest export is kept (disk)
    folder = run.output_dir / "export" / f"step-{run.step:06d}"
    with state.using(run) as chain:
        chain.save_lora(folder)
    weights = next(folder.glob("*.safetensors"))
    config_path = folder / "rlr_config.yaml"
    portable_config(run.config).to_yaml(config_path)
    return weights, config_path, snippet(run)


def portable_config(config: TrainConfig) -> TrainConfig:
    """The run's config as a file for ``rlr-train``: a relative output folder and the CLI's defaults for
    logging and checkpoints (the app writes neither)."""
    cli = TrainConfig()
    return config.replace(output_dir=f"runs/{config.estimator}-{config.reward}", checkpoint_every=cli.checkpoint_every,
                          log_every=cli.log_every, resume=False)


def snippet(run: Run) -> str:
    """How to use the exported LoRA with the loaded model: diffusers for SD-type models, rlr_core for the
    pixel-space tiny model (no VAE, not a StableDiffusionPipeline)."""
    config = run.config
    prompt = config.prompts[0]
    with_rlr_core = (
        "```python\n"
        "from rlr_core import load_model, sample\n\n"
        f"chain = load_model({config.model!r}, lora_rank={config.lora_rank}, num_steps={config.num_steps}"
        f"{'' if config.lora_targets == 'attention' else f', lora_targets={config.lora_targets!r}'})\n"
        "chain.load_lora(\"pytorch_lora_weights.safetensors\")  # the file downloaded here\n"
        f"images = sample(chain, [{prompt!r}] * 4, seeds=[0, 1, 2, 3])  # [4, 3, H, W] in [0, 1]\n"
        "```\n\n"
        "Or continue training headless: `rlr-train --config rlr_config.yaml`."
    )
    if run.chain.vae is None:
        return "The tiny model samples in pixel space (no VAE), so it runs through rlr_core:\n\n" + with_rlr_core
    return (
        "```python\n"
        "import torch\n"
        "from diffusers import StableDiffusionPipeline\n\n"
        f"pipe = StableDiffusionPipeline.from_pretrained({config.model!r}, torch_dtype=torch.float16).to(\"cuda\")\n"
        "pipe.load_lora_weights(\"pytorch_lora_weights.safetensors\")  # the file downloaded here\n"
        f"image = pipe({prompt!r}, num_inference_steps={config.num_steps}).images[0]\n"
        "```\n\nWith rlr_core instead:\n\n" + with_rlr_core
    )


def load_config_file(path: str, hosted: bool) -> TrainConfig:
    """An uploaded config, read safely (size limit, no YAML aliases, bounded nesting) and validated."""
    check_upload_size("config file", path, caps(hosted)["config_bytes"])
    try:
        return TrainConfig.from_file(path, max_bytes=caps(hosted)["config_bytes"]).validate(hosted=hosted)
    except ValueError as error:  # from_file refuses deep nesting itself, before any recursion
        raise FieldError("config file", str(error)) from None


def check_upload_size(label: str, path: str, limit: int) -> None:
    """FieldError naming ``label`` when the uploaded file is missing or larger than ``limit`` bytes."""
    try:
        size = Path(str(path)).stat().st_size
    except (OSError, TypeError, ValueError):
        raise FieldError(label, "the upload did not arrive; upload the file again") from None
    if size > limit:
        raise FieldError(label, f"must be at most {limit / 2**20:.2g} MB here; got {size / 2**20:.3g} MB")


def upload_lora(session: str, path: str, form: dict[str, Any], hosted: bool) -> Run:
    """Load an uploaded LoRA (.safetensors from Export / save_lora) into the session's run."""
    if not path or not str(path).endswith(".safetensors"):
        raise FieldError("LoRA file", f"must be a .safetensors file written by Export (save_lora); got {Path(str(path)).name!r}")
    check_upload_size("LoRA file", path, caps(hosted)["lora_bytes"])
    run = state.session_run(session)
    if run is not None and run.running:
        raise FieldError("LoRA file", "training is running in this session; stop it first")
    if run is None:
        run = create_run(session, config_from_form(form, hosted), hosted)
    with state.using(run) as chain:
        try:
            chain.load_lora(path)
        except (ValueError, FileNotFoundError, OSError) as error:
            raise FieldError("LoRA file", str(error)) from None
    run.status = f"Loaded LoRA {Path(path).name}; tick 'Continue from the current LoRA' and Start to train on"
    return run


__all__ = ["FORM_DEFAULTS", "config_from_form", "form_from_config", "create_run", "train_stream", "stop", "generate", "preference_round",
           "preference_update", "diagnostics", "export", "snippet", "upload_lora", "load_config_file"]
