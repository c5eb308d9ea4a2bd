"""One configuration object for a training run: the same file for the UI's export and the CLI's input.

``TrainConfig`` is a plain dataclass. It is saved and loaded as YAML or JSON (by file suffix), rejects
unknown keys and validates every field with a message that names the field and its allowed values::

    config = TrainConfig.from_file("run.yaml")
    run = TrainingRun.from_config(config)          # rlr_core.run builds chain, reward, estimator, trainer
    for report in run.trainer.run():
        print(report.step, report.reward_mean)

Each field carries its help, bounds and choices as dataclass metadata (:data:`FIELD_SPECS`,
:func:`field_spec`); ``validate()``, the app's Train form and the field table of docs/config.md
(:func:`markdown_table`, ``python -m rlr_core.config --markdown``) are derived from them. Estimator and
reward names are checked by the builder (``rlr_core.run``), the hosted limits by ``rlr_core.hosted``.

Config files may come from strangers (the app's upload), so reading one is bounded
(``rlr_core.config.files``): at most ``MAX_CONFIG_BYTES``, at most ``MAX_CONFIG_NESTING`` levels of
lists / mappings, and no YAML aliases or anchors. This package imports nothing else from rlr_core.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .files import (MAX_CONFIG_BYTES, MAX_CONFIG_NESTING, nested_deeper_than, parse_json, parse_yaml, read_limited,
                    read_path_or_text, write_text)
from .schema import (AUTO_LORA_TARGETS, DEFAULT_PROMPT_BOUNDARIES, DEVICES, DTYPES, KL_KINDS, KL_TRAJECTORIES,
                     LORA_TARGET_SETS, LR_SCHEDULES, MAX_SEED, REPORT_TO, FieldSpec, check_value, lr_factor,
                     resolve_boundaries, resolve_lora_targets, spec)
from .schema import markdown_table as _markdown_table
from .rules import FIELD_RULES, check_value_of

__all__ = ["TrainConfig", "ConfigError", "FieldSpec", "FIELD_SPECS", "field_spec", "spec", "markdown_table", "DEVICES",
           "DTYPES", "MAX_CONFIG_BYTES", "MAX_CONFIG_NESTING", "MAX_SEED", "REPORT_TO", "LORA_TARGET_SETS",
           "AUTO_LORA_TARGETS",
           "LR_SCHEDULES", "KL_KINDS", "KL_TRAJECTORIES", "DEFAULT_PROMPT_BOUNDARIES", "lr_factor", "resolve_lora_targets",
           "resolve_boundaries",
           "nested_deeper_than", "parse_yaml", "parse_json"]


class ConfigError(ValueError):
    """A bad config value; ``field`` is the TrainConfig field it belongs to (also ``rlr_core.run.ConfigError``)."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name


@dataclass
class TrainConfig:
    """Everything a training run needs. Field order is the order of the saved file; each field's help,
    bounds and choices are in :data:`FIELD_SPECS` (and the table of docs/config.md)."""

    # model and sampler
    model: str = field(default="tiny", metadata=spec(
        "`tiny` (the bundled model), a Hugging Face Hub id or a local diffusers folder", non_empty=True))
    num_steps: int = field(default=20, metadata=spec("sampling steps T", min=2, max=1000))
    guidance_scale: float | None = field(default=None, metadata=spec(
        "classifier-free guidance scale; null = the model's default", min=0.0, max=100.0))
    eta: float = field(default=1.0, metadata=spec(
        "DDIM eta (> 0 makes the steps stochastic; likelihood-ratio terms and the KL need it)", min=0.0, max=1.0,
        interval=True))
    lora_rank: int = field(default=4, metadata=spec("LoRA rank", min=1, max=256))
    lora_alpha: float | None = field(default=None, metadata=spec(
        "LoRA alpha; null = the rank (scale 1)", min=0.0, max=4096.0, min_exclusive=True))
    lora_targets: str | list[str] = field(default="auto", metadata=spec(
        "where the LoRA adapters go: `auto` (the model's own default: `attention+conv` for the bundled tiny model, "
        "`attention` otherwise), `attention` (every attention projection), `cross-attention` (only the keys "
        "and values that read the text: the model keeps drawing what it can draw, it hears the prompt "
        "differently), `attention+conv` (every attention projection and the ResNet blocks' convolutions: the LoRA "
        "can move where things sit) or a list of module-name suffixes", choices=("auto", *LORA_TARGET_SETS),
        open_choices=True))
    gradient_checkpointing: bool = field(default=False, metadata=spec(
        "recompute activations inside gradient segments (less memory, more time)"))
    device: str = field(default="auto", metadata=spec(
        "`auto`, `cpu`, `cuda`, `cuda:N` or `mps`", choices=DEVICES, open_choices=True))
    dtype: str = field(default="auto", metadata=spec(
        "weights' dtype (`auto`: float16 on CUDA, float32 elsewhere; LoRA weights stay float32)", choices=DTYPES))
    memory_budget_gb: float | None = field(default=None, metadata=spec(
        "the memory `h: auto` may plan for, in GB; null = the device's free memory plus the loaded weights",
        min=0.0, max=100_000.0, min_exclusive=True))
    # reward and estimator
    reward: str = field(default="saturation", metadata=spec(
        "reward name of `rlr_core.rewards.get_reward` (or a plug-in `module:function` / file.py)", non_empty=True))
    reward_options: dict[str, Any] = field(default_factory=dict, metadata=spec("keyword options of the reward"))
    estimator: str = field(default="rlr", metadata=spec(
        "gradient estimator name of `rlr_core.estimators.get_estimator` (checked when the run is built)",
        non_empty=True))
    estimator_options: dict[str, Any] = field(default_factory=dict, metadata=spec(
        "keyword options of the estimator, e.g. `{h: 2, remaining: zo}` for rlr; `{h: auto}` picks the largest h "
        "whose predicted memory fits `memory_budget_gb`"))
    # prompts
    prompts: list[str] = field(default_factory=lambda: ["a red circle on a blue background"], metadata=spec(
        "training prompts; each batch draws from them (seeded)", non_empty=True, max_items=10_000))
    coarse_prompt: str = field(default="", metadata=spec(
        "prompt of the first sampling steps (\"\" = off); any of coarse / mid / fine set turns every prompt p into "
        "`ScheduledPrompt(coarse or p, mid or p, fine or p)`"))
    mid_prompt: str = field(default="", metadata=spec("prompt of the middle sampling steps (\"\" = off)"))
    fine_prompt: str = field(default="", metadata=spec("prompt of the last sampling steps (\"\" = off)"))
    prompt_boundaries: list[float] = field(default_factory=lambda: [1 / 3, 2 / 3], metadata=spec(
        "the two boundaries between coarse / mid / fine: step indices (integers, 0 <= a <= b <= num_steps) or "
        "fractions of the chain (0 < a <= b < 1)"))
    eval_prompts: list[str] = field(default_factory=list, metadata=spec(
        "prompts of the evaluation images ([] = the training prompts, cycled)", max_items=10_000))
    # optimization
    steps: int = field(default=100, metadata=spec("training iterations", min=1, max=100_000))
    batch_size: int = field(default=4, metadata=spec(
        "images per iteration (a multiple of the estimator's noise groups)", min=1, max=256))
    lr: float = field(default=1e-3, metadata=spec("AdamW learning rate", min=0.0, max=1.0, min_exclusive=True))
    lr_schedule: str = field(default="constant", metadata=spec(
        "learning rate of iteration s: `lr * lr_factor(lr_schedule, s, steps)`; cosine / linear decay from lr "
        "toward 0 over the iterations", choices=LR_SCHEDULES))
    weight_decay: float = field(default=1e-4, metadata=spec("AdamW weight decay", min=0.0, max=10.0))
    max_grad_norm: float = field(default=1.0, metadata=spec("gradient clipping norm (0 = off)", min=0.0, max=1e6))
    kl_weight: float = field(default=0.0, metadata=spec(
        "weight of the KL(fine-tuned || base) regularisation toward the base model (0 = off; needs eta > 0)",
        min=0.0, max=1000.0))
    kl_steps: int = field(default=4, metadata=spec(
        "chain steps drawn per iteration for the KL estimate (scaled to all T steps)", min=1, max=1000))
    kl_kind: str = field(default="trajectory", metadata=spec(
        "what the KL regulariser counts: `trajectory` = the whole KL; `local` = its part that is not a uniform shift "
        "of a channel over the image (a colour change of a pixel-space model is then free)", choices=KL_KINDS))
    kl_trajectories: str = field(default="sampled", metadata=spec(
        "where the KL's trajectories come from: `sampled` = a batch sampled for the KL; `own` = the iteration's own "
        "batch where the estimator keeps its states (rlr without ZO steps; other estimators sample): no sampling, "
        "but click sessions learned less with it",
        choices=KL_TRAJECTORIES))
    seed: int = field(default=0, metadata=spec(
        "seed of prompts, noises, perturbations and the fresh LoRA (iteration k uses seed (seed, k))",
        min=0, max=MAX_SEED, interval=True))
    # evaluation, logging, checkpoints
    eval_seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3], metadata=spec(
        "one fixed seed per evaluation image", min=0, max=MAX_SEED, max_items=64))
    eval_every: int = field(default=10, metadata=spec(
        "evaluate every N iterations (0 = only before and after)", min=0, max=100_000))
    log_every: int = field(default=10, metadata=spec("CLI log line every N iterations", min=1, max=100_000))
    report_to: str = field(default="none", metadata=spec(
        "experiment tracking (`tensorboard`: event files in output_dir/tensorboard)", choices=REPORT_TO))
    report_samples: int = field(default=0, metadata=spec(
        "training images each StepReport carries as PIL images (at most batch_size)", min=0, max=256))
    checkpoint_every: int = field(default=25, metadata=spec(
        "checkpoint every N iterations (0 = never)", min=0, max=100_000))
    keep_checkpoints: int = field(default=2, metadata=spec("how many checkpoints to keep", min=1, max=1000))
    output_dir: str = field(default="runs/rlr", metadata=spec(
        "where metrics, images, checkpoints and the LoRA go", non_empty=True))
    resume: bool = field(default=False, metadata=spec("continue from the newest checkpoint in output_dir"))
    # reward-hacking guard (docs/guard.md)
    heldout_reward: str = field(default="auto", metadata=spec(
        "a second reward the run does not train on, scored at every evaluation (`heldout_reward` of the metrics): "
        "`auto` = the CLIP score of the prompt (tiny-clip for the tiny model), `none` = off, or a reward name",
        non_empty=True))
    heldout_reward_options: dict[str, Any] = field(default_factory=dict, metadata=spec(
        "keyword options of the held-out reward (e.g. `{text: a red shape}` to score every image against one text)"))
    keep_best: bool = field(default=False, metadata=spec(
        "export the LoRA of the evaluation with the best guarded score (eval reward gain; refused when the held-out "
        "reward or the diversity fell too far) instead of the last; the last goes to output_dir/lora-last"))
    guard_tolerance: float = field(default=0.1, metadata=spec(
        "keep_best refuses an evaluation whose held-out reward fell more than this fraction of |base| below the "
        "base model's", min=0.0, max=10.0))
    min_diversity: float = field(default=0.5, metadata=spec(
        "keep_best refuses an evaluation whose diversity (pairwise distance of the eval images of a prompt, base "
        "model = 1.0) is below this (0 = no diversity check)", min=0.0, max=10.0))
    early_stop_patience: int = field(default=0, metadata=spec(
        "end the run after N evaluations without a better guarded score (0 = never)", min=0, max=100_000))


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
            write_text(Path(path), text)
        return text

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """JSON text of the config; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        if path is not None:
            write_text(Path(path), text)
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
        return cls.from_dict(parse_yaml(read_path_or_text(path_or_text)), validate=validate)

    @classmethod
    def from_json(cls, path_or_text: str | os.PathLike, validate: bool = True) -> "TrainConfig":
        """Load from a JSON file, or from JSON text when the argument is not an existing path.

        Nesting deeper than ``MAX_CONFIG_NESTING`` is refused with a ValueError; a file is read up
        to ``MAX_CONFIG_BYTES``.
        """
        return cls.from_dict(parse_json(read_path_or_text(path_or_text)), validate=validate)

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
        return cls.from_dict(parse(read_limited(path, max_bytes)), validate=validate)

    def replace(self, **changes: Any) -> "TrainConfig":
        """A validated copy with some fields changed (unknown names raise ValueError)."""
        data = self.to_dict()
        data.update(changes)
        return type(self).from_dict(data)

    # ------------------------------------------------------------------ validation
    def validate(self) -> "TrainConfig":
        """Raise :class:`ConfigError` (a ValueError whose ``field`` is the field) naming the first bad field
        and its allowed values; return self.

        Each field is checked against its spec (type, bounds, choices) in file order, a few by their own
        rule (``rlr_core.config.rules``: ``lora_targets``, ``device``, ``prompt_boundaries``, ``report_samples``,
        ``kl_weight``, ``min_diversity``: the checks across fields). Estimator and reward names are checked when the run is built
        (``rlr_core.run``), hosted limits by ``rlr_core.hosted.check_hosted``.
        """
        for name, field_ in FIELD_SPECS.items():
            try:
                FIELD_RULES.get(name, check_value_of)(self, field_)
            except ConfigError:
                raise
            except ValueError as error:
                raise ConfigError(name, str(error)) from None
        return self

    def check_output_dir(self) -> Path:
        """Raise ConfigError naming ``output_dir`` when it cannot be written; return it as a Path.

        Meant to run before a model is loaded. ``output_dir`` need not exist yet: then the nearest
        existing parent must be a writable folder (the Trainer creates the rest). Nothing is left
        behind: a temporary file is opened in that folder and removed at once.
        """
        try:
            check_value(FIELD_SPECS["output_dir"], self.output_dir)
        except ValueError as error:
            raise ConfigError("output_dir", str(error)) from None
        path = Path(self.output_dir).expanduser()
        existing = path
        try:
            while not existing.exists() and existing != existing.parent:
                existing = existing.parent
            if not existing.is_dir():
                what = "is a file" if existing == path else f"is below {str(existing)!r}, which is a file"
                raise ConfigError("output_dir", f"output_dir {self.output_dir!r} {what}, not a folder; choose a folder to write the run to")
            with tempfile.TemporaryFile(dir=existing):
                pass
        except OSError as error:
            raise ConfigError(
                "output_dir", f"output_dir {self.output_dir!r} is not writable ({str(existing)!r}: {error.strerror or error}); "
                "choose a folder this process may write to"
            ) from None
        return path

    # ------------------------------------------------------------------ derived values
    @property
    def uses_prompt_schedule(self) -> bool:
        """True when a coarse, mid or fine prompt is set."""
        return any((self.coarse_prompt, self.mid_prompt, self.fine_prompt))

    def boundary_steps(self) -> tuple[int, int]:
        """``prompt_boundaries`` as step indices (fractions of num_steps are rounded)."""
        return resolve_boundaries(self.num_steps, list(self.prompt_boundaries))


FIELD_SPECS: dict[str, FieldSpec] = {
    f.name: FieldSpec(name=f.name, type=str(f.type), default=f.default if f.default is not dataclasses.MISSING
                      else f.default_factory(), **f.metadata["spec"])  # type: ignore[misc]
    for f in dataclasses.fields(TrainConfig)
}
"""Every TrainConfig field's :class:`FieldSpec` (help, bounds, choices), in file order."""


def field_spec(name: str) -> FieldSpec:
    """The spec of config field ``name``; ValueError naming the allowed names otherwise."""
    if name not in FIELD_SPECS:
        raise ValueError(f"unknown config field {name!r}; allowed: {', '.join(FIELD_SPECS)}")
    return FIELD_SPECS[name]


def markdown_table() -> str:
    """The field reference of docs/config.md (between its ``config-table`` markers), from :data:`FIELD_SPECS`."""
    return _markdown_table(FIELD_SPECS.values())


# ---------------------------------------------------------------------- helpers
def _coerce(name: str, value: Any) -> Any:
    """Convert numeric strings of float fields (``"1e-3"`` from YAML 1.1) and tuples to lists."""
    if FIELD_SPECS[name].base_type == "float" and isinstance(value, str):
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

