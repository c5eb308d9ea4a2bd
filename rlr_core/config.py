"""One configuration object for a training run: the same file for the UI's export and the CLI's input.

``TrainConfig`` is a plain dataclass. It is saved and loaded as YAML or JSON (by file suffix),
rejects unknown keys, validates every field with a message that names the field and its allowed
values, and builds the three runtime objects of a run::

    config = TrainConfig.from_file("run.yaml")
    run = TrainingRun.from_config(config)          # rlr_core.run: chain, reward, estimator, trainer
    for report in run.trainer.run():
        print(report.step, report.reward_mean)

Config files may come from strangers (the app's upload), so reading one is bounded: at most
``MAX_CONFIG_BYTES`` (``from_file(max_bytes=...)``), at most ``MAX_CONFIG_NESTING`` levels of
lists / mappings, and no YAML aliases or anchors (a "billion laughs" file of a few hundred bytes
would otherwise expand to gigabytes). YAML is read with a safe loader: python tags stay inert.

This module imports with nothing but the standard library and PyYAML.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["TrainConfig", "HOSTED_LIMITS", "DEVICES", "DTYPES", "MAX_CONFIG_BYTES", "MAX_CONFIG_NESTING", "MAX_SEED", "REPORT_TO", "LORA_TARGET_SETS", "LR_SCHEDULES", "lr_factor", "resolve_lora_targets", "nested_deeper_than"]

DTYPES = ("auto", "float32", "float16", "bfloat16")
"""Allowed values of ``TrainConfig.dtype`` ("auto": float16 on CUDA, float32 elsewhere, chosen by load_model)."""

DEVICES = ("auto", "cpu", "cuda", "cuda:<index>", "mps")
"""Allowed forms of ``TrainConfig.device``."""

LR_SCHEDULES = ("constant", "cosine", "linear")
"""Allowed values of ``TrainConfig.lr_schedule`` (see :func:`lr_factor`)."""

REPORT_TO = ("none", "tensorboard", "wandb")
"""Allowed values of ``TrainConfig.report_to`` (the same tuple as ``rlr_core.tracking.REPORT_TO``)."""

HOSTED_LIMITS: dict[str, int] = {
    "num_steps": 50,
    "batch_size": 8,
    "steps": 500,
    "lora_rank": 64,
    "eval_seeds": 16,
}
"""Upper limits enforced by ``validate(hosted=True)`` (a shared Space must not be monopolized)."""

LORA_TARGET_SETS: dict[str, tuple[str, ...]] = {
    # every attention projection (self- and cross-attention): the most freedom
    "attention": ("to_q", "to_k", "to_v", "to_out.0"),
    # only the two projections that read the text (cross-attention keys and values): the LoRA changes
    # what the UNet hears the prompt say, not how it draws (images tend to stay on the model's distribution)
    "cross-attention": ("attn2.to_k", "attn2.to_v"),
}
"""Named values of ``lora_targets`` (module-name suffixes LoRA adapters are added to)."""


def lr_factor(schedule: str, step: int, steps: int) -> float:
    """The learning-rate multiplier of iteration ``step`` (1-based) of ``steps``: 1 for "constant";
    with t = (step - 1) / steps, ``0.5 * (1 + cos(pi * t))`` for "cosine" and ``1 - t`` for "linear"
    (the first iteration gets the full lr, the last one lr / steps or so, never 0)."""
    if schedule == "constant":
        return 1.0
    t = min(max((int(step) - 1) / max(int(steps), 1), 0.0), 1.0)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "linear":
        return 1.0 - t
    raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}; got {schedule!r}")


def resolve_lora_targets(lora_targets: str | list[str] | tuple[str, ...]) -> list[str]:
    """Module-name suffixes of ``lora_targets``: a name of :data:`LORA_TARGET_SETS`, a comma-separated
    list of module-name suffixes (``"attn2.to_k, attn2.to_v, ff.net.2"``) or a list of them.
    ValueError naming the field and the allowed values otherwise."""
    if isinstance(lora_targets, str):
        text = lora_targets.strip()
        if text in LORA_TARGET_SETS:
            return list(LORA_TARGET_SETS[text])
        items = [part.strip() for part in text.split(",")]
    elif isinstance(lora_targets, (list, tuple)):
        items = list(lora_targets)
    else:
        items = []
    if not items or not all(isinstance(t, str) and t.strip() and not t.strip().startswith(".") for t in items):
        raise ValueError(f"lora_targets must be one of {list(LORA_TARGET_SETS)} or a list of module-name suffixes "
                         f"(e.g. 'attn2.to_k, attn2.to_v'); got {_got('lora_targets', lora_targets)}")
    return [t.strip() for t in items]


MAX_CONFIG_BYTES = 1_000_000
"""Default size limit of a config file read by ``TrainConfig.from_file`` (and ``from_yaml`` / ``from_json`` of a path)."""

MAX_CONFIG_NESTING = 20
"""How deeply lists / mappings may nest in a config file (the real ones nest 3 levels)."""

MAX_SEED = 2**32 - 1
"""Largest ``seed`` / ``eval_seeds`` entry: what torch and numpy generators accept."""


@dataclass
class TrainConfig:
    """Everything a training run needs. Field order is the order of the saved file.

    Model and sampler
        model: ``"tiny"`` (bundled model), a Hugging Face Hub id or a local diffusers folder.
        num_steps: sampling steps T (>= 2).
        guidance_scale: classifier-free guidance scale; ``None`` = the model's default.
        eta: DDIM eta in [0, 1] (> 0 makes the steps stochastic; likelihood-ratio terms need it).
        lora_rank / lora_alpha: LoRA rank (>= 1) and alpha (``None`` = rank, i.e. scale 1).
        lora_targets: where the LoRA adapters go: ``"attention"`` (every attention projection, the
            default), ``"cross-attention"`` (only the keys and values that read the text: the model
            keeps drawing what it can draw, it hears the prompt differently) or a list of
            module-name suffixes (``LORA_TARGET_SETS``, ``resolve_lora_targets``).
        gradient_checkpointing: recompute activations inside gradient segments (less memory).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
        dtype: ``"auto"``, ``"float32"``, ``"float16"`` or ``"bfloat16"`` (LoRA weights stay float32).
        memory_budget_gb: the memory ``h: auto`` may plan for (GB; ``None`` = the device's free
            memory plus the loaded weights).

    Reward and estimator
        reward / reward_options: name and keyword options of ``rlr_core.rewards.get_reward``.
        estimator / estimator_options: name and keyword options of
        ``rlr_core.estimators.get_estimator`` (e.g. ``{"h": 2, "remaining": "zo"}`` for rlr;
        ``{"h": "auto"}`` picks the largest h whose predicted memory fits ``memory_budget_gb``).

    Prompts
        prompts: training prompts; each batch draws from them (seeded).
        coarse_prompt / mid_prompt / fine_prompt: optional per-step prompt schedule
        ("" = off). When any is set, every prompt p becomes
        ``ScheduledPrompt(coarse or p, mid or p, fine or p)``.
        prompt_boundaries: the two step boundaries between coarse/mid and mid/fine, either step
        indices (integers, 0 < a < b < num_steps) or fractions of the chain (0 < a < b < 1).
        eval_prompts: prompts of the evaluation images ([] = the training prompts, cycled).

    Optimization
        steps: training iterations (>= 1); batch_size: images per iteration (>= 1; even for
        estimators that split the batch in +/- halves); lr: AdamW learning rate (> 0);
        lr_schedule: ``"constant"`` (default), ``"cosine"`` or ``"linear"``: the learning rate of
        iteration s (1-based) is ``lr * lr_factor(lr_schedule, s, steps)``, decaying from lr toward 0
        over the ``steps`` iterations;
        weight_decay: AdamW weight decay (>= 0); max_grad_norm: gradient clipping (> 0; 0 = off);
        kl_weight: weight of the KL regularisation toward the base model (>= 0; 0 = off): each
        iteration adds ``kl_weight`` x the gradient of the trajectory KL(fine-tuned || base) per image
        (``rlr_core.kl``; needs a LoRA chain and eta > 0), part "kl" of the diagnostics;
        kl_steps: chain steps drawn per iteration for that KL estimate (>= 1; scaled to all T steps);
        seed: seed of prompts, noises, perturbations and the fresh LoRA's initialisation
        (iteration k uses seed (seed, k)); an integer in [0, 2**32 - 1].

    Evaluation, logging, checkpoints
        eval_seeds: one fixed seed per evaluation image (each in [0, 2**32 - 1]); eval_every: evaluate every N
        iterations (0 = only before and after); log_every: CLI log line every N iterations;
        report_to: experiment tracking, ``"none"``, ``"tensorboard"`` (event files in
        ``output_dir/tensorboard``) or ``"wandb"`` (see ``rlr_core.tracking``);
        report_samples: how many training images each StepReport carries as PIL images;
        checkpoint_every: checkpoint every N iterations (0 = never); keep_checkpoints: how many
        checkpoints to keep; output_dir: where metrics, images, checkpoints and the LoRA go;
        resume: continue from the newest checkpoint in output_dir.
    """

    # model and sampler
    model: str = "tiny"
    num_steps: int = 20
    guidance_scale: float | None = None
    eta: float = 1.0
    lora_rank: int = 4
    lora_alpha: float | None = None
    lora_targets: str | list[str] = "attention"
    gradient_checkpointing: bool = False
    device: str = "auto"
    dtype: str = "auto"
    memory_budget_gb: float | None = None
    # reward and estimator
    reward: str = "saturation"
    reward_options: dict[str, Any] = field(default_factory=dict)
    estimator: str = "rlr"
    estimator_options: dict[str, Any] = field(default_factory=dict)
    # prompts
    prompts: list[str] = field(default_factory=lambda: ["a red circle on a blue background"])
    coarse_prompt: str = ""
    mid_prompt: str = ""
    fine_prompt: str = ""
    prompt_boundaries: list[float] = field(default_factory=lambda: [1 / 3, 2 / 3])
    eval_prompts: list[str] = field(default_factory=list)
    # optimization
    steps: int = 100
    batch_size: int = 4
    lr: float = 1e-3
    lr_schedule: str = "constant"
    weight_decay: float = 1e-4
    max_grad_norm: float = 1.0
    kl_weight: float = 0.0
    kl_steps: int = 4
    seed: int = 0
    # evaluation, logging, checkpoints
    eval_seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    eval_every: int = 10
    log_every: int = 10
    report_to: str = "none"
    report_samples: int = 0
    checkpoint_every: int = 25
    keep_checkpoints: int = 2
    output_dir: str = "runs/rlr"
    resume: bool = False

    # ------------------------------------------------------------------ dict / file I/O
    @classmethod
    def field_names(cls) -> list[str]:
        """All field names, in file order."""
        return [f.name for f in dataclasses.fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (lists, dicts, str, numbers, bools, None) of every field."""
        return {name: _plain(getattr(self, name)) for name in self.field_names()}

    @classmethod
    def from_dict(cls, data: dict[str, Any], validate: bool = True) -> "TrainConfig":
        """Build from a dict; missing keys take defaults, unknown keys raise ValueError.

        Numeric strings (YAML 1.1 reads ``1e-3`` as a string) are converted for numeric fields.
        """
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ValueError(f"config must be a mapping of field: value, got {type(data).__name__}")
        allowed = cls.field_names()
        unknown = [key for key in data if key not in allowed]
        if unknown:
            raise ValueError(
                f"unknown config key {unknown[0]!r}"
                + (f" (and {', '.join(map(repr, unknown[1:]))})" if len(unknown) > 1 else "")
                + f"; allowed keys: {', '.join(allowed)}"
            )
        values = {key: _coerce(key, value) for key, value in data.items()}
        config = cls(**values)
        if validate:
            config.validate()
        return config

    def to_yaml(self, path: str | os.PathLike | None = None) -> str:
        """YAML text of the config; also written to ``path`` when given."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None, allow_unicode=True)
        if path is not None:
            _write_text(Path(path), text)
        return text

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """JSON text of the config; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        if path is not None:
            _write_text(Path(path), text)
        return text

    def save(self, path: str | os.PathLike) -> None:
        """Write YAML (``.yaml``/``.yml``) or JSON (``.json``) by the file suffix."""
        suffix = Path(path).suffix.lower()
        if suffix in (".yaml", ".yml"):
            self.to_yaml(path)
        elif suffix == ".json":
            self.to_json(path)
        else:
            raise ValueError(f"config path must end in .yaml, .yml or .json, got {str(path)!r}")

    @classmethod
    def from_yaml(cls, path_or_text: str | os.PathLike, validate: bool = True) -> "TrainConfig":
        """Load from a YAML file, or from YAML text when the argument is not an existing path.

        Aliases / anchors, python tags and nesting deeper than ``MAX_CONFIG_NESTING`` are refused
        with a ValueError; a file is read up to ``MAX_CONFIG_BYTES``.
        """
        return cls.from_dict(parse_yaml(_read_path_or_text(path_or_text)), validate=validate)

    @classmethod
    def from_json(cls, path_or_text: str | os.PathLike, validate: bool = True) -> "TrainConfig":
        """Load from a JSON file, or from JSON text when the argument is not an existing path.

        Nesting deeper than ``MAX_CONFIG_NESTING`` is refused with a ValueError; a file is read up
        to ``MAX_CONFIG_BYTES``.
        """
        return cls.from_dict(parse_json(_read_path_or_text(path_or_text)), validate=validate)

    @classmethod
    def from_file(
        cls, path: str | os.PathLike, validate: bool = True, max_bytes: int = MAX_CONFIG_BYTES
    ) -> "TrainConfig":
        """Load YAML (``.yaml``/``.yml``) or JSON (``.json``) by the file suffix.

        A file larger than ``max_bytes`` is refused with a ValueError naming its size and the limit.
        """
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"config file {str(path)!r} does not exist")
        suffix = path.suffix.lower()
        if suffix in (".yaml", ".yml"):
            parse = parse_yaml
        elif suffix == ".json":
            parse = parse_json
        else:
            raise ValueError(f"config file must end in .yaml, .yml or .json, got {str(path)!r}")
        return cls.from_dict(parse(_read_limited(path, max_bytes)), validate=validate)

    def replace(self, **changes: Any) -> "TrainConfig":
        """A validated copy with some fields changed (unknown names raise ValueError)."""
        data = self.to_dict()
        data.update(changes)
        return type(self).from_dict(data)

    # ------------------------------------------------------------------ validation
    def validate(self, hosted: bool = False, check_names: bool = True) -> "TrainConfig":
        """Raise ValueError naming the first bad field and its allowed values; return self.

        With ``hosted=True`` the limits of ``HOSTED_LIMITS`` apply as well. ``check_names``
        checks ``estimator`` against ``list_estimators()`` (reward names, which include
        plug-ins, are checked by ``get_reward`` in ``build``).
        """
        _check_str(self, "model", non_empty=True)
        _check_int(self, "num_steps", minimum=2)
        if self.guidance_scale is not None:
            _check_float(self, "guidance_scale", minimum=0.0)
        _check_float(self, "eta", minimum=0.0, maximum=1.0)
        _check_int(self, "lora_rank", minimum=1)
        if self.lora_alpha is not None:
            _check_float(self, "lora_alpha", minimum=0.0, strict=True)
        resolve_lora_targets(self.lora_targets)
        _check_bool(self, "gradient_checkpointing")
        _check_str(self, "device")
        if not (self.device in ("auto", "cpu", "cuda", "mps") or _is_cuda_index(self.device)):
            raise ValueError(f"device must be one of {', '.join(DEVICES)}; got {_got('device', self.device)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {_got('dtype', self.dtype)}")
        if self.memory_budget_gb is not None:
            _check_float(self, "memory_budget_gb", minimum=0.0, strict=True)

        _check_str(self, "reward", non_empty=True)
        _check_dict(self, "reward_options")
        _check_str(self, "estimator", non_empty=True)
        _check_dict(self, "estimator_options")
        if check_names:
            _check_estimator_name(self.estimator)

        _check_str_list(self, "prompts", non_empty=True)
        for name in ("coarse_prompt", "mid_prompt", "fine_prompt"):
            _check_str(self, name)
        self._check_boundaries()
        _check_str_list(self, "eval_prompts", non_empty=False)

        _check_int(self, "steps", minimum=1)
        _check_int(self, "batch_size", minimum=1)
        _check_float(self, "lr", minimum=0.0, strict=True)
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}; got {_got('lr_schedule', self.lr_schedule)}")
        _check_float(self, "weight_decay", minimum=0.0)
        _check_float(self, "max_grad_norm", minimum=0.0)
        _check_float(self, "kl_weight", minimum=0.0)
        _check_int(self, "kl_steps", minimum=1)
        if self.kl_weight > 0 and self.eta <= 0:
            raise ValueError(f"kl_weight > 0 needs stochastic steps: eta must be > 0; got eta={self.eta!r}, kl_weight={self.kl_weight!r}")
        _check_int(self, "seed", minimum=0, maximum=MAX_SEED)

        self._check_eval_seeds()
        _check_int(self, "eval_every", minimum=0)
        _check_int(self, "log_every", minimum=1)
        if self.report_to not in REPORT_TO:
            raise ValueError(f"report_to must be one of {', '.join(REPORT_TO)}; got {_got('report_to', self.report_to)}")
        _check_int(self, "report_samples", minimum=0, maximum=self.batch_size)
        _check_int(self, "checkpoint_every", minimum=0)
        _check_int(self, "keep_checkpoints", minimum=1)
        _check_str(self, "output_dir", non_empty=True)
        _check_bool(self, "resume")

        if hosted:
            for name, limit in HOSTED_LIMITS.items():
                value = getattr(self, name)
                size = len(value) if isinstance(value, list) else value
                if size > limit:
                    raise ValueError(f"{name} must be at most {limit} on a hosted Space; got {size}")
            if _looks_like_local_path(self.model):
                raise ValueError(
                    f"model must be 'tiny' or a Hugging Face Hub id on a hosted Space; got local path {self.model!r}"
                )
        return self

    def check_output_dir(self) -> Path:
        """Raise ValueError naming ``output_dir`` when it cannot be written; return it as a Path.

        Meant to run before a model is loaded. ``output_dir`` need not exist yet: then the nearest
        existing parent must be a writable folder (the Trainer creates the rest). Nothing is left
        behind: a temporary file is opened in that folder and removed at once.
        """
        _check_str(self, "output_dir", non_empty=True)
        path = Path(self.output_dir).expanduser()
        existing = path
        try:
            while not existing.exists() and existing != existing.parent:
                existing = existing.parent
            if not existing.is_dir():
                what = "is a file" if existing == path else f"is below {str(existing)!r}, which is a file"
                raise ValueError(f"output_dir {self.output_dir!r} {what}, not a folder; choose a folder to write the run to")
            with tempfile.TemporaryFile(dir=existing):
                pass
        except OSError as error:
            raise ValueError(
                f"output_dir {self.output_dir!r} is not writable ({str(existing)!r}: {error.strerror or error}); "
                "choose a folder this process may write to"
            ) from None
        return path

    def _check_eval_seeds(self) -> None:
        allowed = f"a list of integers >= 0 (seeds in [0, {MAX_SEED}])"
        if not isinstance(self.eval_seeds, list):
            raise ValueError(f"eval_seeds must be {allowed}; got {_got('eval_seeds', self.eval_seeds)}")
        for index, seed in enumerate(self.eval_seeds):
            if not (_is_int(seed) and 0 <= seed <= MAX_SEED):
                raise ValueError(
                    f"eval_seeds must be {allowed}: eval_seeds[{index}] must be an integer in [0, {MAX_SEED}]; "
                    f"got {_got('eval_seeds', seed)}"
                )

    def _check_boundaries(self) -> None:
        value = self.prompt_boundaries
        if not isinstance(value, list):
            raise ValueError(
                "prompt_boundaries must be a list of two step indices (integers in [0, num_steps]) "
                f"or two fractions (floats in (0, 1)); got {_got('prompt_boundaries', value)}"
            )
        from rlr_core.prompts import resolve_boundaries

        resolve_boundaries(self.num_steps, value)  # ValueError naming prompt_boundaries

    # ------------------------------------------------------------------ derived values
    @property
    def uses_prompt_schedule(self) -> bool:
        """True when a coarse, mid or fine prompt is set."""
        return any((self.coarse_prompt, self.mid_prompt, self.fine_prompt))

    def training_prompts(self) -> list[Any]:
        """The prompts the Trainer draws batches from (``ScheduledPrompt`` when a schedule is set)."""
        return self._schedule(list(self.prompts))

    def evaluation_prompts(self) -> list[Any]:
        """One prompt per eval seed: ``eval_prompts`` (or the training prompts) cycled."""
        base = list(self.eval_prompts) or list(self.prompts)
        cycled = [base[i % len(base)] for i in range(len(self.eval_seeds))]
        return self._schedule(cycled)

    def _schedule(self, prompts: list[str]) -> list[Any]:
        if not self.uses_prompt_schedule:
            return prompts
        from rlr_core.prompts import ScheduledPrompt

        return [
            ScheduledPrompt(self.coarse_prompt or p, self.mid_prompt or p, self.fine_prompt or p) for p in prompts
        ]

    def boundary_steps(self) -> tuple[int, int]:
        """``prompt_boundaries`` as step indices (fractions of num_steps are rounded)."""
        from rlr_core.prompts import resolve_boundaries

        return resolve_boundaries(self.num_steps, list(self.prompt_boundaries))

    # ------------------------------------------------------------------ building
    def load_chain(self) -> Any:
        """``load_model`` with this config's model and sampler settings (a DiffusersChain)."""
        from rlr_core.diffusers_chain import load_model

        return load_model(
            self.model,
            num_steps=self.num_steps,
            lora_rank=self.lora_rank,
            lora_alpha=self.lora_alpha,
            lora_targets=self.lora_targets,
            guidance_scale=self.guidance_scale,
            eta=self.eta,
            device=self.device,
            dtype=self.dtype,
            gradient_checkpointing=self.gradient_checkpointing,
            prompt_boundaries=list(self.prompt_boundaries) if self.uses_prompt_schedule else None,
        )

    def build(self, hosted: bool = False) -> tuple[Any, Any, Any]:
        """``(chain, reward, estimator)`` of this config, built by ``rlr_core.run.TrainingRun``
        (which also checks the combination with a Trainer, so a bad one fails here)."""
        from rlr_core.run import TrainingRun

        return TrainingRun.from_config(self, hosted=hosted).parts()


# ---------------------------------------------------------------------- helpers
_FLOAT_FIELDS = {"guidance_scale", "eta", "lora_alpha", "lr", "weight_decay", "max_grad_norm", "kl_weight", "memory_budget_gb"}


def _coerce(name: str, value: Any) -> Any:
    """Convert numeric strings of float fields (``"1e-3"`` from YAML 1.1) and tuples to lists."""
    if name in _FLOAT_FIELDS and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value  # validate() reports it
    if isinstance(value, tuple):
        return list(value)
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _write_text(path: Path, text: str) -> None:
    """Write ``text`` through a temporary sibling (``.<name>.tmp-<pid>``) and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _read_path_or_text(path_or_text: str | os.PathLike) -> str:
    if isinstance(path_or_text, os.PathLike):
        return _read_limited(Path(path_or_text), MAX_CONFIG_BYTES)
    if "\n" not in path_or_text and len(path_or_text) < 4096 and _is_existing_file(path_or_text):
        return _read_limited(Path(path_or_text), MAX_CONFIG_BYTES)
    return path_or_text


def _is_existing_file(text: str) -> bool:
    try:
        return Path(text).is_file()
    except (OSError, ValueError):  # e.g. a name too long for the file system, a NUL character
        return False


def _read_limited(path: Path, max_bytes: int) -> str:
    """The UTF-8 text of ``path``; ValueError when it is larger than ``max_bytes`` (read no further)."""
    if not _is_int(max_bytes) or max_bytes < 1:
        raise ValueError(f"max_bytes must be an integer >= 1; got {max_bytes!r}")
    with open(path, "rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        size = max(path.stat().st_size, len(data))
        raise ValueError(f"config file {str(path)!r} is {size:,} bytes; the limit is {max_bytes:,} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"config file {str(path)!r} is not UTF-8 text: {error}") from None


_TOO_DEEP = f"config is nested too deeply (more than {MAX_CONFIG_NESTING} levels of lists / mappings)"


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader (python tags stay inert) that refuses aliases and anchors and limits nesting.

    Both are checked while composing, event by event, before any node is built or expanded.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._nesting = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent):
            raise ValueError(f"config must not use YAML aliases (*{event.anchor} on line {line}); write the value out")
        if getattr(event, "anchor", None) is not None:
            raise ValueError(f"config must not use YAML anchors (&{event.anchor} on line {line}); write the value out")
        collection = isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent))
        if collection:
            self._nesting += 1
            if self._nesting > MAX_CONFIG_NESTING:
                raise ValueError(f"{_TOO_DEEP}, line {line}")
        try:
            return super().compose_node(parent, index)
        finally:
            if collection:
                self._nesting -= 1


def parse_yaml(text: str) -> Any:
    """The data of YAML config text (safe loader; no aliases / anchors; bounded nesting); ValueError if bad."""
    try:
        return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 - _ConfigLoader is a SafeLoader
    except yaml.YAMLError as error:
        raise ValueError(f"config is not valid YAML: {error}") from error


def parse_json(text: str) -> Any:
    """The data of JSON config text (bounded nesting); ValueError if bad."""
    try:
        data = json.loads(text)
    except ValueError as error:  # JSONDecodeError, or e.g. an integer of more than 4300 digits
        raise ValueError(f"config is not valid JSON: {error}") from error
    except RecursionError:  # the decoder's own depth guard (about 1000 levels)
        raise ValueError(_TOO_DEEP) from None
    if nested_deeper_than(data, MAX_CONFIG_NESTING):
        raise ValueError(_TOO_DEEP)
    return data


def nested_deeper_than(value: Any, limit: int) -> bool:
    """True when lists / mappings nest more than ``limit`` levels in ``value`` (no recursion)."""
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return True
            pending.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


_SHOWN_CHARS = 200  # a bad value is shown up to this many characters (a toast, a log line)


def _got(name: str, value: Any) -> str:
    """A bad value as an error message shows it (shortened); ``null`` (YAML ``key:`` with nothing
    after it) with the field's default."""
    if value is None:
        return f"null (leave {name} out to get the default, {_field_default(name)!r})"
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else f"{text[:_SHOWN_CHARS]}... ({len(text):,} characters)"


def _field_default(name: str) -> Any:
    field_ = next(f for f in dataclasses.fields(TrainConfig) if f.name == name)
    return field_.default if field_.default is not dataclasses.MISSING else field_.default_factory()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_int(config: TrainConfig, name: str, minimum: int | None = None, maximum: int | None = None) -> None:
    value = getattr(config, name)
    allowed = _range_text(minimum, maximum, "an integer")
    if not _is_int(value):
        raise ValueError(f"{name} must be {allowed}; got {_got(name, value)}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be {allowed}; got {_got(name, value)}")


def _check_float(
    config: TrainConfig, name: str, minimum: float | None = None, strict: bool = False, maximum: float | None = None
) -> None:
    value = getattr(config, name)
    if maximum is not None:
        allowed = f"a number in [{minimum:g}, {maximum:g}]"
    else:
        allowed = "a number" + (f" {'>' if strict else '>='} {minimum:g}" if minimum is not None else "")
    if not _is_number(value) or not math.isfinite(value):
        raise ValueError(f"{name} must be {allowed}; got {_got(name, value)}")
    too_small = minimum is not None and (value <= minimum if strict else value < minimum)
    if too_small or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be {allowed}; got {_got(name, value)}")


def _range_text(minimum: int | None, maximum: int | None, kind: str) -> str:
    if minimum is not None and maximum is not None:
        return f"{kind} in [{minimum}, {maximum}]"
    if minimum is not None:
        return f"{kind} >= {minimum}"
    if maximum is not None:
        return f"{kind} <= {maximum}"
    return kind


def _check_bool(config: TrainConfig, name: str) -> None:
    value = getattr(config, name)
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false; got {_got(name, value)}")


def _check_str(config: TrainConfig, name: str, non_empty: bool = False) -> None:
    value = getattr(config, name)
    if not isinstance(value, str) or (non_empty and not value.strip()):
        raise ValueError(f"{name} must be a {'non-empty ' if non_empty else ''}string; got {_got(name, value)}")


def _check_str_list(config: TrainConfig, name: str, non_empty: bool) -> None:
    value = getattr(config, name)
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError(f"{name} must be a list of non-empty strings; got {_got(name, value)}")
    if non_empty and not value:
        raise ValueError(f"{name} must contain at least one prompt; got []")


def _check_dict(config: TrainConfig, name: str) -> None:
    value = getattr(config, name)
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ValueError(f"{name} must be a mapping of option name: value; got {_got(name, value)}")


def _check_estimator_name(value: str) -> None:
    """Check an estimator name against ``list_estimators()`` when the estimators are importable."""
    try:
        from rlr_core.estimators import list_estimators
    except ImportError:
        return
    names = list(list_estimators())
    if value not in names:
        raise ValueError(f"estimator must be one of {', '.join(names)}; got {value!r}")


def _is_cuda_index(device: str) -> bool:
    return device.startswith("cuda:") and device[5:].isdigit()


def _looks_like_local_path(model: str) -> bool:
    return model != "tiny" and (model.startswith((".", "/", "~")) or os.path.exists(model))
