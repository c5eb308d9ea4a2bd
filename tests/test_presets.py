"""Train-form presets (app.presets): they parse into a valid TrainConfig and build a run with the tiny model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from app.form import FIELD_BY_KEY, FORM_DEFAULTS, config_from_form, form_from_config  # noqa: E402
from app.presets import NO_PRESET, PRESETS, apply_preset, preset_names  # noqa: E402
from rlr_core.config import TrainConfig  # noqa: E402
from rlr_core.estimators import ui_options  # noqa: E402
from rlr_core.run import TrainingRun  # noqa: E402

STAR = "Star demo (tiny, offline)"
STAR_RLR = "Star demo, RLR (tiny, offline)"
STAR_YAML = Path(__file__).resolve().parents[1] / "benchmarks" / "star_demo.yaml"


def test_presets_name_only_form_fields():
    assert preset_names()[0] == NO_PRESET and STAR in preset_names()
    for name, values in PRESETS.items():
        assert set(values) <= set(FIELD_BY_KEY), (name, sorted(set(values) - set(FIELD_BY_KEY)))


@pytest.mark.parametrize("hosted", [False, True])
@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_builds_a_run(name, hosted, tmp_path):
    """Locally and in hosted mode (a public Space offers the presets too)."""
    config = config_from_form(apply_preset(name, FORM_DEFAULTS), hosted=hosted, output_dir=str(tmp_path / "run"))
    run = TrainingRun.from_config(config, hosted=hosted)
    assert run.config.model == "tiny" and run.trainer is not None


def test_star_preset_is_the_benchmark_config(tmp_path):
    """The app preset and benchmarks/star_demo.yaml describe the same run."""
    from_app = config_from_form(apply_preset(STAR, FORM_DEFAULTS), hosted=False, output_dir=str(tmp_path))
    from_yaml = TrainConfig.from_file(STAR_YAML)
    for key in ("model", "num_steps", "eta", "lora_rank", "reward", "estimator", "prompts", "steps", "batch_size", "lr", "seed"):
        assert getattr(from_app, key) == getattr(from_yaml, key), key
    assert config_from_form(form_from_config(from_yaml), hosted=False).reward_options == from_app.reward_options
    defaults = ui_options(from_yaml.estimator)  # the form leaves out options at their defaults (h = 2)
    assert {**defaults, **from_app.estimator_options} == {**defaults, **from_yaml.estimator_options}


def test_rlr_star_preset_is_the_benchmark_config_with_the_default_rlr(tmp_path):
    """The RLR star preset is star_demo.yaml with only the estimator changed to rlr, with no hand-set options."""
    from rlr_core.cli import apply_overrides

    from_app = config_from_form(apply_preset(STAR_RLR, FORM_DEFAULTS), hosted=False, output_dir=str(tmp_path))
    from_yaml = apply_overrides(TrainConfig.from_file(STAR_YAML, validate=False), ["estimator=rlr"]).validate()
    for key in ("model", "num_steps", "eta", "lora_rank", "lora_targets", "reward", "estimator", "prompts", "steps",
                "batch_size", "lr", "seed", "reward_options"):
        assert getattr(from_app, key) == getattr(from_yaml, key), key
    assert from_app.estimator == "rlr" and from_app.estimator_options == {}


def test_apply_preset_keeps_other_fields_and_refuses_unknown_names():
    values = {**FORM_DEFAULTS, "eval_every": 3}
    filled = apply_preset(STAR, values)
    assert filled["eval_every"] == 3 and filled["prompt"] == PRESETS[STAR]["prompt"]
    assert apply_preset(NO_PRESET, values) == values
    with pytest.raises(ValueError, match="allowed values"):
        apply_preset("no such preset", values)
