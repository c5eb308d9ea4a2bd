"""The reward-hacking guard in the app: its Train-form fields, the evaluation seeds they need, the Train tab's
guard status and figure, and the Export tab after a keep_best run (the kept LoRA, the last one beside it)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("gradio")

GUARD_KEYS = ("keep_best", "heldout_reward", "heldout_reward_options", "guard_tolerance", "min_diversity",
              "early_stop_patience")


@pytest.fixture()
def studio(tmp_path, monkeypatch):
    monkeypatch.setenv("RLR_STUDIO_HOME", str(tmp_path / "home"))
    from app import state

    yield
    state.reset_all()


def test_guard_fields_round_trip_and_are_train_api_parameters():
    import inspect

    from app.form import FIELD_BY_KEY, FORM_DEFAULTS, config_from_form, form_from_config
    from app.tabs.api import train_endpoint
    from rlr_core.config import field_spec

    assert FORM_DEFAULTS["keep_best"] is True  # on in the app (the library's default is off)
    for key in ("guard_tolerance", "min_diversity", "early_stop_patience"):
        spec = field_spec(key)
        assert (FIELD_BY_KEY[key].minimum, FIELD_BY_KEY[key].maximum) == (spec.min, spec.max)
        assert FORM_DEFAULTS[key] == spec.default
    values = {"model": "some/model", "keep_best": False, "heldout_reward": "aesthetic",
              "heldout_reward_options": '{"clip_model": "tiny-clip"}', "guard_tolerance": 0.25, "min_diversity": 0.3,
              "early_stop_patience": 2}
    config = config_from_form(values, hosted=False)
    assert (config.keep_best, config.heldout_reward, config.heldout_reward_options, config.guard_tolerance,
            config.min_diversity, config.early_stop_patience) == (False, "aesthetic", {"clip_model": "tiny-clip"},
                                                                   0.25, 0.3, 2)
    again = config_from_form(form_from_config(config), hosted=False)
    assert all(getattr(again, key) == getattr(config, key) for key in GUARD_KEYS)
    parameters = inspect.signature(train_endpoint(hosted=False)).parameters
    assert all(key in parameters for key in GUARD_KEYS) and parameters["keep_best"].default is True


@pytest.mark.parametrize("hosted, prompts", [(False, 1), (False, 2), (False, 16), (True, 4)])
def test_four_evaluation_images_per_prompt(hosted, prompts):
    from app.form import FORM_DEFAULTS, config_from_form

    text = "\n".join(f"a shape number {i}" for i in range(prompts))
    config = config_from_form({**FORM_DEFAULTS, "prompt": text}, hosted=hosted)
    assert config.keep_best and config.eval_seeds == list(range(4 * prompts))


@pytest.mark.parametrize("hosted, prompts", [(False, 17), (True, 5)])
def test_too_many_prompts_for_the_diversity_check_evaluate_the_first_prompts(hosted, prompts):
    from app.form import FORM_DEFAULTS, config_from_form
    from app.settings import caps

    text = "\n".join(f"a shape number {i}" for i in range(prompts))
    limit = caps(hosted)["eval_seeds"]
    config = config_from_form({**FORM_DEFAULTS, "prompt": text}, hosted=hosted)
    assert config.eval_prompts == [f"a shape number {i}" for i in range(limit // 4)]
    assert config.eval_seeds == list(range(limit)) and len(config.prompts) == prompts
    for off in ({"min_diversity": 0}, {"keep_best": False}):  # the check is off: as many images as allowed
        config = config_from_form({**FORM_DEFAULTS, "prompt": text, **off}, hosted=hosted)
        assert config.eval_seeds == list(range(limit)) and config.eval_prompts == []


@pytest.mark.parametrize("values, field", [
    ({"guard_tolerance": -0.1}, "Held-out tolerance"),
    ({"min_diversity": 11}, "Minimum diversity"),
    ({"early_stop_patience": -1}, "Early-stop patience"),
    ({"early_stop_patience": 1.5}, "Early-stop patience"),
    ({"heldout_reward": " "}, "Held-out reward"),
    ({"heldout_reward": "no-such-reward"}, "Held-out reward"),
    ({"heldout_reward_options": "[1]"}, "Held-out reward options (JSON)"),
])
def test_bad_guard_values_name_the_field(values, field):
    from app.errors import FieldError
    from app.form import config_from_form

    with pytest.raises(FieldError) as info:
        config_from_form({"model": "some/model", **values}, hosted=False)
    assert info.value.field == field and str(info.value).startswith(field)


def test_keep_best_run_shows_the_guard_and_exports_the_kept_lora(studio):
    """A run whose every evaluation the guard refuses (min_diversity 10: the base model's diversity is 1) keeps
    the LoRA it started from and stops early after its first evaluation (patience 1); the Train tab says so, its
    figure carries the guard's figures, and the Export tab gives the kept LoRA with the last iteration's beside it."""
    import torch
    from safetensors.torch import load_file

    from app import plots, runner
    from app.tabs.train import train_outputs

    config = runner.config_from_form({"model": "tiny", "num_steps": 4, "batch_size": 2, "steps": 3, "eval_every": 1,
                                      "lr": 0.05, "min_diversity": 10, "early_stop_patience": 1}, hosted=False)
    assert config.keep_best and config.eval_seeds == [0, 1, 2, 3]
    statuses = []
    for run in runner.train_stream("g", config, hosted=False):
        statuses.append(train_outputs(run)[2])  # the guard's status text, as the Train tab shows it
    assert run.finished and run.step == 1  # early stop: an evaluation without a better guarded score
    assert len(statuses) == 3 and statuses[0] == ""  # "starting" (no report yet), iteration 1, the end
    during, final = statuses[1], statuses[2]
    assert "**Evaluation at iteration 1**" in during and "refused: diversity" in during and "min_diversity 10" in during
    assert "**Kept LoRA**: iteration 0" in during and "**Stopped early** at iteration 1" in during
    assert "lora-last" not in during and "lora-last" in final  # where the last LoRA is: once the run has ended
    assert run.status.startswith("Stopped at iteration 1; LoRA kept: the guard's pick, iteration 0")
    assert run.history[0]["before_guard"]["diversity"] == 1.0

    frame = plots.guard_frame(run.history)  # the base model at iteration 0, then the (refused) evaluation
    assert sorted(set(frame["step"])) == [0, 1]
    assert set(frame["series"]) == {"held-out reward", "diversity", "KL to base"}
    assert not frame[frame["step"] > 0]["accepted"].any() and plots.kept_step(run.history) == 0
    figure = train_outputs(run)[-1]
    titles = [ax.get_title() for ax in figure.axes]
    assert any(t.startswith("Guard: held-out reward (auto") for t in titles) and any("diversity" in t for t in titles)

    weights, _, note = runner.export("g")
    assert note.startswith("**This LoRA is the one the reward-hacking guard kept: iteration 0**")
    last = runner.last_lora_beside(weights)
    assert last is not None and last.read_bytes() == (run.output_dir / "lora-last" / last.name).read_bytes()
    kept, trained = load_file(str(weights)), load_file(str(last))
    on_disk = load_file(str(run.output_dir / "lora" / weights.name))  # the Trainer's export of the kept LoRA
    assert kept.keys() == on_disk.keys() and all(torch.equal(kept[k], on_disk[k]) for k in kept)
    assert any(not torch.equal(kept[k], trained[k]) for k in kept)  # the last LoRA is not lost: it differs
