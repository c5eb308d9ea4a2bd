"""One source for the config schema and one for the hosted limits: the field specs give validate(), the app's
Train form and the table of docs/config.md; every numeric field is bounded; the YAML format is unchanged."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from rlr_core.config import FIELD_SPECS, ConfigError, TrainConfig, field_spec, markdown_table
from rlr_core.hosted import HOSTED_ENV, HOSTED_LIMITS, check_hosted

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_YAML = """\
model: tiny
num_steps: 20
guidance_scale: null
eta: 1.0
lora_rank: 4
lora_alpha: null
lora_targets: auto
gradient_checkpointing: false
device: auto
dtype: auto
memory_budget_gb: null
reward: saturation
reward_options: {}
estimator: rlr
estimator_options: {}
prompts: [a red circle on a blue background]
coarse_prompt: ''
mid_prompt: ''
fine_prompt: ''
prompt_boundaries: [0.3333333333333333, 0.6666666666666666]
eval_prompts: []
steps: 100
batch_size: 4
lr: 0.001
lr_schedule: constant
weight_decay: 0.0001
max_grad_norm: 1.0
kl_weight: 0.0
kl_steps: 4
kl_kind: trajectory
kl_trajectories: sampled
seed: 0
eval_seeds: [0, 1, 2, 3]
eval_every: 10
log_every: 10
report_to: none
report_samples: 0
checkpoint_every: 25
keep_checkpoints: 2
output_dir: runs/rlr
resume: false
heldout_reward: auto
heldout_reward_options: {}
keep_best: false
guard_tolerance: 0.1
min_diversity: 0.5
early_stop_patience: 0
"""


def test_yaml_format_is_unchanged_and_round_trips(tmp_path):
    assert TrainConfig().to_yaml() == DEFAULT_YAML
    config = TrainConfig(lora_targets=["attn2.to_k", "attn2.to_v"], guidance_scale=7.5, prompts=["a", "b"],
                         estimator_options={"h": 2, "window": [0.0, 0.4]}, eval_seeds=[5, 6], prompt_boundaries=[2, 5])
    text = config.to_yaml()
    assert "lora_targets: [attn2.to_k, attn2.to_v]\n" in text and "estimator_options:\n  h: 2\n  window: [0.0, 0.4]\n" in text
    assert TrainConfig.from_yaml(text) == config
    config.save(tmp_path / "c.yaml")
    config.save(tmp_path / "c.json")
    assert TrainConfig.from_file(tmp_path / "c.yaml") == config == TrainConfig.from_file(tmp_path / "c.json")


def test_every_field_has_a_spec_and_every_numeric_field_min_and_max():
    assert list(FIELD_SPECS) == TrainConfig.field_names()
    for spec in FIELD_SPECS.values():
        assert spec.help, spec.name
        if spec.is_number or spec.base_type in ("list[int]",):
            assert spec.min is not None and spec.max is not None, spec.name
            assert spec.min < spec.max, spec.name
    for name in ("prompts", "eval_prompts", "eval_seeds"):
        assert field_spec(name).max_items is not None, name
    assert field_spec("lr").max == 1.0 and field_spec("lr").min_exclusive
    with pytest.raises(ValueError, match="unknown config field 'stepz'"):
        field_spec("stepz")


@pytest.mark.parametrize(
    "field, value, shown",
    [
        ("lr", 1e30, "lr must be a number > 0, at most 1; got 1e+30"),
        ("lr", float("inf"), "lr must be a number > 0, at most 1; got inf"),
        ("batch_size", -4, "batch_size must be an integer >= 1; got -4"),
        ("steps", 10**9, "steps must be an integer >= 1, at most 100000; got 1000000000"),
        ("num_steps", 10**6, "num_steps must be an integer >= 2, at most 1000"),
        ("lora_rank", 100_000, "lora_rank must be an integer >= 1, at most 256"),
        ("guidance_scale", 1e9, "guidance_scale must be a number >= 0, at most 100, or null"),
        ("kl_weight", 1e12, "kl_weight must be a number >= 0, at most 1000"),
        ("weight_decay", 1e6, "weight_decay must be a number >= 0, at most 10"),
        ("eval_seeds", list(range(65)), "eval_seeds must have at most 64 entries; got 65"),
        ("eval_every", 10**9, "eval_every must be an integer >= 0, at most 100000"),
        ("lr_schedule", "step", "lr_schedule must be one of constant, cosine, linear; got 'step'"),
        ("dtype", "float8", "dtype must be one of auto, float32, float16, bfloat16; got 'float8'"),
    ],
)
def test_validate_refuses_out_of_range_values_naming_the_field(field, value, shown):
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict({field: value})
    assert str(info.value).startswith(shown), str(info.value)
    assert info.value.field == field


def test_yaml_exponent_strings_are_numbers_and_still_bounded():
    assert TrainConfig.from_yaml("lr: 1e-3\n").lr == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="^lr must be a number > 0, at most 1; got 1e[+]?30"):
        TrainConfig.from_yaml("lr: 1e30\n")


def test_the_app_form_takes_its_bounds_and_choices_from_the_config():
    from app.form import FIELDS
    from app.settings import LOCAL_CAPS, caps

    checked = 0
    for field in FIELDS:
        if field.config is None or field.is_estimator_option:
            continue
        spec = field_spec(field.config)
        if spec.is_number:
            assert (field.minimum, field.maximum, field.min_exclusive) == (spec.min, spec.max, spec.min_exclusive), field.key
            assert field.maximum_for(False) == spec.max, field.key  # a local app allows what the config allows
            assert field.maximum_for(True) <= spec.max, field.key
            checked += 1
        if field.kind == "choice" and spec.choices:
            assert field.choices == spec.choices, field.key
            checked += 1
    assert checked >= 10
    for name in ("num_steps", "batch_size", "steps", "lora_rank"):
        assert LOCAL_CAPS[name] == field_spec(name).max and caps(True)[name] == HOSTED_LIMITS[name] <= field_spec(name).max
    assert LOCAL_CAPS["eval_seeds"] == field_spec("eval_seeds").max_items
    assert caps(True) is HOSTED_LIMITS  # the hosted caps are the one table of rlr_core.hosted


def test_hosted_limits_have_one_home():
    from app import settings
    from rlr_core.rewards import plugin

    assert settings.HOSTED_ENV is HOSTED_ENV and plugin.HOSTED_ENV is HOSTED_ENV
    sources = [p for p in [*ROOT.glob("rlr_core/**/*.py"), *ROOT.glob("app/*.py")]
               if re.search(r'^\s*HOSTED_ENV\s*=', p.read_text(), re.M)]
    assert [p.relative_to(ROOT).as_posix() for p in sources] == ["rlr_core/hosted.py"]
    check_hosted(TrainConfig(batch_size=8))
    with pytest.raises(ConfigError, match="batch_size must be at most 8 on a hosted Space; got 16") as info:
        check_hosted(TrainConfig(batch_size=16))
    assert info.value.field == "batch_size"
    with pytest.raises(ConfigError, match="model must be 'tiny' or a Hugging Face Hub id"):
        check_hosted(TrainConfig(model="/some/local/folder"))
    with pytest.raises(ConfigError, match="inner_epochs must be at most 8"):
        check_hosted(TrainConfig(estimator="ddpo", estimator_options={"inner_epochs": 9}))
    with pytest.raises(ConfigError, match="must be at most 100,000") as info:
        check_hosted(TrainConfig(steps=500, batch_size=8, num_steps=50))
    assert info.value.field == "steps"


def test_config_package_imports_nothing_else_from_rlr_core():
    for path in (ROOT / "rlr_core" / "config").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.level == 1 or not (node.module or "").startswith("rlr_core"), (path.name, node.module)
                assert node.level <= 1, (path.name, node.module)
            elif isinstance(node, ast.Import):
                assert not any(alias.name.startswith("rlr_core") for alias in node.names), path.name


def test_estimator_names_are_checked_by_the_builder():
    from rlr_core.run import build_estimator

    TrainConfig(estimator="adam").validate()  # the config cannot know the registry
    with pytest.raises(ConfigError, match="estimator must be one of .*full-bp.*adam") as info:
        build_estimator(TrainConfig(estimator="adam"))
    assert info.value.field == "estimator"


def test_docs_table_is_generated_from_the_specs(capsys):
    from rlr_core.config.__main__ import main

    assert main(["--markdown"]) == 0
    assert capsys.readouterr().out == markdown_table()
    page = (ROOT / "docs" / "config.md").read_text()
    match = re.search(r"<!-- config-table:start -->\n(.*?)<!-- config-table:end -->", page, re.S)
    assert match, "docs/config.md needs the config-table markers"
    assert match.group(1).strip() == markdown_table().strip(), "regenerate it: python -m rlr_core.config --markdown"
    for name in FIELD_SPECS:
        assert f"| `{name}` |" in match.group(1)
