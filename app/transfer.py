"""Files in and out of the app, without Gradio: the Export tab's LoRA and config (with a usage snippet),
the uploads that continue from files (a config for the Train form, a LoRA for the session's run), and the
click log of a preference run as a .zip (download, and unpacked again for :func:`app.clicks.load_click_log`).
Uploads are read safely and size-capped (``caps(hosted)``, docs/hosting.md).
"""

from __future__ import annotations

import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

from rlr_core.config import TrainConfig
from rlr_core.estimators import estimator_options
from rlr_core.hosted import check_hosted

from . import runs
from .errors import FieldError
from .form import config_from_form
from .formatting import kept_reason_text, latest_evaluation
from .runs import Run
from .settings import caps
from .training import create_run, require_run

__all__ = ["export", "last_lora_beside", "kept_lora_note", "portable_config", "snippet", "load_config_file",
           "check_upload_size", "upload_lora", "click_log_zip", "unpack_click_log"]

LAST_LORA_FOLDER = "last-iteration"
"""Where an export puts the last iteration's LoRA of a keep_best run, beside the kept one."""


def export(session: str) -> tuple[Path, Path, str]:
    """Write the LoRA (.safetensors, via chain.save_lora) and a config ``rlr-train`` runs as is; return
    the two paths and the usage snippet for the loaded model. After a keep_best training the LoRA is the one
    the guard kept (the Trainer leaves it in the chain); the last iteration's goes beside it
    (:func:`last_lora_beside`), and the text says which is which."""
    run = require_run(session, "export")
    if run.running:
        raise FieldError("export", "training is running; stop it (the LoRA is kept) or wait for the end")
    shutil.rmtree(run.output_dir / "export", ignore_errors=True)  # only the newest export is kept (disk)
    folder = run.output_dir / "export" / f"step-{run.step:06d}"
    with runs.using(run) as chain:
        chain.save_lora(folder)
    note, last = kept_lora_note(run), run.output_dir / "lora-last"
    if note and last.is_dir():
        shutil.copytree(last, folder / LAST_LORA_FOLDER)
    weights = next(folder.glob("*.safetensors"))
    config_path = folder / "rlr_config.yaml"
    portable_config(run.config).to_yaml(config_path)
    return weights, config_path, note + snippet(run)


def last_lora_beside(weights: Path) -> Path | None:
    """The last iteration's LoRA exported beside ``weights`` (a keep_best training), or None."""
    return next((weights.parent / LAST_LORA_FOLDER).glob("*.safetensors"), None)


def kept_lora_note(run: Run) -> str:
    """After a keep_best training: which iteration's LoRA the export holds and why, and where the last one is
    (Markdown, ends with a blank line); "" otherwise."""
    if not (run.config.keep_best and run.kind == "train" and run.history) or run.uploaded_lora:
        return ""
    guard = run.trainer.guard
    reason = kept_reason_text(guard.best_step, guard.kept_reason, bool(latest_evaluation(run.history)))
    return (f"**This LoRA is the one the reward-hacking guard kept: iteration {guard.best_step}** ({reason}). "
            f"The last iteration's LoRA (iteration {run.step}) is the second download, \"Last iteration's LoRA\", "
            f"and on the server in `{run.output_dir / 'lora-last'}`.\n\n")


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
        f"{'' if config.lora_targets == 'auto' else f', lora_targets={config.lora_targets!r}'})\n"
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
        config = TrainConfig.from_file(path, max_bytes=caps(hosted)["config_bytes"])  # validated
        defaults = estimator_options(config.estimator)  # an unknown estimator is refused here
        return check_hosted(config, defaults) if hosted else config
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
    run = runs.session_run(session)
    if run is not None and run.running:
        raise FieldError("LoRA file", "training is running in this session; stop it first")
    if run is None:
        run = create_run(session, config_from_form(form, hosted), hosted)
    with runs.using(run) as chain:
        try:
            chain.load_lora(path)
        except (ValueError, FileNotFoundError, OSError) as error:
            raise FieldError("LoRA file", str(error)) from None
    run.uploaded_lora = Path(path).name
    run.status = f"Loaded LoRA {Path(path).name}; tick 'Continue from the current LoRA' and Start to train on"
    return run


def click_log_zip(session: str) -> Path:
    """The session's click log as a .zip: the .jsonl, its ``<stem>_images/`` folder and its
    ``<stem>_start_lora.safetensors`` (what :func:`unpack_click_log` reads back)."""
    run = require_run(session, "Download click log")
    log = getattr(run.preference, "log", None)
    if log is None or not log.path.is_file():
        raise FieldError("Download click log", "this session has no clicks yet: click a round and Update first")
    target = run.output_dir / "click-log" / f"clicks-{run.id}.zip"
    target.parent.mkdir(parents=True, exist_ok=True)
    files = [log.path, log.start_lora_path, *sorted(log.image_dir.glob("*.png"))]
    with zipfile.ZipFile(target.with_suffix(".tmp"), "w", zipfile.ZIP_DEFLATED) as archive:
        for path in files:
            if path.is_file():
                archive.write(path, path.relative_to(log.path.parent).as_posix())
    target.with_suffix(".tmp").replace(target)
    return target


_HASH_PNG = re.compile(r"[0-9a-f]{64}\.png")


def unpack_click_log(path: str, folder: Path, hosted: bool) -> Path:
    """An uploaded click log (.jsonl, or the .zip of :func:`click_log_zip`) in ``folder``; returns the .jsonl.

    Of a .zip only the one .jsonl, the PNGs of its ``<stem>_images/`` folder (named by their SHA-256) and its
    ``<stem>_start_lora.safetensors`` are taken, by name, and at most ``caps(hosted)["run_disk_bytes"]``
    in all; FieldError naming "Click log" otherwise.
    """
    label, limit = "Click log", caps(hosted)["run_disk_bytes"]
    name = Path(str(path or "")).name
    if not name.endswith((".jsonl", ".zip")):
        raise FieldError(label, f"must be a .zip (from 'Download click log') or a .jsonl click log; got {name!r}")
    check_upload_size(label, path, limit)
    folder.mkdir(parents=True, exist_ok=True)
    if name.endswith(".jsonl"):
        return Path(shutil.copyfile(path, folder / "clicks.jsonl"))
    try:
        with zipfile.ZipFile(path) as archive:
            entries = [e for e in archive.infolist() if not e.is_dir() and not e.filename.startswith("__MACOSX/")]
            logs = [e for e in entries if e.filename.endswith(".jsonl")]
            if len(logs) != 1:
                raise FieldError(label, f"the .zip must hold exactly one .jsonl click log; it holds {len(logs)}")
            prefix, stem = logs[0].filename.rpartition("/")[0], Path(logs[0].filename).stem
            base = f"{prefix}/" if prefix else ""

            def wanted(entry: zipfile.ZipInfo) -> bool:
                rest = entry.filename[len(base):] if entry.filename.startswith(base) else ""
                image = rest.startswith(f"{stem}_images/") and _HASH_PNG.fullmatch(rest[len(stem) + 8:])
                return rest in (f"{stem}.jsonl", f"{stem}_start_lora.safetensors") or bool(image)

            taken = [e for e in entries if wanted(e)]
            if sum(e.file_size for e in taken) > limit:
                raise FieldError(label, f"unpacked, the .zip must be at most {limit / 2**20:.3g} MB here")
            for entry in taken:
                target = folder / ("clicks" + entry.filename[len(base) + len(stem):])  # <stem>... -> clicks...
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(entry) as source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out)  # reads at most the entry's stated size (CRC checked)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, NotImplementedError) as error:
        raise FieldError(label, f"is not a readable .zip ({error})") from None
    return folder / "clicks.jsonl"
