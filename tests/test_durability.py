"""Issue #10 "Safe to host": config files from strangers, seed bounds, LoRA loading that checks
before it copies, a seeded LoRA initialisation, durable run files, the click log, null fields."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import tracemalloc
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from rlr_core.chain import LinearGaussianChain, QuadraticReward
from rlr_core.cli import main
from rlr_core.config import TrainConfig
from rlr_core.estimators import get_estimator
from rlr_core.rewards.preference import ClickLog, to_uint8
from rlr_core.trainer import Trainer

PROMPTS = ["a red circle", "a blue square"]


# ------------------------------------------------------------------------------------ helpers
def _analytic_trainer(tmp_path, name="run", **overrides) -> Trainer:
    values = dict(
        steps=2, batch_size=8, lr=0.05, num_steps=8, prompts=PROMPTS, eval_seeds=[], eval_every=0,
        checkpoint_every=0, output_dir=str(tmp_path / name), seed=3,
    )
    values.update(overrides)
    return Trainer(LinearGaussianChain(), QuadraticReward(), get_estimator("rlr"), TrainConfig(**values))


def _metrics(output_dir) -> list[dict]:
    return [json.loads(line) for line in Path(output_dir, "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def _tiny_cli_config(tmp_path, name, **overrides) -> Path:
    values = {
        "model": "tiny", "num_steps": 4, "lora_rank": 2, "device": "cpu", "dtype": "float32",
        "reward": "saturation", "estimator": "rlr", "estimator_options": {"h": 1}, "prompts": PROMPTS,
        "steps": 2, "batch_size": 4, "lr": 1e-2, "eval_seeds": [0, 1], "eval_every": 2, "checkpoint_every": 0,
        "output_dir": str(tmp_path / name),
    }
    values.update(overrides)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return path


def _dead_pid() -> int:
    """The pid of a process that has exited."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


# ------------------------------------------------------------------------------------ 1. config files
def _billion_laughs() -> str:
    """9 levels of anchors, each 9 aliases of the one before: 9**9 (387 million) strings once expanded."""
    lines = ["reward_options:", '  a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for previous, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"  {name}: &{name} [{','.join(['*' + previous] * 9)}]")
    return "\n".join(lines) + "\n"


def test_yaml_aliases_are_refused_before_anything_expands(tmp_path):
    text = _billion_laughs()
    assert len(text.encode()) < 500
    path = tmp_path / "laughs.yaml"
    path.write_text(text, encoding="utf-8")
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ValueError, match=r"YAML (aliases|anchors)"):
            TrainConfig.from_file(path)
        seconds = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000, (seconds, peak)  # expanding it would take gigabytes
    assert seconds < 10.0, (seconds, peak)  # a hang catcher only (measured milliseconds)
    with pytest.raises(ValueError, match=r"YAML aliases \(\*x on line 2\)"):
        TrainConfig.from_yaml("prompts: [a]\neval_prompts: *x\n")
    with pytest.raises(ValueError, match=r"YAML anchors \(&p on line 1\)"):
        TrainConfig.from_yaml("prompts: &p [a cat]\n")


def test_yaml_python_tags_stay_inert(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.yaml"
    path.write_text(f"model: !!python/object/apply:os.system ['touch {marker}']\n", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid YAML"):
        TrainConfig.from_file(path)
    assert not marker.exists()


def test_config_file_size_is_limited(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump({"prompts": ["x" * 1000] * 1200}), encoding="utf-8")
    size = path.stat().st_size
    with pytest.raises(ValueError) as info:
        TrainConfig.from_file(path)
    assert f"is {size:,} bytes; the limit is 1,000,000 bytes" in str(info.value)
    assert len(TrainConfig.from_file(path, max_bytes=2_000_000).prompts) == 1200
    small = tmp_path / "small.json"
    TrainConfig().save(small)
    with pytest.raises(ValueError, match="the limit is 100 bytes"):
        TrainConfig.from_file(small, max_bytes=100)


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_deeply_nested_config_is_a_value_error(tmp_path, suffix):
    text = '{"reward_options": {"x": ' + "[" * 100_000 + "]" * 100_000 + "}}"  # JSON is YAML too
    path = tmp_path / f"deep{suffix}"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match="config is nested too deeply"):
        TrainConfig.from_file(path)
    parse = TrainConfig.from_json if suffix == ".json" else TrainConfig.from_yaml
    with pytest.raises(ValueError, match="config is nested too deeply"):
        parse(text)
    assert parse('{"estimator_options": {"window": [4, 12]}}').estimator_options == {"window": [4, 12]}


def test_unknown_keys_are_checked_before_values():
    with pytest.raises(ValueError, match="unknown config key 'stepz'"):
        TrainConfig.from_json('{"stepz": 3, "seed": 1e30, "steps": null}')


# ------------------------------------------------------------------------------------ 2. seeds
@pytest.mark.parametrize(
    "parse, text, shown",
    [
        (TrainConfig.from_json, '{"seed": 1e400}', "inf"),
        (TrainConfig.from_json, '{"seed": 1e30}', "1e+30"),
        (TrainConfig.from_yaml, "seed: 1.0e+400\n", "inf"),
        (TrainConfig.from_yaml, "seed: 1e30\n", "'1e30'"),
        (TrainConfig.from_json, '{"seed": 4294967296}', "4294967296"),
        (TrainConfig.from_json, '{"seed": -1}', "-1"),
    ],
)
def test_seed_must_be_a_32_bit_integer(parse, text, shown):
    with pytest.raises(ValueError) as info:
        parse(text)
    assert str(info.value) == f"seed must be an integer in [0, 4294967295]; got {shown}"


def test_eval_seed_entries_must_be_32_bit_integers():
    assert TrainConfig(seed=2**32 - 1, eval_seeds=[0, 2**32 - 1]).validate().seed == 4294967295
    with pytest.raises(ValueError, match=r"eval_seeds\[1\] must be an integer in \[0, 4294967295\]; got 1e\+30"):
        TrainConfig.from_json('{"eval_seeds": [0, 1e30]}')
    with pytest.raises(ValueError, match=r"eval_seeds\[0\] must be an integer in \[0, 4294967295\]; got inf"):
        TrainConfig.from_yaml("eval_seeds: [.inf]\n")


# ------------------------------------------------------------------------------------ 3. LoRA loading
@pytest.fixture(scope="module")
def tiny_chain():
    from rlr_core.diffusers_chain import load_model

    return load_model("tiny", num_steps=4, lora_rank=2, device="cpu", dtype="float32")


def _random_lora(chain, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(value.shape, generator=generator) for name, value in chain.lora_state_dict().items()}


def _file_key(name: str) -> str:
    """The key in a saved LoRA file of a peft LoRA parameter name: diffusers writes attention layers' as
    ``.lora.down.`` / ``.lora.up.`` and convolutions' as ``.lora_A.`` / ``.lora_B.``."""
    if ".attn" in name:
        return "unet." + name.replace(".lora_A.default.", ".lora.down.").replace(".lora_B.default.", ".lora.up.")
    return "unet." + name.replace(".default.", ".")


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_lora_file_with_one_wrong_shape_leaves_the_lora_bit_identical(tiny_chain, tmp_path):
    from safetensors.torch import load_file, save_file

    tiny_chain.load_lora_state_dict(_random_lora(tiny_chain, 1))
    tiny_chain.save_lora(tmp_path / "good")
    current = _random_lora(tiny_chain, 2)
    tiny_chain.load_lora_state_dict(current)

    tensors = load_file(str(tmp_path / "good" / "pytorch_lora_weights.safetensors"))
    names = list(tiny_chain.lora_state_dict())
    last = names[-1]  # loaded last: every other tensor would be copied before it
    key = _file_key(last)
    assert len(tensors) == len(names) > 1 and key in tensors
    tensors[key] = torch.zeros(tensors[key].shape[0], tensors[key].shape[1] + 1)
    save_file(tensors, str(tmp_path / "bad.safetensors"))

    with pytest.raises(ValueError, match=f"LoRA tensor {last} has shape"):
        tiny_chain.load_lora(tmp_path / "bad.safetensors")
    assert _same(tiny_chain.lora_state_dict(), current)

    state = _random_lora(tiny_chain, 3)
    state[last] = state[last][:, :1]
    with pytest.raises(ValueError, match=f"LoRA tensor {last} has shape"):
        tiny_chain.load_lora_state_dict(state)
    assert _same(tiny_chain.lora_state_dict(), current)

    tiny_chain.load_lora(tmp_path / "good")  # the good file still loads
    assert not _same(tiny_chain.lora_state_dict(), current)


def test_lora_full_of_nan_is_refused_naming_the_first_bad_key(tiny_chain, tmp_path):
    from safetensors.torch import save_file

    current = _random_lora(tiny_chain, 4)
    tiny_chain.load_lora_state_dict(current)
    names = list(current)
    nan_lora = {_file_key(name): torch.full_like(value, float("nan")) for name, value in current.items()}
    save_file(nan_lora, str(tmp_path / "nan.safetensors"))
    with pytest.raises(ValueError) as info:
        tiny_chain.load_lora(tmp_path / "nan.safetensors")
    assert f"LoRA tensor {names[0]} holds non-finite values" in str(info.value)
    assert _same(tiny_chain.lora_state_dict(), current)

    one_inf = dict(current, **{names[5]: current[names[5]].clone().fill_(float("inf"))})
    with pytest.raises(ValueError, match=f"LoRA tensor {names[5]} holds non-finite"):
        tiny_chain.load_lora_state_dict(one_inf)
    assert _same(tiny_chain.lora_state_dict(), current)


def test_pickled_lora_files_are_refused(tiny_chain, tmp_path):
    current = tiny_chain.lora_state_dict()
    for name in ("pytorch_lora_weights.bin", "lora.pt"):
        path = tmp_path / name
        torch.save({_file_key(k): v for k, v in current.items()}, path)
        with pytest.raises(ValueError, match="pickle"):
            tiny_chain.load_lora(path)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        tiny_chain.load_lora(tmp_path / "junk.safetensors")
    assert _same(tiny_chain.lora_state_dict(), current)


# ------------------------------------------------------------------------------------ 4. seeded LoRA init
def test_fresh_run_draws_the_lora_from_the_config_seed(tiny_chain, tmp_path):
    from rlr_core.rewards import get_reward

    def fresh_trainer(name, seed=0):
        config = TrainConfig(model="tiny", num_steps=4, lora_rank=2, reward="saturation", batch_size=4,
                             eval_seeds=[], seed=seed, output_dir=str(tmp_path / name))
        return Trainer(tiny_chain, get_reward("saturation"), get_estimator("rlr", h=1), config)

    torch.manual_seed(11)
    tiny_chain.reset_lora(int(torch.randint(0, 2**31, (1,))))  # an untrained LoRA from "somewhere"
    fresh_trainer("a").start()
    first = tiny_chain.lora_state_dict()
    torch.manual_seed(12)
    tiny_chain.reset_lora(int(torch.randint(0, 2**31, (1,))))
    fresh_trainer("b").start()
    assert _same(tiny_chain.lora_state_dict(), first)  # what the app does: runs share one chain
    assert tiny_chain.lora_is_untrained()
    fresh_trainer("c", seed=1).start()
    assert not _same(tiny_chain.lora_state_dict(), first)

    trained = _random_lora(tiny_chain, 5)  # "continue from the current LoRA": kept
    tiny_chain.load_lora_state_dict(trained)
    trainer = fresh_trainer("d")
    trainer.start()
    assert not trainer.initialize_lora() and _same(tiny_chain.lora_state_dict(), trained)


def test_two_identical_rlr_train_runs_train_identically(tmp_path):
    from safetensors.torch import load_file

    loras, rewards = [], []
    for name, global_seed in (("one", 1), ("two", 2)):
        torch.manual_seed(global_seed)  # peft's own LoRA init draws from the global RNG
        config = _tiny_cli_config(tmp_path, name, batch_size=2, eval_seeds=[0], eval_every=0)
        assert main(["--config", str(config), "--quiet"]) == 0
        loras.append(load_file(str(tmp_path / name / "lora" / "pytorch_lora_weights.safetensors")))
        rewards.append([(line["rewards"], line["eval_rewards"]) for line in _metrics(tmp_path / name)])
    assert _same(*loras)
    assert rewards[0] == rewards[1]  # step 2 and the final evaluation sample with the trained LoRA


# ------------------------------------------------------------------------------------ 5. durable files
def test_resume_rewrites_metrics_through_a_new_file(tmp_path):
    list(_analytic_trainer(tmp_path, steps=2, checkpoint_every=1).run())
    output = tmp_path / "run"
    metrics = output / "metrics.jsonl"
    original = metrics.read_text(encoding="utf-8")
    os.link(metrics, tmp_path / "old-metrics.jsonl")  # shares the inode of the file as it was
    shutil.rmtree(output / "checkpoints" / "step-000002")  # resume from step 1: line 2 is dropped

    resumed = _analytic_trainer(tmp_path, steps=2, checkpoint_every=1, resume=True)
    resumed.start()
    assert [line["step"] for line in _metrics(output)] == [1]
    assert (tmp_path / "old-metrics.jsonl").read_text(encoding="utf-8") == original  # never written in place
    assert not [p.name for p in output.iterdir() if ".tmp-" in p.name]


def test_metrics_lines_store_prompt_indices_not_texts(tmp_path):
    prompts = [f"prompt {i} " + "x" * 20_000 for i in range(16)]
    trainer = _analytic_trainer(tmp_path, prompts=prompts, batch_size=8)
    reports = list(trainer.run())
    lines = _metrics(tmp_path / "run")
    assert all(len(json.dumps(line)) < 5_000 for line in lines)
    assert all("prompts" not in line for line in lines)
    for report, line in zip(reports, lines):
        assert [prompts[i] for i in line["prompt_indices"]] == report.prompts
        assert report.to_json_dict()["prompt_indices"] == line["prompt_indices"]
    # with a schedule every prompt's text is the fine prompt: the indices still say which prompt it was
    scheduled = _analytic_trainer(tmp_path, "scheduled", prompts=["a", "b", "c", "d"], fine_prompt="same text")
    report = next(scheduled.run())
    assert sorted(set(report.prompt_indices)) == [0, 1, 2, 3]
    assert scheduled.prompt_indices(["b", "not in the config"]) == [1, "not in the config"]


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    list(_analytic_trainer(tmp_path, steps=1, checkpoint_every=1).run())
    output, checkpoints = tmp_path / "run", tmp_path / "run" / "checkpoints"
    dead = _dead_pid()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = [output / f".lora.tmp-{dead}", checkpoints / f".step-000002.tmp-{dead}",
                 checkpoints / f".step-000001.old-{dead}"]
        kept = [checkpoints / f".step-000003.tmp-{live.pid}", checkpoints / f".step-000004.tmp-{os.getpid()}"]
        for folder in stale + kept:
            (folder / "part").mkdir(parents=True)
        stale_file = output / f".config.yaml.tmp-{dead}"
        stale_file.write_text("half", encoding="utf-8")
        reused_pid = checkpoints / f".step-000005.tmp-{os.getpid()}"  # a pid reused after a restart
        reused_pid.mkdir()
        os.utime(reused_pid, (time.time() - 3600, time.time() - 3600))

        _analytic_trainer(tmp_path, steps=2, checkpoint_every=1, resume=True).start()
        assert not any(path.exists() for path in [*stale, stale_file, reused_pid])
        assert all(path.is_dir() for path in kept)  # writers still running (maybe this process)
        assert (checkpoints / "step-000001" / "trainer_state.pt").is_file()
    finally:
        live.kill()
        live.wait()


def test_unwritable_output_dir_is_named_before_the_model_loads(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("", encoding="utf-8")

    def no_model(config):
        raise AssertionError("the model was loaded before output_dir was checked")

    monkeypatch.setattr("rlr_core.run.build_chain", no_model)
    config = _tiny_cli_config(tmp_path, "cli", output_dir=str(blocker / "run"))
    assert main(["--config", str(config), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "output_dir" in err and "a-file" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1

    from rlr_core.run import check_config

    with pytest.raises(ValueError, match="^output_dir .* is below .*a-file.*, which is a file"):
        check_config(TrainConfig(output_dir=str(blocker / "run")))  # the builder's one check, before any model loads
    with pytest.raises(ValueError, match="^output_dir .* is a file, not a folder"):
        TrainConfig(output_dir=str(blocker)).check_output_dir()
    assert TrainConfig(output_dir=str(tmp_path / "new" / "run")).check_output_dir() == tmp_path / "new" / "run"
    assert not (tmp_path / "new").exists()  # checking creates nothing


# ------------------------------------------------------------------------------------ 6. click log
def _round(log: ClickLog, round_id: str, seed: int) -> None:
    torch.manual_seed(seed)
    log.append_round(round_id, ["x", "y"], seed, to_uint8(torch.rand(2, 3, 4, 4)), [True, False])


def test_click_log_append_after_a_torn_line_keeps_every_record(tmp_path):
    path = tmp_path / "clicks.jsonl"
    _round(ClickLog(path), "r1", 1)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write('{"type": "click", "round_')  # killed mid-write
    with pytest.warns(UserWarning, match="line 3"):
        log = ClickLog(path)
    _round(log, "r2", 2)
    _round(log, "r3", 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = ClickLog(path)
    assert [(r.round_id, r.index) for r in again.records] == [(f"r{n}", i) for n in (1, 2, 3) for i in (0, 1)]
    assert len(caught) == 1 and "line 3)" in str(caught[0].message) and "torn" in str(caught[0].message)


def test_click_log_skips_lines_that_are_not_records(tmp_path):
    path = tmp_path / "clicks.jsonl"
    _round(ClickLog(path), "r1", 1)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write('[]\n{}\n"text"\n{"type": "click", "round_id": "x"}\n{"type": 5}\n')
    with pytest.warns(UserWarning, match="not a click log record"):
        log = ClickLog(path)
    log.append_event("update", round_id="r1", rewards=[1.0, 0.0])
    _round(log, "r2", 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = ClickLog(path)
    assert [r.round_id for r in again.records] == ["r1", "r1", "r2", "r2"]
    assert [e["type"] for e in again.events] == ["update"]
    assert len(caught) == 1
    assert "skipped 5 unreadable line(s) (line 3, 4, 5, 6, 7)" in str(caught[0].message)


# ------------------------------------------------------------------------------------ 7. null fields
NULLABLE = {"guidance_scale", "lora_alpha", "memory_budget_gb"}


def test_steps_null_is_an_error_naming_steps(tmp_path, capsys):
    config = _tiny_cli_config(tmp_path, "null", steps=None)
    assert main(["--config", str(config), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "steps must be an integer >= 1; got null (leave steps out to get the default, 100)" in err
    assert not (tmp_path / "null").exists()


@pytest.mark.parametrize("name", sorted(set(TrainConfig.field_names()) - NULLABLE))
def test_null_is_refused_for_fields_that_need_a_value(name):
    with pytest.raises(ValueError) as info:
        TrainConfig.from_dict({name: None})
    message = str(info.value)
    assert message.startswith(f"{name} must") and "got null" in message, message


def test_null_means_the_default_for_nullable_fields():
    config = TrainConfig.from_yaml("guidance_scale: null\nlora_alpha:\nmemory_budget_gb: null\n")
    assert (config.guidance_scale, config.lora_alpha, config.memory_budget_gb) == (None, None, None)
