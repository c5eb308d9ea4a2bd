"""TrainConfig (files, validation, build) and the Trainer loop (updates, stop, skip, failure, exact resume)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from rlr_core.chain import LinearGaussianChain, QuadraticReward
from rlr_core.config import TrainConfig
from rlr_core.estimators import get_estimator
from rlr_core.hosted import check_hosted
from rlr_core.prompts import evaluation_prompts, training_prompts
from rlr_core.run import TrainingRun
from rlr_core.trainer import StepReport, Trainer, TrainingStepError, latest_checkpoint

PROMPTS = ["a red circle", "a blue square"]


# ------------------------------------------------------------------------------------ config
def _custom_config(tmp_path) -> TrainConfig:
    return TrainConfig(
        model="tiny",
        num_steps=12,
        guidance_scale=None,
        eta=0.5,
        lora_rank=8,
        lora_alpha=16.0,
        reward="aesthetic",
        reward_options={"cache_dir": "/tmp/x"},
        estimator="rlr",
        estimator_options={"h": 3, "remaining": "lr", "window": [2, 5]},
        prompts=["one", "two words", "ünïcode"],
        coarse_prompt="an outline",
        prompt_boundaries=[3, 8],
        steps=7,
        batch_size=6,
        lr=2.5e-4,
        seed=11,
        eval_seeds=[5, 6],
        eval_every=0,
        output_dir=str(tmp_path / "out"),
    )


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_config_round_trip(tmp_path, suffix):
    config = _custom_config(tmp_path)
    path = tmp_path / f"run{suffix}"
    config.save(path)
    loaded = TrainConfig.from_file(path)
    assert loaded == config
    assert loaded.to_dict() == config.to_dict()
    if suffix == ".json":
        assert json.loads(path.read_text())["lr"] == 2.5e-4
    else:
        assert yaml.safe_load(path.read_text())["estimator_options"]["window"] == [2, 5]


def test_config_defaults_round_trip_and_yaml_exponent_strings(tmp_path):
    assert TrainConfig.from_yaml(TrainConfig().to_yaml()) == TrainConfig()
    # YAML 1.1 reads "1e-3" as a string; numeric fields accept it
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1e-3\nsteps: 3\n")
    assert TrainConfig.from_file(path).lr == pytest.approx(1e-3)


def test_config_unknown_key_names_key_and_allowed(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("stepz: 3\n")
    with pytest.raises(ValueError) as info:
        TrainConfig.from_file(path)
    message = str(info.value)
    assert "'stepz'" in message and "allowed keys" in message and "steps" in message


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("steps", 0, ">= 1"),
        ("batch_size", 0, ">= 1"),
        ("lr", 0.0, "> 0"),
        ("lr", "fast", "> 0"),
        ("num_steps", 1, ">= 2"),
        ("eval_every", -1, ">= 0"),
        ("checkpoint_every", 1.5, "integer"),
        ("eta", 1.5, "[0, 1]"),
        ("max_grad_norm", -1.0, ">= 0"),
        ("weight_decay", float("nan"), ">= 0"),
        ("dtype", "float8", "bfloat16"),
        ("device", "gpu", "cuda"),
        ("prompts", [], "at least one"),
        ("prompts", ["ok", ""], "non-empty strings"),
        ("prompt_boundaries", [8, 3], "prompt_boundaries"),
        ("prompt_boundaries", [0.5], "prompt_boundaries"),
        ("eval_seeds", [1, -2], "integers >= 0"),
        ("report_samples", 9, "[0, 4]"),
        ("resume", "yes", "true or false"),
        ("estimator_options", [1], "mapping"),
    ],
)
def test_config_bad_values_name_the_field(field, value, expected):
    with pytest.raises(ValueError) as info:
        TrainConfig.from_dict({field: value})
    message = str(info.value)
    assert field in message, message
    assert expected in message, message


def test_config_hosted_limits():
    check_hosted(TrainConfig(batch_size=8).validate())
    with pytest.raises(ValueError, match="batch_size must be at most 8"):
        check_hosted(TrainConfig(batch_size=16).validate())
    with pytest.raises(ValueError, match="model"):
        check_hosted(TrainConfig(model="/some/local/folder").validate())


def test_config_prompt_schedule():
    from rlr_core.prompts import ScheduledPrompt

    config = TrainConfig(prompts=["a cat", "a dog"], coarse_prompt="a blob", fine_prompt="", num_steps=9)
    prompts = training_prompts(config)
    assert all(isinstance(p, ScheduledPrompt) for p in prompts)
    assert [p.phases() for p in prompts] == [("a blob", "a cat", "a cat"), ("a blob", "a dog", "a dog")]
    assert config.boundary_steps() == (3, 6)
    assert training_prompts(TrainConfig(prompts=["a cat"])) == ["a cat"]
    assert evaluation_prompts(TrainConfig(eval_seeds=[1, 2, 3], prompts=["x", "y"])) == ["x", "y", "x"]


def test_config_build_tiny_diffusers(tiny_sd_dir):
    config = TrainConfig(
        model=str(tiny_sd_dir), num_steps=3, lora_rank=2, reward="saturation", batch_size=4,
        device="cpu", dtype="float32", coarse_prompt="a blob", prompt_boundaries=[1, 2],
    )
    chain, reward, estimator = TrainingRun.from_config(config).parts()
    assert chain.num_steps == 3 and estimator.name == "rlr" and reward.name == "saturation"
    with pytest.raises(ValueError, match="estimator"):
        TrainingRun.from_config(TrainConfig(model=str(tiny_sd_dir), estimator_options={"nope": 1})).parts()
    with pytest.raises(ValueError, match="batch_size"):  # rlr with antithetic halves needs an even batch
        TrainingRun.from_config(TrainConfig(model=str(tiny_sd_dir), num_steps=3, batch_size=5, device="cpu")).parts()


# ------------------------------------------------------------------------------------ trainer
def _analytic(tmp_path, name="run", estimator="rlr-paper", options=None, **overrides):
    defaults = dict(
        steps=4, batch_size=8, lr=0.05, num_steps=8, prompts=PROMPTS, eval_seeds=[0, 1, 2],
        eval_every=2, checkpoint_every=0, output_dir=str(tmp_path / name), seed=3,
    )
    defaults.update(overrides)
    config = TrainConfig(**defaults)
    chain, reward = LinearGaussianChain(), QuadraticReward()
    return chain, reward, get_estimator(estimator, **(options or {})), config


def _params(chain) -> list[torch.Tensor]:
    return [p.detach().clone() for p in chain.trainable_parameters()]


def _metrics(config) -> list[dict]:
    path = f"{config.output_dir}/metrics.jsonl"
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def test_rlr_training_increases_expected_reward(tmp_path):
    chain, reward, estimator, config = _analytic(tmp_path, steps=30, eval_every=10)
    before = float(chain.expected_reward(reward, PROMPTS).detach())
    reports = list(Trainer(chain, reward, estimator, config).run())
    after = float(chain.expected_reward(reward, PROMPTS).detach())
    assert [r.step for r in reports] == list(range(1, 31))
    assert after > before + 1.0, (before, after)
    first = reports[0]
    assert isinstance(first, StepReport)
    assert set(first.grad_norms) >= {"fo", "ho", "zo", "total"}
    assert set(first.cosines) == {"fo~ho", "fo~zo", "ho~zo"}
    assert all(-1.0 <= c <= 1.0 for c in first.cosines.values())
    assert first.update_norm > 0 and first.skipped is None and first.seconds > 0
    assert len(first.rewards) == 8 and math.isfinite(first.reward_mean)
    assert first.before_rewards is not None and len(first.before_rewards) == 3
    assert [r.step for r in reports if r.eval_rewards is not None] == [10, 20, 30]
    assert first.eval_images is None  # the analytic chain has no images
    lines = _metrics(config)
    assert [line["step"] for line in lines] == list(range(1, 31))
    assert lines[9]["eval_rewards"] == reports[9].eval_rewards


def test_prompt_batches_are_seeded_and_paired(tmp_path):
    chain, reward, estimator, config = _analytic(tmp_path, batch_size=12, prompts=["a", "b", "c"])
    trainer = Trainer(chain, reward, estimator, config)
    # rlr with remaining="zo": +/- ZO halves times antithetic exit twins = 4 groups sharing noise
    assert trainer.noise_groups == 4
    batch = trainer.batch_prompts(1)
    assert batch[:3] == batch[3:6] == batch[6:9] == batch[9:] and sorted(set(batch)) == ["a", "b", "c"]
    assert batch == Trainer(*_analytic(tmp_path, batch_size=12, prompts=["a", "b", "c"])).batch_prompts(1)
    assert torch.equal(
        torch.randn(3, generator=trainer.generator_for(2)), torch.randn(3, generator=trainer.generator_for(2))
    )
    with pytest.raises(ValueError, match="batch_size"):
        Trainer(*_analytic(tmp_path, batch_size=6 + 1))


def test_stop_ends_after_current_iteration_and_keeps_params(tmp_path):
    chain, reward, estimator, config = _analytic(tmp_path, steps=50)
    trainer = Trainer(chain, reward, estimator, config)
    seen = []
    for report in trainer.run():
        seen.append(report.step)
        if report.step == 2:
            params_at_stop = _params(chain)
            trainer.stop()
    assert seen == [1, 2]
    assert all(torch.equal(a, b) for a, b in zip(params_at_stop, _params(chain)))
    from safetensors.torch import load_file

    exported = load_file(f"{config.output_dir}/lora/trainable_parameters.safetensors")
    assert torch.equal(exported["param.0"], params_at_stop[0])
    # a later run() continues where it stopped
    assert [r.step for r in trainer.run(max_iterations=2)] == [3, 4]


def test_stop_before_run_and_closing_the_generator_export_the_lora(tmp_path):
    chain, reward, estimator, config = _analytic(tmp_path, steps=5, eval_seeds=[])
    trainer = Trainer(chain, reward, estimator, config)
    trainer.stop()
    assert list(trainer.run()) == []  # nothing runs, the flag is cleared afterwards
    lora = tmp_path / "run" / "lora" / "trainable_parameters.safetensors"
    assert lora.is_file()
    lora.unlink()
    run = trainer.run()
    assert next(run).step == 1
    run.close()  # a consumer that stops iterating early
    assert lora.is_file() and trainer.step == 1


def test_stop_from_another_thread(tmp_path):
    import threading

    chain, reward, estimator, config = _analytic(tmp_path, steps=10_000, eval_seeds=[])
    trainer = Trainer(chain, reward, estimator, config)
    steps = []
    for report in trainer.run():
        steps.append(report.step)
        if report.step == 3:
            threading.Thread(target=trainer.stop).start()
            threading.Event().wait(0.2)
    assert 3 <= steps[-1] <= 4


def test_non_finite_reward_skips_update_and_keeps_params(tmp_path):
    class FlakyReward(QuadraticReward):
        calls = 0

        def __call__(self, images, prompts):
            FlakyReward.calls += 1
            values = super().__call__(images, prompts)
            if FlakyReward.calls == 2:  # the second training iteration
                values = values.clone()
                values[1] = float("nan")
            return values

    chain, _, estimator, config = _analytic(tmp_path, steps=3, eval_seeds=[], weight_decay=0.1)
    trainer = Trainer(chain, FlakyReward(), estimator, config)
    reports = []
    for report in trainer.run():
        reports.append((report, _params(chain)))
    (r1, p1), (r2, p2), (r3, p3) = reports
    assert r1.skipped is None and r3.skipped is None
    assert r2.skipped is not None and "non-finite" in r2.skipped
    assert r2.update_norm == 0.0 and "skipped" in r2.message
    assert all(torch.equal(a, b) for a, b in zip(p1, p2))  # not even weight decay touched them
    assert not torch.equal(p2[0], p3[0])
    assert math.isfinite(r2.reward_mean)  # mean of the finite rewards
    line = _metrics(config)[1]
    assert line["skipped"] and line["rewards"][1] is None  # NaN written as null: valid JSON


@pytest.mark.parametrize("estimator", ["rlr", "ddpo", "truncated-bp"])
def test_zero_gradient_skips_update_and_keeps_params(tmp_path, estimator):
    """Equal rewards with no reward gradient carry nothing to learn; AdamW would still move the parameters along
    its momentum (and weight decay) if it stepped, as it did in click sessions whose images had saturated."""

    class FlatWhenAsked(QuadraticReward):
        flat = False

        def __call__(self, images, prompts):
            values = super().__call__(images, prompts)
            return values * 0.0 + 1.0 if self.flat else values

    chain, _, estimator, config = _analytic(tmp_path, estimator=estimator, steps=3, eval_seeds=[], weight_decay=0.1)
    reward = FlatWhenAsked()
    reports = []
    for report in Trainer(chain, reward, estimator, config).run():
        reports.append((report, _params(chain)))
        reward.flat = report.step == 1  # the second iteration's rewards are all equal
    (r1, p1), (r2, p2), (r3, p3) = reports
    assert r1.skipped is None and r3.skipped is None and r1.update_norm > 0 and r3.update_norm > 0
    assert r2.skipped is not None and "zero gradient" in r2.skipped and r2.update_norm == 0.0
    assert all(torch.equal(a, b) for a, b in zip(p1, p2))  # neither momentum nor weight decay moved them
    assert not torch.equal(p2[0], p3[0])


def _run(chain, reward, estimator, config):
    return list(Trainer(chain, reward, estimator, config).run())


@pytest.mark.parametrize(
    "estimator, options",
    [("rlr-paper", {"j_sampling": "grad-norm", "baseline": "prompt"}), ("rlr-paper", {"part_weights": "auto"}),
     ("rlr", {}), ("ddpo", {"inner_epochs": 2}), ("zo", {})],
)
def test_resume_is_bit_exact_on_analytic_chain(tmp_path, estimator, options):
    straight = _analytic(tmp_path, "straight", estimator, options, steps=4, checkpoint_every=2)
    straight_reports = _run(*straight)

    first = _analytic(tmp_path, "resumed", estimator, options, steps=2, checkpoint_every=2)
    _run(*first)
    assert latest_checkpoint(first[3].output_dir).name == "step-000002"
    torch.manual_seed(999)  # the global RNG state must come from the checkpoint, not from here
    chain, reward, est, config = _analytic(tmp_path, "resumed", estimator, options, steps=4, checkpoint_every=2, resume=True)
    resumed_reports = _run(chain, reward, est, config)

    assert [r.step for r in resumed_reports] == [3, 4]
    assert "resumed from" in resumed_reports[0].message
    for a, b in zip(straight[0].trainable_parameters(), chain.trainable_parameters()):
        assert torch.equal(a, b)
    assert [r.rewards for r in straight_reports[2:]] == [r.rewards for r in resumed_reports]
    assert [line["rewards"] for line in _metrics(straight[3])] == [line["rewards"] for line in _metrics(config)]


def test_failed_step_saves_lora_and_resumes_exactly(tmp_path):
    class BrokenReward(QuadraticReward):
        def __init__(self, fail_on_call):
            super().__init__()
            self.calls, self.fail_on_call = 0, fail_on_call

        def __call__(self, images, prompts):
            self.calls += 1
            if self.calls == self.fail_on_call:
                raise RuntimeError("reward server down")
            return super().__call__(images, prompts)

    straight = _analytic(tmp_path, "straight", steps=4, eval_seeds=[])
    _run(*straight)

    chain, _, estimator, config = _analytic(tmp_path, "broken", steps=4, eval_seeds=[], checkpoint_every=10)
    trainer = Trainer(chain, BrokenReward(fail_on_call=3), estimator, config)
    with pytest.raises(TrainingStepError) as info:
        for report in trainer.run():
            params_after_2 = _params(chain)
    error = info.value
    assert error.step == 3 and "reward server down" in str(error) and isinstance(error.__cause__, RuntimeError)
    from safetensors.torch import load_file

    assert torch.equal(load_file(f"{error.saved_to}/trainable_parameters.safetensors")["param.0"], params_after_2[0])
    assert error.checkpoint.endswith("step-000002")

    chain2, reward2, estimator2, config2 = _analytic(tmp_path, "broken", steps=4, eval_seeds=[], checkpoint_every=10, resume=True)
    assert [r.step for r in _run(chain2, reward2, estimator2, config2)] == [3, 4]
    assert torch.equal(chain2.theta, straight[0].theta)


def test_ddpo_runs_inner_epochs_on_the_same_rollout(tmp_path):
    chain, reward, estimator, config = _analytic(tmp_path, "ddpo", "ddpo", {"inner_epochs": 3}, steps=2, eval_seeds=[])
    calls = []
    original = estimator.gradient

    def spy(rollout, rewards):
        calls.append(id(rollout))
        return original(rollout, rewards)

    estimator.gradient = spy
    _run(chain, reward, estimator, config)
    assert len(calls) == 6 and len(set(calls[:3])) == 1 and len(set(calls[3:])) == 1 and calls[0] != calls[3]


def test_explicit_checkpoint_round_trip(tmp_path):
    chain, reward, estimator, config = _analytic(tmp_path, steps=2, eval_seeds=[])
    trainer = Trainer(chain, reward, estimator, config)
    _ = list(trainer.run())
    path = trainer.save_checkpoint(tmp_path / "ckpt")
    trainer.save_checkpoint(tmp_path / "ckpt")  # overwriting is atomic and leaves no temporaries
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    other = Trainer(LinearGaussianChain(), reward, get_estimator("rlr"), config)
    assert other.load_checkpoint(path) == 2
    assert torch.equal(other.chain.theta, chain.theta)
    with pytest.raises(ValueError, match="not a checkpoint"):
        other.load_checkpoint(tmp_path)


# ------------------------------------------------------------------------------------ tiny diffusers chain
def _tiny_config(tmp_path, name, **overrides):
    values = dict(
        steps=4, batch_size=4, lr=1e-2, num_steps=4, prompts=["a red circle", "a blue square"],
        eval_seeds=[0, 1], eval_every=2, checkpoint_every=2, output_dir=str(tmp_path / name), seed=5,
        reward="saturation",
    )
    values.update(overrides)
    return TrainConfig(**values)


def test_resume_is_bit_exact_on_tiny_diffusers_chain(tmp_path, tiny_sd_dir):
    from rlr_core.diffusers_chain import load_model
    from rlr_core.rewards import get_reward

    def chain():
        return load_model(str(tiny_sd_dir), num_steps=4, lora_rank=2, guidance_scale=3.0, device="cpu", dtype="float32")

    reward = get_reward("saturation", device="cpu")
    straight = chain()
    initial = straight.lora_state_dict()
    reports = _run(straight, reward, get_estimator("rlr", h=2), _tiny_config(tmp_path, "straight"))
    assert reports[0].before_images is not None and len(reports[1].eval_images) == 2
    assert reports[0].eval_images is None and reports[1].eval_images[0].size == (16, 16)
    assert any(r.update_norm > 0 for r in reports)

    first = chain()
    first.load_lora_state_dict(initial)
    _run(first, reward, get_estimator("rlr", h=2), _tiny_config(tmp_path, "resumed", steps=2))
    resumed = chain()  # fresh LoRA init: everything comes from the checkpoint
    resumed_reports = _run(resumed, reward, get_estimator("rlr", h=2), _tiny_config(tmp_path, "resumed", resume=True))
    assert [r.step for r in resumed_reports] == [3, 4]
    a, b = straight.lora_state_dict(), resumed.lora_state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "resumed" / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert [r.rewards for r in reports[2:]] == [r.rewards for r in resumed_reports]


def test_three_step_run_changes_samples(tmp_path, tiny_sd_dir):
    """Three RLR iterations move the LoRA enough that fixed-seed samples change."""
    import numpy as np

    from rlr_core.diffusers_chain import load_model
    from rlr_core.rewards import get_reward

    chain = load_model(str(tiny_sd_dir), num_steps=4, lora_rank=2, guidance_scale=3.0, device="cpu", dtype="float32")
    config = _tiny_config(tmp_path, "three", steps=3, eval_every=3, lr=1e-2)
    reports = _run(chain, get_reward("saturation", device="cpu"), get_estimator("rlr", h=2), config)
    before = np.stack([np.asarray(im, dtype=np.float64) for im in reports[0].before_images])
    after = np.stack([np.asarray(im, dtype=np.float64) for im in reports[-1].eval_images])
    assert before.shape == after.shape
    assert np.abs(after - before).mean() > 0.5, "fixed-seed samples did not change after 3 steps"
    assert all(r.skipped is None for r in reports) and all(r.update_norm > 0 for r in reports)


def test_metrics_lines_name_the_checkpoint_written_after_their_iteration(tmp_path):
    chain, reward, estimator, config = _analytic(tmp_path, steps=3, checkpoint_every=2, eval_every=0)
    reports = list(Trainer(chain, reward, estimator, config).run())
    lines = _metrics(config)
    assert [line["checkpoint"] is not None for line in lines] == [False, True, True]  # steps 2 and 3 (the last)
    assert [line["checkpoint"] for line in lines] == [r.checkpoint for r in reports]
    assert all(Path(line["checkpoint"], "trainer_state.pt").is_file() for line in lines[2:])


def test_lr_schedule_sets_each_iterations_learning_rate(tmp_path):
    """lr_schedule "cosine" / "linear": iteration s runs AdamW at lr * lr_factor(schedule, s, steps), reported in
    info["lr"]; the first iteration is the same as a constant run, later ones move less; bad names are refused."""
    from rlr_core.config import lr_factor

    assert [lr_factor("constant", s, 4) for s in (1, 4)] == [1.0, 1.0]
    assert [round(lr_factor("cosine", s, 4), 6) for s in (1, 2, 3, 4)] == [1.0, 0.853553, 0.5, 0.146447]
    assert [lr_factor("linear", s, 4) for s in (1, 2, 3, 4)] == [1.0, 0.75, 0.5, 0.25]
    runs = {}
    for schedule in ("constant", "cosine"):
        chain, reward, estimator, config = _analytic(tmp_path, name=schedule, lr_schedule=schedule, eval_every=0)
        trainer = Trainer(chain, reward, estimator, config)
        reports = list(trainer.run())
        runs[schedule] = (reports, trainer)
    constant, cosine = runs["constant"][0], runs["cosine"][0]
    assert [r.info.get("lr") for r in cosine] == [pytest.approx(0.05 * lr_factor("cosine", s, 4)) for s in (1, 2, 3, 4)]
    assert "lr" not in constant[0].info
    assert cosine[0].update_norm == pytest.approx(constant[0].update_norm)
    assert cosine[-1].update_norm < constant[-1].update_norm * 0.5
    assert runs["cosine"][1].optimizer.param_groups[0]["lr"] == pytest.approx(0.05 * lr_factor("cosine", 4, 4))
    assert _metrics(runs["cosine"][1].config)[-1]["info"]["lr"] == pytest.approx(0.05 * lr_factor("cosine", 4, 4))
    with pytest.raises(ValueError, match="lr_schedule must be one of constant, cosine, linear"):
        TrainConfig(lr_schedule="step").validate()
