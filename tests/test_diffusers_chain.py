"""DiffusersChain on tiny real diffusers models (built in conftest, offline, CPU)."""

from __future__ import annotations

import json
import pickle
import shutil
import time

import pytest
import torch

from rlr_core.chain import Chain
from rlr_core.diffusers_chain import DiffusersChain, ModelUnavailableError, load_model
from rlr_core.prompts import ScheduledPrompt, phase_of_step, resolve_boundaries, scheduled_from_template


def _randomize_lora(chain: DiffusersChain, seed: int = 0, scale: float = 0.3) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in chain.trainable_parameters():
            p.copy_(scale * torch.randn(p.shape, generator=gen))


def _unet_out(chain: DiffusersChain, seed: int = 3) -> torch.Tensor:
    cond = chain.condition(["a red circle", "a blue square"])
    x = chain.initial(2, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return chain.model_output(x, 1, cond)


# --- prompts ----------------------------------------------------------------------------------


def test_scheduled_prompt_and_phases():
    sp = ScheduledPrompt("outline", "", "a red circle on blue")
    assert sp == "a red circle on blue" and isinstance(sp, str)
    assert (sp.coarse, sp.mid, sp.fine) == ("outline", "a red circle on blue", "a red circle on blue")
    again = pickle.loads(pickle.dumps(sp))
    assert isinstance(again, ScheduledPrompt) and again.coarse == "outline"
    tpl = scheduled_from_template("a cat")
    assert tpl == tpl.fine and "a cat" in tpl.coarse and "a cat" in tpl.mid and tpl.coarse != tpl.fine
    assert [phase_of_step(k, 6) for k in range(6)] == [0, 0, 1, 1, 2, 2]
    assert [phase_of_step(k, 5, (1, 4)) for k in range(5)] == [0, 1, 1, 1, 2]
    assert [phase_of_step(k, 10, (0.5, 0.8)) for k in range(10)] == [0] * 5 + [1] * 3 + [2] * 2
    assert resolve_boundaries(4, (0, 4)) == (0, 4)


@pytest.mark.parametrize("bad", [(3, 1), (1, 9), (0.0, 0.5), (0.5, 1.0), (1, 0.5), (1,), "ab", (True, 2)])
def test_prompt_boundaries_validation(bad):
    with pytest.raises(ValueError, match="prompt_boundaries"):
        resolve_boundaries(6, bad)


# --- protocol ---------------------------------------------------------------------------------


def test_protocol_shapes_and_describe(tiny_chain, tiny_pixel_chain):
    for chain, channels in ((tiny_chain, 4), (tiny_pixel_chain, 3)):
        assert isinstance(chain, Chain)
        assert chain.num_steps == 4
        x0 = chain.initial(2, torch.Generator().manual_seed(0))
        assert x0.shape == (2, channels, *chain.latent_size) and x0.dtype == torch.float32
        assert torch.equal(x0, chain.initial(2, torch.Generator().manual_seed(0)))
        cond = chain.condition(["a red circle", "a blue square"])
        x = x0
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for k in range(chain.num_steps):
                mean, std = chain.step_mean_std(x, k, cond)
                assert isinstance(std, float) and mean.dtype == torch.float32 and mean.shape == x.shape
                x = mean + std * torch.randn(mean.shape, generator=gen)
            images = chain.decode(x)
        assert images.shape == (2, 3, 16, 16) and images.dtype == torch.float32
        assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
        info = chain.describe()
        assert info["lora_rank"] == 2 and info["num_steps"] == 4 and info["trainable_parameters"] > 0
        assert info["device"] == "cpu" and info["dtype"] == "float32"


def test_only_lora_trainable_and_receives_gradients(tiny_chain):
    chain = tiny_chain
    _randomize_lora(chain)
    lora_ids = {id(p) for p in chain.trainable_parameters()}
    assert len(lora_ids) == len(chain.trainable_parameters()) > 0
    for module in (chain.unet, chain.text_encoder, chain.vae):
        for name, p in module.named_parameters():
            assert p.requires_grad == (id(p) in lora_ids), name
    assert all(p.dtype == torch.float32 for p in chain.trainable_parameters())
    cond = chain.condition(["a red circle", "a blue square"])
    x = chain.initial(2, torch.Generator().manual_seed(0)).requires_grad_(True)
    mean, _ = chain.step_mean_std(x, chain.num_steps - 1, cond)
    chain.decode(mean).square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for module in (chain.unet, chain.text_encoder, chain.vae):
        for name, p in module.named_parameters():
            if id(p) in lora_ids:
                assert p.grad is not None and torch.isfinite(p.grad).all(), name
            else:
                assert p.grad is None, name
    assert sum(float(p.grad.abs().sum()) for p in chain.trainable_parameters()) > 0


def test_gradient_checkpointing_gives_same_gradients(tiny_pixel_chain):
    chain = tiny_pixel_chain
    _randomize_lora(chain)
    cond = chain.condition(["a red circle"])
    x = chain.initial(1, torch.Generator().manual_seed(0))
    grads = []
    for flag in (False, True):
        chain.gradient_checkpointing = flag
        for p in chain.trainable_parameters():
            p.grad = None
        mean, _ = chain.step_mean_std(x, 1, cond)
        chain.decode(mean).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in chain.trainable_parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)


def test_trainable_parameter_order_is_fixed(tiny_sd_dir):
    a = load_model(str(tiny_sd_dir), num_steps=4, lora_rank=2, device="cpu", dtype="float32")
    b = load_model(str(tiny_sd_dir), num_steps=4, lora_rank=2, device="cpu", dtype="float32")
    assert list(a.lora_state_dict()) == list(b.lora_state_dict())
    assert [tuple(p.shape) for p in a.trainable_parameters()] == [tuple(p.shape) for p in b.trainable_parameters()]


# --- DDIM step --------------------------------------------------------------------------------


def _ddim_sigma(chain: DiffusersChain, k: int) -> float:
    a_t, a_prev = chain._alpha_t[k], chain._alpha_prev[k]
    return ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) ** 0.5


def test_step_std_follows_eta_and_final_eta(tiny_sd_dir):
    half = load_model(str(tiny_sd_dir), num_steps=4, lora_rank=2, eta=0.5, final_eta=0.0, device="cpu")
    final = load_model(str(tiny_sd_dir), num_steps=4, lora_rank=2, eta=1.0, final_eta=0.3, device="cpu")
    cond = half.condition(["x"])
    x = half.initial(1, torch.Generator().manual_seed(0))
    for k in range(3):
        assert half.step_std(k) == pytest.approx(0.5 * _ddim_sigma(half, k))
        assert final.step_std(k) == pytest.approx(_ddim_sigma(final, k))
    with torch.no_grad():
        assert half.step_mean_std(x, 3, cond)[1] == 0.0
    assert final.step_std(3) == pytest.approx(0.3 * _ddim_sigma(final, 3)) and final.step_std(3) > 0
    assert half.step_std(0) > 0.1


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_step_mean_matches_diffusers_ddim(tiny_pixel_dir, prediction_type):
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    config = dict(DDIMScheduler.load_config(tiny_pixel_dir, subfolder="scheduler"))
    config["prediction_type"] = prediction_type
    chain = DiffusersChain(
        UNet2DConditionModel.from_pretrained(tiny_pixel_dir, subfolder="unet"),
        CLIPTextModel.from_pretrained(tiny_pixel_dir, subfolder="text_encoder"),
        CLIPTokenizer.from_pretrained(tiny_pixel_dir, subfolder="tokenizer"),
        DDIMScheduler.from_config(config), num_steps=4, guidance_scale=2.0, eta=0.7, final_eta=0.2, lora_rank=2,
    )
    reference = DDIMScheduler.from_config(config)
    reference.set_timesteps(4)
    cond = chain.condition(["a red circle", "a blue square"])
    x = chain.initial(2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        for k in range(4):
            mean, std = chain.step_mean_std(x, k, cond)
            out = chain.model_output(x, k, cond)
            eta = 0.2 if k == 3 else 0.7
            expected = reference.step(out, reference.timesteps[k], x, eta=eta, variance_noise=torch.zeros_like(x))
            torch.testing.assert_close(mean, expected.prev_sample, rtol=1e-4, atol=1e-4)
            x = mean + std * torch.randn(x.shape, generator=torch.Generator().manual_seed(k))


def test_classifier_free_guidance_on_and_off(tiny_chain):
    chain = tiny_chain
    calls: list[int] = []
    handle = chain.unet.register_forward_hook(lambda m, args, kwargs_out: calls.append(args[0].shape[0]))
    try:
        cond = chain.condition(["a red circle", "a blue square"])
        x = chain.initial(2, torch.Generator().manual_seed(0))
        with torch.no_grad():
            chain.guidance_scale = 1.0
            out_cond = chain.model_output(x, 1, cond)
            assert calls == [2]
            uncond_only = type(cond)((cond.uncond_embeds,) * 3, cond.uncond_embeds, cond.prompts, cond.boundaries)
            out_uncond = chain.model_output(x, 1, uncond_only)
            chain.guidance_scale = 3.0
            calls.clear()
            out_cfg = chain.model_output(x, 1, cond)
            assert calls == [4]
    finally:
        handle.remove()
    torch.testing.assert_close(out_cfg, out_uncond + 3.0 * (out_cond - out_uncond), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(out_cond, out_uncond)


def test_prompt_schedule_picks_phase_embedding(tiny_sd_dir):
    chain = load_model(str(tiny_sd_dir), num_steps=4, lora_rank=2, guidance_scale=1.0, device="cpu",
                       prompt_boundaries=(1, 3))
    prompts = [ScheduledPrompt("a red blob", "a red circle", "a shiny red circle"), "a blue square"]
    cond = chain.condition(prompts)
    plain = chain.condition(["a red blob", "a red circle", "a shiny red circle", "a blue square"])
    for phase in range(3):
        torch.testing.assert_close(cond.phase_embeds[phase][0], plain.phase_embeds[0][phase])
        torch.testing.assert_close(cond.phase_embeds[phase][1], plain.phase_embeds[0][3])
    seen: list[torch.Tensor] = []
    handle = chain.unet.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs["encoder_hidden_states"].clone()), with_kwargs=True
    )
    try:
        x = chain.initial(2, torch.Generator().manual_seed(0))
        with torch.no_grad():
            for k in range(4):
                chain.step_mean_std(x, k, cond)
    finally:
        handle.remove()
    assert [cond.phase(k) for k in range(4)] == [0, 1, 1, 2]
    for k, phase in enumerate([0, 1, 1, 2]):
        torch.testing.assert_close(seen[k], cond.phase_embeds[phase])
    assert not torch.allclose(cond.phase_embeds[0][0], cond.phase_embeds[2][0])
    half = cond.select([1])
    assert half.prompts == ["a blue square"] and half.batch_size == 1


# --- LoRA handling ----------------------------------------------------------------------------


def test_perturbed_restores_exactly(tiny_chain):
    chain = tiny_chain
    _randomize_lora(chain)
    before = [p.detach().clone() for p in chain.trainable_parameters()]
    with chain.perturbed(seed=7, scale=0.1):
        assert any(not torch.equal(p, b) for p, b in zip(chain.trainable_parameters(), before))
    assert all(torch.equal(p, b) for p, b in zip(chain.trainable_parameters(), before))
    with pytest.raises(RuntimeError):
        with chain.perturbed(seed=7, scale=0.1):
            raise RuntimeError("boom")
    assert all(torch.equal(p, b) for p, b in zip(chain.trainable_parameters(), before))


def test_adapters_disabled_gives_base_output(tiny_chain):
    chain = tiny_chain
    base = _unet_out(chain)  # fresh LoRA (B = 0) is the base model
    _randomize_lora(chain)
    tuned = _unet_out(chain)
    assert not torch.allclose(base, tuned)
    with chain.adapters_disabled():
        torch.testing.assert_close(_unet_out(chain), base, rtol=0, atol=0)
    torch.testing.assert_close(_unet_out(chain), tuned, rtol=0, atol=0)
    with pytest.raises(KeyError):
        with chain.adapters_disabled():
            raise KeyError("boom")
    torch.testing.assert_close(_unet_out(chain), tuned, rtol=0, atol=0)


def test_save_load_lora_round_trip_is_exact(tiny_sd_dir, tmp_path):
    chain = load_model(str(tiny_sd_dir), num_steps=4, lora_rank=2, lora_alpha=4, device="cpu")
    _randomize_lora(chain, seed=5)
    chain.save_lora(tmp_path / "lora")
    info = json.loads((tmp_path / "lora" / "rlr_lora.json").read_text())
    assert info["lora_rank"] == 2 and info["lora_alpha"] == 4 and info["base_model"] == str(tiny_sd_dir)
    other = load_model(str(tiny_sd_dir), num_steps=4, lora_rank=2, lora_alpha=4, device="cpu")
    other.load_lora(tmp_path / "lora")
    a, b = chain.lora_state_dict(), other.lora_state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    third = load_model(str(tiny_sd_dir), num_steps=4, lora_rank=2, lora_alpha=4, device="cpu")
    third.load_lora_state_dict(a)
    assert all(torch.equal(p, q) for p, q in zip(third.trainable_parameters(), chain.trainable_parameters()))
    assert all(v.device.type == "cpu" for v in a.values())
    wrong_rank = load_model(str(tiny_sd_dir), num_steps=4, lora_rank=3, device="cpu")
    with pytest.raises(ValueError, match="lora_rank"):
        wrong_rank.load_lora(tmp_path / "lora")


def test_saved_lora_loads_into_plain_diffusers(tiny_sd_dir, tmp_path):
    from diffusers import StableDiffusionPipeline

    chain = load_model(str(tiny_sd_dir), num_steps=4, lora_rank=2, lora_alpha=4, device="cpu")
    _randomize_lora(chain, seed=9)
    chain.save_lora(tmp_path / "lora")
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_dir, safety_checker=None, requires_safety_checker=False)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor(chain.timestep(1))
    emb = chain.condition(["a red circle", "a blue square"]).phase_embeds[2]
    with torch.no_grad():
        base = pipe.unet(x, t, encoder_hidden_states=emb).sample
        pipe.load_lora_weights(str(tmp_path / "lora"))
        plain = pipe.unet(x, t, encoder_hidden_states=emb).sample
        ours = chain.unet(x, t, encoder_hidden_states=emb).sample
    assert not torch.allclose(base, ours)
    torch.testing.assert_close(plain, ours, rtol=1e-5, atol=1e-6)


def test_fp32_lora_on_bfloat16_base(tiny_pixel_dir):
    chain = load_model(str(tiny_pixel_dir), num_steps=3, lora_rank=2, device="cpu", dtype="bfloat16")
    lora_ids = {id(p) for p in chain.trainable_parameters()}
    assert all(p.dtype == torch.float32 for p in chain.trainable_parameters())
    assert all(p.dtype == torch.bfloat16 for p in chain.unet.parameters() if id(p) not in lora_ids)
    _randomize_lora(chain)
    cond = chain.condition(["a red circle"])
    x = chain.initial(1, torch.Generator().manual_seed(0))
    mean, _ = chain.step_mean_std(x, 2, cond)
    assert mean.dtype == torch.float32 and torch.isfinite(mean).all()
    chain.decode(mean).mean().backward()
    grads = [p.grad for p in chain.trainable_parameters()]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


# --- loading ----------------------------------------------------------------------------------


def test_load_model_folders_defaults_and_tiny(tiny_pixel_dir, tmp_path, monkeypatch):
    import rlr_core.models.loading as dc

    folder = tmp_path / "model"
    shutil.copytree(tiny_pixel_dir, folder)
    (folder / "rlr_studio.json").write_text(json.dumps({"guidance_scale": 2.5, "num_steps": 3}))
    chain = load_model(str(folder), device="cpu")
    assert (chain.num_steps, chain.guidance_scale, chain.vae) == (3, 2.5, None)
    assert chain.dtype == torch.float32 and chain.device.type == "cpu"
    chain = load_model(str(folder), num_steps=5, guidance_scale=1.0, device="cpu")
    assert (chain.num_steps, chain.guidance_scale) == (5, 1.0)
    monkeypatch.setattr(dc, "TINY_MODEL_DIR", folder)
    tiny = load_model("tiny", device="cpu")
    assert tiny.describe()["model"] == "tiny" and tiny.num_steps == 3


def test_offline_hub_id_fails_fast_with_clear_message():
    start = time.monotonic()
    with pytest.raises(ModelUnavailableError) as info:
        load_model("someone/not-a-cached-model", device="cpu")
    assert time.monotonic() - start < 15
    message = str(info.value)
    assert "someone/not-a-cached-model" in message and "Hugging Face Hub" in message
    assert "could not be reached" in message


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"num_steps": 0}, "num_steps"),
        ({"eta": 1.5}, "eta"),
        ({"final_eta": -0.1}, "final_eta"),
        ({"lora_rank": 0}, "lora_rank"),
        ({"guidance_scale": -1.0}, "guidance_scale"),
        ({"device": "tpu"}, "device"),
        ({"dtype": "int8"}, "dtype"),
        ({"prompt_boundaries": (3, 1)}, "prompt_boundaries"),
    ],
)
def test_bad_inputs_name_the_field(tiny_pixel_dir, kwargs, field):
    args = {"num_steps": 4, "device": "cpu", **kwargs}
    with pytest.raises(ValueError, match=field):
        load_model(str(tiny_pixel_dir), **args)


def test_bad_model_and_call_inputs(tiny_pixel_chain, tmp_path):
    with pytest.raises(ValueError, match="model"):
        load_model(str(tmp_path / "missing-folder"), device="cpu")
    with pytest.raises(ValueError, match="model folder"):
        load_model(str(tmp_path), device="cpu")
    cond = tiny_pixel_chain.condition(["a"])
    x = tiny_pixel_chain.initial(1, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="step k"):
        tiny_pixel_chain.step_mean_std(x, 4, cond)
    with pytest.raises(ValueError, match="prompts"):
        tiny_pixel_chain.condition("a single string")
    with pytest.raises(ValueError, match="batch size"):
        tiny_pixel_chain.step_mean_std(torch.cat([x, x]), 0, cond)


def test_attention_conv_lora_targets_and_auto(tiny_sd_dir, tmp_path):
    """lora_targets="attention+conv": adapters on the attention projections and the ResNet blocks' conv1 / conv2;
    the LoRA saves and loads into plain diffusers with the same output. "auto" (the default) is the model folder's
    rlr_studio.json lora_targets, "attention" for a folder without one; the bundled tiny model's is attention+conv."""
    from diffusers import StableDiffusionPipeline

    from rlr_core.models import model_defaults

    plain_folder = load_model(str(tiny_sd_dir), num_steps=4, lora_rank=2, device="cpu")
    assert plain_folder.lora_targets == ["to_q", "to_k", "to_v", "to_out.0"]
    assert model_defaults(str(tiny_sd_dir))["lora_targets"] == "attention"
    folder = tmp_path / "model"
    shutil.copytree(tiny_sd_dir, folder)
    (folder / "rlr_studio.json").write_text(json.dumps({"lora_targets": "attention+conv"}))
    assert model_defaults(str(folder))["lora_targets"] == "attention+conv"
    chain = load_model(str(folder), num_steps=4, lora_rank=2, device="cpu")
    assert chain.lora_targets == ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"]
    layers = {n.split(".lora_")[0] for n, _ in chain._lora_named}
    assert any(n.endswith("resnets.0.conv1") for n in layers) and any(n.endswith("resnets.0.conv2") for n in layers)
    assert {n for n in layers if "attn" in n} == {n.split(".lora_")[0] for n, _ in plain_folder._lora_named}
    explicit = load_model(str(folder), num_steps=4, lora_rank=2, device="cpu", lora_targets="attention")
    assert explicit.lora_targets == plain_folder.lora_targets  # an explicit value wins over the folder's

    _randomize_lora(chain, seed=4, scale=0.1)
    chain.save_lora(tmp_path / "lora")
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_dir, safety_checker=None, requires_safety_checker=False)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    t = torch.tensor(chain.timestep(1))
    emb = chain.condition(["a red circle"]).phase_embeds[2]
    with torch.no_grad():
        base = pipe.unet(x, t, encoder_hidden_states=emb).sample
        pipe.load_lora_weights(str(tmp_path / "lora"))
        ours = chain.unet(x, t, encoder_hidden_states=emb).sample
        assert not torch.allclose(base, ours)
        torch.testing.assert_close(pipe.unet(x, t, encoder_hidden_states=emb).sample, ours, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="lora_targets"):
        plain_folder.load_lora(tmp_path / "lora")
    assert model_defaults("tiny")["lora_targets"] == "attention+conv"


def test_cross_attention_lora_targets_only_the_text_projections(tiny_sd_dir, tmp_path):
    """lora_targets="cross-attention": adapters on attn2.to_k / attn2.to_v only; the LoRA saves, loads into plain
    diffusers, and a chain with other targets refuses it by name."""
    from diffusers import StableDiffusionPipeline

    from rlr_core.config import TrainConfig

    full = load_model(str(tiny_sd_dir), num_steps=4, lora_rank=2, device="cpu")
    cross = load_model(str(tiny_sd_dir), num_steps=4, lora_rank=2, device="cpu", lora_targets="cross-attention")
    names = [name for name, _ in cross._lora_named]
    assert names and all(".attn2.to_k." in n or ".attn2.to_v." in n for n in names)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in names} == {"to_k", "to_v"}
    assert cross.num_trainable_parameters() < full.num_trainable_parameters() / 2
    assert cross.describe()["lora_targets"] == ["attn2.to_k", "attn2.to_v"]
    listed = load_model(str(tiny_sd_dir), num_steps=4, lora_rank=2, device="cpu", lora_targets="attn2.to_k, attn2.to_v")
    assert [n for n, _ in listed._lora_named] == names

    _randomize_lora(cross, seed=3)
    cross.save_lora(tmp_path / "lora")
    assert json.loads((tmp_path / "lora" / "rlr_lora.json").read_text())["target_modules"] == ["attn2.to_k", "attn2.to_v"]
    with pytest.raises(ValueError, match="lora_targets"):
        full.load_lora(tmp_path / "lora")
    assert all(float(p.detach().abs().max()) == 0.0 for n, p in full._lora_named if "lora_B" in n)  # nothing was loaded
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_dir, safety_checker=None, requires_safety_checker=False)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor(cross.timestep(1))
    emb = cross.condition(["a red circle"]).phase_embeds[2]
    with torch.no_grad():
        pipe.load_lora_weights(str(tmp_path / "lora"))
        torch.testing.assert_close(pipe.unet(x, t, encoder_hidden_states=emb).sample,
                                   cross.unet(x, t, encoder_hidden_states=emb).sample, rtol=1e-5, atol=1e-6)

    assert TrainConfig(lora_targets="cross-attention").validate().lora_targets == "cross-attention"
    for bad in ("", "self-attention,,", 3, [], [".to_k"]):
        with pytest.raises(ValueError, match="lora_targets must be one of"):
            TrainConfig(lora_targets=bad).validate()
    with pytest.raises(ValueError, match="matched no module"):
        load_model(str(tiny_sd_dir), num_steps=4, lora_rank=2, device="cpu", lora_targets="no_such_module")
