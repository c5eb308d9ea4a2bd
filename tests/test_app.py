"""The app without a server: form parsing, hosted mode, Stop, preference, diagnostics, export, ZeroGPU chunks."""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import pytest

pytest.importorskip("gradio")


def form(model: str, **kw):
    return {"model": model, "steps": 2, "eval_every": 1, **kw}


def test_form_to_config_and_back():
    from app import runner

    config = runner.config_from_form(
        {"model": "some/model", "prompt": "a\n\nb ", "window": "0, 3", "h": 3, "zo_scale": 0.02,
         "prompt_boundaries": "1/4, 3/4", "estimator_options": '{"lr_samples": 3}', "guidance_scale": 3},
        hosted=False,
    )
    assert config.prompts == ["a", "b"]
    # the knobs that differ from rlr's defaults, and the JSON options
    assert config.estimator_options == {"h": 3, "zo_scale": 0.02, "window": [0, 3], "lr_samples": 3}
    assert config.prompt_boundaries == [0.25, 0.75] and config.guidance_scale == 3.0
    back = runner.form_from_config(config)
    again = runner.config_from_form(back, hosted=False)
    assert again.to_dict() | {"output_dir": ""} == config.to_dict() | {"output_dir": ""}
    zo = runner.config_from_form({"model": "some/model", "estimator": "zo", "scale": 0.05}, hosted=False)
    assert zo.estimator_options == {"scale": 0.05}
    truncated = runner.config_from_form({"model": "some/model", "estimator": "truncated-bp", "k": 3}, hosted=False)
    assert truncated.estimator_options == {"k": 3}
    assert runner.form_from_config(truncated)["k"] == 3 and runner.form_from_config(truncated)["h"] is None


def test_form_defaults_of_the_rlr_knobs_are_the_library_defaults():
    from app import runner
    from rlr_core.estimators import estimator_options

    from app.form import estimator_field_values

    library = estimator_options("rlr")
    shown = estimator_field_values("rlr")  # what the Train tab shows for the default estimator
    assert {k: shown[k] for k in ("remaining", "zo_scale")} == {k: library[k] for k in ("remaining", "zo_scale")}
    assert shown["h"] == str(library["h"])  # the h field is a dropdown of "auto", "1", "2", ...
    assert runner.config_from_form({"model": "some/model", **shown}, hosted=False).estimator_options == {}
    assert shown["k"] is None and estimator_field_values("truncated-bp")["k"] == 1
    assert runner.config_from_form({"model": "some/model", "h": "auto"}, hosted=False).estimator_options == {"h": "auto"}


def test_the_train_api_has_the_form_fields_as_parameters():
    import inspect

    from app.form import FIELDS
    from app.tabs.api import train_endpoint

    parameters = inspect.signature(train_endpoint(hosted=False)).parameters
    assert list(parameters) == [f.key for f in FIELDS] + ["request"]
    assert parameters["batch_size"].default == 4 and parameters["h"].default is None


@pytest.mark.parametrize(
    "value, text",
    [(5069.039946895227, "5070"), (0.0151234, "0.0151"), (1.23456e-7, "1.23e-07"), (2.5e7, "2.5e+07"),
     (-0.99999, "-1"), (4, "4"), (0.0, "0"), (None, "–"), (float("nan"), "–"), ("full-bp", "full-bp")],
)
def test_three_significant_digits(value, text):
    from app.formatting import format_sig

    assert format_sig(value) == text


def test_diagnostics_table_drops_empty_columns_and_names_headers():
    from app import formatting

    rows = [
        {"estimator": "rlr", "repeats": 4, "single_cosine": 0.0151234, "cosine_to_full_bp": 0.51234,
         "reference": "full-bp", "mean_norm": 5069.039946895227, "total_variance": 12.3456, "norm_fo": 1.0,
         "cos_fo": 0.3, "norm_zo": float("nan"), "cos_zo": None, "seconds": 0.123456, "peak_memory_mb": 0.0,
         "graph_memory_mb": 12.34, "reward_mean": 0.5, "error": None},
        {"estimator": "full-bp", "repeats": 4, "single_cosine": None, "cosine_to_full_bp": 1.0, "reference": "self",
         "mean_norm": 50.0, "total_variance": float("nan"), "seconds": 0.1, "peak_memory_mb": 0.0,
         "graph_memory_mb": 2.0, "reward_mean": 0.4, "error": ""},
    ]
    table = formatting.diagnostics_table(rows)
    assert list(table.columns) == [
        "estimator", "reference", "single-estimate cosine", "cosine of mean", "mean norm", "total variance",
        "FO norm", "FO cosine", "seconds / estimate", "peak memory (MB)", "graph memory (MB)", "reward mean",
        "repeats",
    ]  # ZO norm / ZO cosine / error had no value in any row
    assert table.iloc[0].tolist()[:6] == ["rlr", "full-bp", "0.0151", "0.512", "5070", "12.3"]
    assert table.iloc[1]["single-estimate cosine"] == "–" and table.iloc[1]["FO norm"] == "–"
    html = formatting.diagnostics_html(rows)
    assert "<table" in html and "single-estimate cosine" in html and "ZO cosine" not in html
    # the old row layout (before the per-part keys) still renders
    old = formatting.diagnostics_table([{"estimator": "zo", "repeats": 2, "mean_norm": 1.0, "cosine_to_full_bp": None}])
    assert list(old.columns) == ["estimator", "mean norm", "repeats"]

    signal = formatting.signal_frame(rows)
    assert signal["bar"].tolist() == ["rlr · FO", "rlr · total"]
    assert signal["cosine"].tolist() == [0.3, 0.0151234]
    assert formatting.signal_title(rows) == "Signal of one estimate: cosine to the full-bp mean"


def test_preference_round_and_probe_batch_by_noise_group(studio, monkeypatch):
    import rlr_core.diagnostics
    from app import runner
    from app.state import FieldError

    prompts = ["a red circle", "a blue square", "a green star"]
    values = form(studio, prompt="\n".join(prompts), remaining="zo", batch_size=8)
    with pytest.raises(FieldError, match="Images per round") as info:
        runner.preference_round("g", values, hosted=False, k=6, mode="direct")
    assert "multiple of 4" in str(info.value) and "allowed: 4, 8" in str(info.value)

    run = runner.preference_round("g", values, hosted=False, k=8, mode="direct")
    assert run.estimator.noise_groups(False) == 4
    assert run.round.prompts == [prompts[0]] * 8  # a round shows one prompt (the probe's batch below has them all)

    seen = {}

    def fake_probe(chain, reward, specs, batch, **kwargs):
        seen["prompts"] = batch
        return []

    monkeypatch.setattr(rlr_core.diagnostics, "probe", fake_probe)
    runner.diagnostics("g", values, hosted=False, estimators=["rlr"], repeats=2)
    groups = run.estimator.noise_groups(bool(run.reward.differentiable))
    n = 8 // groups
    assert seen["prompts"] == (prompts * n)[:n] * groups


@pytest.mark.parametrize(
    "values, field",
    [
        ({"estimator_options": "{oops"}, "More estimator options (JSON)"),
        ({"reward_options": "[1]"}, "Reward options (JSON)"),
        ({"batch_size": 0}, "Batch size"),
        ({"num_steps": "x"}, "Sampling steps"),
        ({"prompt": "  "}, "Prompts (one per line)"),
        ({"window": "1, 2", "estimator": "zo"}, "Start window"),
        ({"window": "0.5, 1.5"}, "Start window"),
        ({"estimator": "nope"}, "Estimator"),
        ({"lr": -1}, "Learning rate"),
        ({"prompt_boundaries": "a, b"}, "Prompt boundaries"),
        ({"eta": 2}, "eta"),
        ({"h": "x"}, "h (HO sub-chain length)"),
    ],
)
def test_bad_form_values_name_the_field(values, field):
    from app import runner
    from app.state import FieldError

    with pytest.raises(FieldError) as info:
        runner.config_from_form({"model": "some/model", **values}, hosted=False)
    assert info.value.field == field and field in str(info.value)


def test_hosted_mode_refuses_local_paths_plugins_and_big_sizes(studio):
    from app import runner
    from app.state import FieldError

    with pytest.raises(FieldError, match="Model"):
        runner.config_from_form({"model": studio}, hosted=True)
    with pytest.raises(FieldError, match="Iterations"):
        runner.config_from_form({"model": "owner/model", "steps": 10_000}, hosted=True)
    with pytest.raises(FieldError, match="Batch size"):
        runner.config_from_form({"model": "owner/model", "batch_size": 64}, hosted=True)
    with pytest.raises(FieldError, match="Sampling steps"):
        runner.config_from_form({"model": "owner/model", "num_steps": 500}, hosted=True)
    config = runner.config_from_form(form("tiny", reward="my_module:score"), hosted=False)
    with pytest.raises(FieldError, match="Reward.*plug-in") as info:
        runner.create_run("s", config, hosted=True)
    assert info.value.field == "Reward"


def test_hosted_flag_from_environment(monkeypatch):
    from app.settings import hosted_from_env

    monkeypatch.delenv("RLR_STUDIO_HOSTED", raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    assert not hosted_from_env()
    monkeypatch.setenv("SPACE_ID", "someone/rlr-studio")
    assert hosted_from_env()
    monkeypatch.delenv("SPACE_ID")
    monkeypatch.setenv("RLR_STUDIO_HOSTED", "1")
    assert hosted_from_env()


def test_main_parses_flags():
    from app.__main__ import parse_args

    args = parse_args(["--host", "0.0.0.0", "--port", "7999", "--share", "--hosted"])
    assert (args.host, args.port, args.share, args.hosted) == ("0.0.0.0", 7999, True, True)


def test_stop_ends_within_one_iteration_and_keeps_the_lora(studio):
    from app import runner

    config = runner.config_from_form(form(studio, steps=50, eval_every=0), hosted=False)
    answers = []
    for run in runner.train_stream("s", config, hosted=False):
        if run.step == 1 and not answers:
            answers.append(runner.stop("s"))
    assert run.step == 1 and not run.running  # stopped between iterations: no further iteration
    assert answers == ["Stopping after this iteration; the LoRA is kept."]
    assert run.status.startswith("Stopped at iteration 1; LoRA kept")
    assert (run.output_dir / "lora" / "pytorch_lora_weights.safetensors").is_file()


def test_preference_diagnostics_export_roundtrip(studio, tmp_path):
    import torch

    from app import formatting, runner, state
    from app.state import FieldError
    from rlr_core.diffusers_chain import load_model

    run = runner.preference_round("s", form(studio, num_steps=6), hosted=False, k=4, mode="direct", head_updates=0)  # T = 6: the probe below is the slow part
    assert run.round.size == 4 and len(run.round.pil_images()) == 4
    with pytest.raises(FieldError, match="Preferred images"):
        runner.preference_update("s", [], best_only=False)
    with pytest.raises(FieldError, match="exactly one"):
        runner.preference_update("s", [0, 1], best_only=True)
    # images 0 and 1 come from different noise (0 and 2 are rlr's antithetic twins: clicking both twins of a pair
    # leaves no contrast inside either pair, a zero gradient, and the update is skipped)
    run, update = runner.preference_update("s", [0, 1], best_only=False)
    assert update.rewards == [1.0, 1.0, 0.0, 0.0] and update.update_norm > 0
    assert run.counters == {"rounds": 1, "clicks": 2, "updates": 1, "undone": 0}
    assert (run.output_dir / "clicks.jsonl").is_file()
    # a click update is a Trainer iteration: a step, a metrics line, a row in the run's history
    assert update.report.step == run.step == 1 and len(run.history) == 1
    assert (run.output_dir / "metrics.jsonl").read_text().count("\n") == 1
    with pytest.raises(FieldError, match="Images per round"):
        runner.preference_round("s", {}, hosted=False, k=3, mode="direct", head_updates=0)

    rows = runner.diagnostics("s", {}, hosted=False, estimators=["rlr", "zo"], repeats=2)
    names = [r["estimator"] for r in rows]
    assert names == ["rlr", "zo", "full-bp"]
    assert all(r["total_variance"] >= 0 for r in rows) and rows[0]["cosine_to_full_bp"] is not None
    assert set(formatting.probe_long(rows)["metric"]) >= {"total_variance", "seconds", "peak_memory_mb"}

    weights, config_path, snippet = runner.export("s")
    # the pixel-space test model has no VAE: the snippet uses rlr_core, not a StableDiffusionPipeline
    assert weights.suffix == ".safetensors" and "chain.load_lora" in snippet and "StableDiffusionPipeline" not in snippet
    chain = load_model(studio, num_steps=10, lora_rank=4, device="cpu", dtype="float32")
    chain.load_lora(str(weights))
    expected = state.current_lora(run)
    got = chain.lora_state_dict()
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    # upload the LoRA again into a fresh session, continue training from it
    other = runner.upload_lora("t", str(weights), form(studio), hosted=False)
    assert all(torch.equal(state.current_lora(other)[k], expected[k]) for k in expected)
    loaded = runner.load_config_file(str(config_path), hosted=False)
    assert loaded.model == studio and loaded.lora_rank == 4
    assert not Path(loaded.output_dir).is_absolute() and loaded.checkpoint_every > 0  # runs with rlr-train as is


def test_zerogpu_chunks_keep_state_on_cpu_between_calls(studio, monkeypatch):
    calls = []
    fake = types.ModuleType("spaces")

    def gpu(duration=60):
        def wrap(fn):
            def inner(*args, **kwargs):
                calls.append(args)
                return fn(*args, **kwargs)

            return inner

        return wrap

    fake.GPU = gpu
    monkeypatch.setitem(sys.modules, "spaces", fake)
    monkeypatch.setenv("SPACES_ZERO_GPU", "1")
    monkeypatch.setenv("RLR_STUDIO_CHUNK", "2")
    from app import runner, zerogpu

    zerogpu = importlib.reload(zerogpu)
    try:
        assert zerogpu.zerogpu_active()
        # 4 sampling steps, not the default 20: the chunking does not depend on T (the test took 16 s)
        config = runner.config_from_form(form(studio, steps=5, eval_every=0, num_steps=4), hosted=False)
        steps, between = [], []
        for run in runner.train_stream("z", config, hosted=False):
            steps.append(run.step)
            if run.step:
                between.append((run.entry.owner, run.lora is not None, run.optimizer_state is not None))
        assert steps[-1] == 5 and len(calls) == 3  # chunks of 2, 2, 1
        assert all(owner is None and has_lora and has_opt for owner, has_lora, has_opt in between)
        assert all(v.device.type == "cpu" for v in run.lora.values())
    finally:
        monkeypatch.delitem(sys.modules, "spaces")
        importlib.reload(zerogpu)


def test_predict_memory_before_start_and_h_auto(studio):
    from app import runner
    from app.state import FieldError

    text = runner.predict_memory("p", form(studio, num_steps=4), hosted=False)
    assert text.startswith("Predicted for one rlr estimate (h=2, batch 4)") and "graph" in text and "peak" in text
    auto = runner.predict_memory("p", form(studio, num_steps=4, h="auto"), hosted=False)
    assert "h: auto chose h = 3" in auto  # num_steps - 1: the tiny test model fits anywhere
    with pytest.raises(FieldError, match="Batch size"):
        runner.predict_memory("p", form(studio, batch_size=0), hosted=False)


def test_lora_targets_field_round_trips_and_keys_the_model_cache():
    """The Train form's "LoRA targets": a named set or typed module suffixes reach the config; a config with a
    list shows as a comma-separated string and parses back; other targets are other weights in the model cache
    (the same targets by another name are the same weights, and a LoRA carries over between them)."""
    from app.form import FORM_DEFAULTS, config_from_form, form_from_config
    from app.model_cache import same_lora_layout
    from app.state import model_key
    from app.errors import FieldError
    from rlr_core.config import TrainConfig

    assert FORM_DEFAULTS["lora_targets"] == "auto"
    # "auto" is the model's own targets: on the tiny model the same weights as attention+conv, not attention's
    auto, conv, attention = (config_from_form({**FORM_DEFAULTS, "model": "tiny", "lora_targets": name}, hosted=False)
                             for name in ("auto", "attention+conv", "attention"))
    assert model_key(auto) == model_key(conv) != model_key(attention)
    # and a LoRA trained under one of them continues under the other (a click run after a Train run, a loaded log)
    assert same_lora_layout(auto, conv) and not same_lora_layout(auto, attention)
    assert not same_lora_layout(conv, conv.replace(lora_rank=conv.lora_rank * 2))
    cross = config_from_form({**FORM_DEFAULTS, "lora_targets": "cross-attention"}, hosted=False)
    assert cross.lora_targets == "cross-attention"
    listed = TrainConfig(lora_targets=["attn2.to_k", "attn2.to_v"])
    shown = form_from_config(listed)["lora_targets"]
    assert shown == "attn2.to_k, attn2.to_v"
    again = config_from_form({**FORM_DEFAULTS, "lora_targets": shown}, hosted=False)
    assert model_key(again) == model_key(cross) != model_key(config_from_form(FORM_DEFAULTS, hosted=False))
    with pytest.raises(FieldError) as info:
        config_from_form({**FORM_DEFAULTS, "lora_targets": "self-attention,,"}, hosted=True)
    assert "LoRA targets" in str(info.value) or "lora_targets" in str(info.value)
