"""The one run object: TrainingRun.from_config builds chain, reward, estimator and Trainer; errors name
the config field; h: auto picks h from the memory model."""

from __future__ import annotations

import pytest

from rlr_core.config import TrainConfig
from rlr_core.run import ConfigError, TrainingRun


def config(tmp_path, model, **changes):
    base = TrainConfig(model=model, num_steps=4, batch_size=4, steps=1, eval_seeds=[], output_dir=str(tmp_path / "run"))
    return base.replace(**changes)


def test_from_config_builds_every_part(tmp_path, tiny_pixel_dir):
    run = TrainingRun.from_config(config(tmp_path, str(tiny_pixel_dir), estimator_options={"h": 1}))
    assert run.trainer.chain is run.chain and run.trainer.reward is run.reward and run.trainer.estimator is run.estimator
    assert run.estimator.h == 1 and run.reward.name == "saturation"
    chain, reward, estimator = run.parts()
    assert (chain, reward, estimator) == (run.chain, run.reward, run.estimator)
    report = next(run.trainer.run())
    assert report.step == 1


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"estimator_options": {"nope": 1}}, "estimator_options"),
        ({"estimator_options": {"h": 9}}, "estimator_options"),  # h > num_steps - 1, found by the Trainer's check
        ({"reward": "no-such-reward"}, "reward"),
        ({"reward_options": {"nope": 1}}, "reward_options"),
        ({"reward": "target-color", "reward_options": {"color": "no colour"}}, "reward_options"),
        ({"batch_size": 3, "estimator": "rlr-paper"}, "batch_size"),  # not a multiple of its 4 noise groups
    ],
)
def test_errors_name_the_config_field(tmp_path, tiny_pixel_dir, changes, field):
    bad = TrainConfig.from_dict({**config(tmp_path, str(tiny_pixel_dir)).to_dict(), **changes}, validate=False)
    with pytest.raises(ConfigError) as info:
        TrainingRun.from_config(bad)
    assert info.value.field == field, str(info.value)


def test_a_given_reward_replaces_the_configured_one(tmp_path, tiny_pixel_dir):
    from rlr_core.rewards.preference import ClickReward

    clicks = ClickReward()
    run = TrainingRun.from_config(config(tmp_path, str(tiny_pixel_dir)), reward=clicks)
    assert run.reward is clicks and run.trainer.noise_groups == run.estimator.noise_groups(False)


def test_h_auto_takes_the_largest_h_that_fits_and_refuses_when_nothing_does(tmp_path, tiny_pixel_dir):
    run = TrainingRun.from_config(config(tmp_path, str(tiny_pixel_dir), estimator_options={"h": "auto"}))
    assert run.estimator.h == 3  # num_steps - 1: everything fits in this machine's memory
    assert run.estimator.auto_choice["h"] == 3 and run.estimator.auto_choice["predicted_gb"] > 0
    with pytest.raises(ConfigError, match="memory_budget_gb") as info:
        TrainingRun.from_config(config(tmp_path, str(tiny_pixel_dir), estimator_options={"h": "auto"},
                                       memory_budget_gb=1e-4))
    assert info.value.field == "estimator_options" and "needs" in str(info.value)
    with pytest.raises(ConfigError, match="h: auto applies to rlr"):
        TrainingRun.from_config(config(tmp_path, str(tiny_pixel_dir), estimator="truncated-bp",
                                       estimator_options={"h": "auto"}))


def test_memory_budget_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="memory_budget_gb"):
        TrainConfig(memory_budget_gb=-1.0).validate()
    assert TrainConfig.from_dict({"memory_budget_gb": "12"}).memory_budget_gb == 12.0


def test_clip_based_rewards_default_to_tiny_clip_for_the_tiny_model():
    from rlr_core.rewards.preference import TINY_MODEL_FEATURES
    from rlr_core.run import reward_options_for

    assert reward_options_for(TrainConfig(model="tiny", reward="clip")) == {"clip_model": "tiny-clip"}
    # the preference head's "auto" features for the tiny model (a weight-free or bundled set, never CLIP)
    assert reward_options_for(TrainConfig(model="tiny", reward="preference")) == {"features": TINY_MODEL_FEATURES}
    assert TINY_MODEL_FEATURES in ("tiny-clip", "layout", "pixels", "tiny-clip+grid", "tiny-clip+grid+colour")
    assert reward_options_for(TrainConfig(model="owner/sd", reward="preference")) == {}
    assert reward_options_for(TrainConfig(model="tiny", reward="preference", reward_options={"features": "pixels"})) == {
        "features": "pixels"}
    assert reward_options_for(TrainConfig(model="tiny", reward="clip", reward_options={"clip_model": "ViT-B-32"})) == {
        "clip_model": "ViT-B-32"}
    assert reward_options_for(TrainConfig(model="owner/sd", reward="clip"))["clip_model"] != "tiny-clip"
    assert reward_options_for(TrainConfig(model="tiny", reward="saturation")) == {}
