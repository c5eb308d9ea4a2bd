"""The reward-hacking guard on the bundled tiny model: held-out reward, diversity and KL at every evaluation,
keep_best, early stop, resume. A saturation run at a high learning rate turns the shapes into coloured noise
within a few iterations (the tiny detector stops reading the prompt): the guard must refuse those evaluations;
a run that barely moves must not be refused."""

from __future__ import annotations

import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rlr_core.config import ConfigError, TrainConfig  # noqa: E402
from rlr_core.rewards import get_reward  # noqa: E402
from rlr_core.run import TrainingRun  # noqa: E402
from rlr_core.sampling import sample  # noqa: E402
from rlr_core.training.guard import Guard, GuardMetrics, diversity_of, prompt_groups  # noqa: E402

PROMPT = "a red circle on a blue background"


def _config(tmp_path, name, **overrides) -> TrainConfig:
    # truncated-bp: the cheapest estimator; the guard does not depend on it
    values = dict(model="tiny", num_steps=8, prompts=[PROMPT], batch_size=4, steps=6, eval_every=2,
                  eval_seeds=list(range(6)), reward="saturation", lr=0.03, seed=0, checkpoint_every=0,
                  estimator="truncated-bp", device="cpu", output_dir=str(tmp_path / name))
    values.update(overrides)
    return TrainConfig(**values)


def _train(config: TrainConfig):
    run = TrainingRun.from_config(config)
    return run, list(run.trainer.run())


def _metrics(config: TrainConfig) -> list[dict]:
    path = os.path.join(config.output_dir, "metrics.jsonl")
    return [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]


def test_diversity_is_the_mean_pairwise_distance_per_prompt():
    unit = torch.eye(3)  # three orthogonal unit vectors: every cosine distance is 1
    assert diversity_of(unit, [[0, 1, 2]], "tiny-clip embeddings") == pytest.approx(1.0)
    same = torch.ones(4, 3) / 3**0.5
    assert diversity_of(same, [[0, 1], [2, 3]], "tiny-clip embeddings") == pytest.approx(0.0, abs=1e-6)
    pixels = torch.tensor([[0.0, 0.0], [2.0, 0.0]])  # RMS difference sqrt(4 / 2)
    assert diversity_of(pixels, [[0, 1]], "pixels") == pytest.approx(2**0.5)
    assert diversity_of(unit, [[0], [1], [2]], "pixels") is None  # no prompt with two images
    assert prompt_groups(["a", "b", "a", "b", "a"]) == [[0, 2, 4], [1, 3]]


def test_guard_refuses_a_fallen_heldout_reward_or_diversity_and_keeps_the_best():
    guard = Guard(keep_best=False, tolerance=0.1, min_diversity=0.5, patience=2)
    guard.set_base([1.0, 1.0], heldout=[10.0, 10.0], diversity_raw=0.4)
    ok = guard.judge(1, [1.5], guard.metrics([9.5], 0.4, None), chain=None)
    assert ok["accepted"] and ok["kept_step"] == 1 and ok["gain"] == pytest.approx(0.5)
    fallen = guard.judge(2, [3.0], guard.metrics([8.9], 0.4, None), chain=None)  # 11% below the base
    assert not fallen["accepted"] and "held-out reward" in fallen["refused"][0] and fallen["kept_step"] == 1
    narrow = guard.judge(3, [3.0], guard.metrics([10.0], 0.1, None), chain=None)  # diversity 0.25
    assert not narrow["accepted"] and "diversity" in narrow["refused"][0] and narrow["stop"]  # patience 2 spent


def test_base_model_figures_and_every_evaluation_line(tmp_path):
    """LoRA untrained (lr tiny): diversity 1.0, held-out reward = the base images' own, KL about 0; every
    evaluation's metrics line carries the three figures."""
    config = _config(tmp_path, "base", lr=1e-12, steps=2, eval_every=1)
    run, reports = _train(config)
    base = reports[0].before_guard
    assert base["diversity"] == 1.0 and base["kl"] == 0.0 and base["space"] == "tiny-clip embeddings"
    chain = run.chain
    prompts = [PROMPT] * len(config.eval_seeds)
    with chain.adapters_disabled():
        images = sample(chain, prompts, seeds=config.eval_seeds)
    by_hand = get_reward("clip", clip_model="tiny-clip")(images, prompts).mean().item()
    assert base["heldout_reward"] == pytest.approx(by_hand, rel=1e-5)
    for report in reports:
        assert report.diversity == pytest.approx(1.0, abs=1e-4)
        assert report.heldout_reward == pytest.approx(by_hand, rel=1e-4)
        assert report.kl == pytest.approx(0.0, abs=1e-6)
    lines = _metrics(config)
    assert all({"heldout_reward", "diversity", "kl", "guard"} <= set(line) for line in lines)
    assert all(line["diversity"] is not None and line["guard"]["accepted"] for line in lines)


def test_a_hacking_run_trips_the_guard_and_the_kept_lora_reproduces_its_evaluation(tmp_path):
    # lr 0.035: on the bundled weights (since 2026-12-06) 0.03 keeps the held-out reward within 5% for 6 iterations;
    # at 0.035 it is below 90% of the base's from the first evaluation on (69% at the last), so the guard keeps the base
    config = _config(tmp_path, "hack", keep_best=True, early_stop_patience=0, lr=0.035)
    run, reports = _train(config)
    verdicts = [r.guard for r in reports if r.guard]
    assert [v["step"] for v in verdicts] == [2, 4, 6]
    assert any(not v["accepted"] for v in verdicts), [v["refused"] for v in verdicts]
    last = reports[-1]
    assert last.reward_mean > reports[0].reward_mean  # the reward climbed ...
    assert last.heldout_reward < 0.9 * reports[0].before_guard["heldout_reward"]  # ... the prompt was lost
    kept = run.trainer.guard.best_step
    assert kept < 6 and not verdicts[-1]["accepted"]
    assert os.path.isdir(os.path.join(config.output_dir, "lora-last"))
    # the exported LoRA, loaded into a fresh model, gives the kept evaluation's rewards exactly
    fresh = TrainingRun.from_config(_config(tmp_path, "fresh", steps=1)).chain
    fresh.load_lora(os.path.join(config.output_dir, "lora"))
    prompts = [PROMPT] * len(config.eval_seeds)
    with torch.no_grad():
        rewards = get_reward("saturation")(sample(fresh, prompts, seeds=config.eval_seeds), prompts)
    expected = reports[kept - 1].eval_rewards if kept else reports[0].before_rewards
    assert [float(r) for r in rewards] == pytest.approx(expected, abs=1e-6)


def test_a_clean_run_is_not_refused(tmp_path):
    config = _config(tmp_path, "clean", lr=1e-4, keep_best=True)
    _, reports = _train(config)
    verdicts = [r.guard for r in reports if r.guard]
    assert verdicts and all(v["accepted"] for v in verdicts), [v["refused"] for v in verdicts]


def test_early_stop_and_resume_keep_the_guard_state(tmp_path):
    # 4 iterations (6 before, 2026-12-04: steps 5 and 6 only repeated step 4's verdict): measured verdicts
    # (accepted, kept step) (T, 1), (T, 1), (F, 1), (F, 1), so the resumed iterations 3 and 4 are both refused
    # and keep the LoRA of step 1 from before the resume, and the early stop (patience 2) comes at step 3
    hack = dict(keep_best=True, steps=4, eval_every=1, checkpoint_every=1, keep_checkpoints=10, num_steps=6,
                eval_seeds=[0, 1, 2, 3], lr=0.05)
    _, whole = _train(_config(tmp_path, "straight", **hack))
    verdicts = [(r.guard["accepted"], r.guard["kept_step"]) for r in whole]
    assert not all(accepted for accepted, _ in verdicts), verdicts
    _train(_config(tmp_path, "resumed", **{**hack, "steps": 2}))
    _, rest = _train(_config(tmp_path, "resumed", **hack, resume=True))
    assert [r.step for r in rest] == list(range(3, 5))
    for a, b in zip(whole[2:], rest):  # the same verdicts: base figures, best so far and patience came back
        assert (a.guard["kept_step"], a.guard["accepted"]) == (b.guard["kept_step"], b.guard["accepted"])
        assert a.heldout_reward == pytest.approx(b.heldout_reward, rel=1e-6)
    # patience 2: the run ends at the second evaluation in a row without a better guarded score
    since, expected_stop = 0, None
    for report in whole:
        since = 0 if report.guard["kept_step"] == report.step else since + 1
        if since >= 2 and expected_stop is None:
            expected_stop = report.step
    _, stopped = _train(_config(tmp_path, "stopped", **{**hack, "early_stop_patience": 2}))
    assert expected_stop is not None and stopped[-1].step == expected_stop
    assert stopped[-1].guard["stop"] and "early stop" in stopped[-1].message


def test_keep_best_needs_four_images_per_prompt():
    with pytest.raises(ConfigError) as error:
        TrainConfig(keep_best=True, prompts=["a", "b"], eval_seeds=[0, 1, 2, 3]).validate()
    assert "eval_seeds" in str(error.value) and error.value.field == "min_diversity"
    TrainConfig(keep_best=True, prompts=["a", "b"], eval_seeds=list(range(8))).validate()
    TrainConfig(keep_best=True, min_diversity=0.0, prompts=["a", "b"]).validate()


def test_guard_metrics_as_dict():
    assert GuardMetrics(1.0, 0.5, 2.0).as_dict() == {"heldout_reward": 1.0, "diversity": 0.5, "kl": 2.0}
