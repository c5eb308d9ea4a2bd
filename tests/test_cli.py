"""``rlr-train`` end to end on a tiny diffusers model, and its error exits."""

from __future__ import annotations

import json

import pytest
import yaml

from rlr_core.cli import apply_overrides, main
from rlr_core.config import TrainConfig


def _write_config(tmp_path, tiny_sd_dir, **overrides):
    values = {
        "model": str(tiny_sd_dir),
        "num_steps": 3,
        "lora_rank": 2,
        "guidance_scale": 3.0,
        "device": "cpu",
        "dtype": "float32",
        "reward": "saturation",
        "estimator": "rlr",
        "estimator_options": {"h": 1},
        "prompts": ["a red circle", "a blue square"],
        "steps": 2,
        "batch_size": 4,
        "lr": "1e-2",
        "eval_seeds": [0, 1, 2],
        "eval_every": 1,
        "checkpoint_every": 1,
        "output_dir": str(tmp_path / "out"),
    }
    values.update(overrides)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_print_config_writes_default_yaml(capsys, tmp_path):
    assert main(["--print-config"]) == 0
    assert TrainConfig.from_dict(yaml.safe_load(capsys.readouterr().out)) == TrainConfig()
    assert main(["--print-config", str(tmp_path / "default.json")]) == 0
    assert TrainConfig.from_file(tmp_path / "default.json") == TrainConfig()


def test_cli_trains_tiny_model_end_to_end(tmp_path, tiny_sd_dir, capsys):
    config_path = _write_config(tmp_path, tiny_sd_dir)
    assert main(["--config", str(config_path)]) == 0
    out = tmp_path / "out"
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2]
    assert all(len(line["rewards"]) == 4 and line["eval_rewards"] for line in lines)
    assert (out / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert (out / "eval" / "before.png").is_file() and (out / "eval" / "step-000002.png").is_file()
    from PIL import Image

    assert Image.open(out / "eval" / "step-000002.png").size == (3 * 16, 16)
    assert TrainConfig.from_file(out / "config.yaml").steps == 2
    captured = capsys.readouterr()
    assert "step 2/2 | reward" in captured.out  # log lines on stdout, the progress bar on stderr
    assert "rlr-train:" in captured.err

    # --resume with more steps continues from the last checkpoint
    assert main(["--config", str(config_path), "--resume", "--steps", "3", "--quiet"]) == 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3]
    assert "resumed from" in lines[2]["message"]


@pytest.mark.parametrize(
    "extra_args, content, field",
    [
        ([], {"steps": 0}, "steps"),
        ([], {"stepz": 3}, "stepz"),
        ([], {"estimator": "sgd"}, "estimator"),
        ([], {"reward": "no-such-reward"}, "reward"),
        ([], {"batch_size": 3}, "batch_size"),  # rlr's antithetic halves need an even batch
        (["--set", "lr=-1"], {}, "lr"),
        (["--set", "estimator_options.h=7"], {}, "h"),  # h must be < num_steps = 3
        (["--set", "nonsense"], {}, "KEY=VALUE"),
        (["--steps", "0"], {}, "steps"),
    ],
)
def test_bad_config_exits_2_naming_the_field(tmp_path, tiny_sd_dir, capsys, extra_args, content, field):
    path = _write_config(tmp_path, tiny_sd_dir, **content)
    assert main(["--config", str(path), *extra_args]) == 2
    err = capsys.readouterr().err
    assert "bad config" in err and field in err, err
    assert not (tmp_path / "out" / "metrics.jsonl").exists()


def test_missing_or_unreadable_config_exits_2(tmp_path, capsys):
    assert main([]) == 2
    assert "--config" in capsys.readouterr().err
    assert main(["--config", str(tmp_path / "missing.yaml")]) == 2
    (tmp_path / "broken.yaml").write_text("steps: [1,\n")
    assert main(["--config", str(tmp_path / "broken.yaml")]) == 2
    (tmp_path / "run.toml").write_text("")
    assert main(["--config", str(tmp_path / "run.toml")]) == 2
    assert ".yaml" in capsys.readouterr().err


def test_set_overrides_parse_yaml_values():
    config = apply_overrides(
        TrainConfig(), ["steps=7", "prompts=[a, b]", "estimator_options.h=3", "guidance_scale=null", "resume=true"]
    )
    assert config.steps == 7 and config.prompts == ["a", "b"] and config.estimator_options == {"h": 3}
    assert config.guidance_scale is None and config.resume is True
