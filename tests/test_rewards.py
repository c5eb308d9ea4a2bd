"""Rewards: registry, weight-free rewards, aesthetic/CLIP code paths on tiny open_clip configs, offline, plug-ins."""

from __future__ import annotations

import json
import os
import textwrap
import time
from pathlib import Path

import pytest
import torch

from rlr_core.rewards import WeightsUnavailableError, clear_reward_cache, get_reward, list_rewards, reward_names

HEAD = Path(__file__).resolve().parents[2] / "shared" / "data" / "laion-aesthetic-head-sac-logos-ava1-l14-linearMSE.pth"
TINY = "RLRTest-Tiny-768"
needs_head = pytest.mark.skipif(not HEAD.is_file(), reason=f"LAION head copy not found at {HEAD}")


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """Register a tiny open_clip architecture (random weights, embed_dim 768 so the LAION head applies)."""
    import open_clip

    cfg = {
        "embed_dim": 768,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    }
    path = tmp_path_factory.mktemp("open_clip_cfg") / f"{TINY}.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    torch.manual_seed(0)
    yield TINY
    clear_reward_cache()


def _images(kind: str, b: int = 2, h: int = 16, w: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "gray":
        return torch.full((b, 3, h, w), 0.5)
    if kind == "noise":
        return torch.rand(b, 3, h, w, generator=g)
    if kind == "vivid":
        x = torch.zeros(b, 3, h, w)
        x[:, 0, :, : w // 2] = 1.0  # red left half
        x[:, 2, :, w // 2 :] = 1.0  # blue right half
        return x
    raise ValueError(kind)


# ------------------------------------------------------------------ registry, options, cache


def test_list_rewards_describes_every_reward_with_options():
    infos = {r["name"]: r for r in list_rewards()}
    for name in ["aesthetic", "clip", "preference", "saturation", "brightness", "target-color", "symmetry",
                 "jpeg-compressibility", "jpeg-incompressibility"]:
        assert name in infos and infos[name]["description"]
    assert infos["target-color"]["options"]["color"]["default"] == "red"
    assert infos["aesthetic"]["options"]["precision"]["choices"] == ["fp32", "fp16", "bf16"]
    assert infos["jpeg-compressibility"]["differentiable"] is False
    json.dumps(list_rewards())  # plain data for the UI


def test_unknown_name_and_option_and_value_are_named():
    with pytest.raises(ValueError, match=r"reward='nope'.*saturation"):
        get_reward("nope")
    with pytest.raises(ValueError, match=r"no option 'colour'.*allowed options: \['color'\]"):
        get_reward("target-color", colour="red")
    with pytest.raises(ValueError, match=r"precision='fp8'.*\['fp32', 'fp16', 'bf16'\]"):
        get_reward("aesthetic", precision="fp8")
    with pytest.raises(ValueError, match=r"color='mauve-ish'.*allowed"):
        get_reward("target-color", color="mauve-ish")
    with pytest.raises(ValueError, match=r"quality=0.*1-100"):
        get_reward("jpeg-compressibility", quality=0)
    with pytest.raises(ValueError, match=r"mode='sideways'.*\['learned', 'direct'\]"):
        get_reward("preference", mode="sideways")


def test_cache_is_keyed_by_name_options_and_device():
    a = get_reward("target-color", color="blue", device="cpu")
    assert get_reward("target-color", color="blue", device="cpu") is a
    assert get_reward("target-color", color="green", device="cpu") is not a
    assert get_reward("target-color", color="blue", device="meta") is not a
    assert get_reward("jpeg-compressibility", quality="80", device="cpu").quality == 80  # UI strings coerced


# ------------------------------------------------------------------ weight-free rewards

WEIGHT_FREE = {
    # name: (options, better images, worse images)
    "saturation": ({}, _images("vivid"), _images("gray")),
    "brightness": ({}, torch.full((2, 3, 16, 16), 0.9), torch.full((2, 3, 16, 16), 0.1)),
    "target-color": ({"color": "blue"}, torch.zeros(2, 3, 16, 16).index_fill_(1, torch.tensor([2]), 1.0),
                     torch.zeros(2, 3, 16, 16).index_fill_(1, torch.tensor([0]), 1.0)),
    "symmetry": ({}, (lambda x: torch.cat([x, x.flip(-1)], dim=-1))(_images("noise", w=8)), _images("noise", seed=3)),
    "jpeg-compressibility": ({}, _images("gray", h=64, w=64), _images("noise", h=64, w=64)),
    "jpeg-incompressibility": ({}, _images("noise", h=64, w=64), _images("gray", h=64, w=64)),
}


@pytest.mark.parametrize("name", sorted(WEIGHT_FREE))
def test_weight_free_reward_shape_finite_grad_and_ranking(name):
    options, better, worse = WEIGHT_FREE[name]
    reward = get_reward(name, device="cpu", **options)
    assert reward.name == name
    x = _images("noise", b=3).requires_grad_(True)
    r = reward(x, ["p"] * 3)
    assert r.shape == (3,) and r.dtype == torch.float32 and r.device == x.device
    assert torch.isfinite(r).all()
    if reward.differentiable:
        r.sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
        # gray images are a kink for some rewards: the gradient must still be finite there
        g = _images("gray").requires_grad_(True)
        reward(g, ["p", "p"]).sum().backward()
        assert torch.isfinite(g.grad).all()
    else:
        assert not r.requires_grad
    rb, rw = reward(better, ["p"] * len(better)), reward(worse, ["p"] * len(worse))
    assert (rb > rw).all(), (name, rb, rw)


def test_target_color_accepts_names_hex_and_rgb():
    from rlr_core.rewards.simple import parse_color

    assert parse_color("blue") == (0.0, 0.0, 1.0)
    assert parse_color("#0000ff") == (0.0, 0.0, 1.0)
    assert parse_color("0, 0, 255") == (0.0, 0.0, 1.0)
    assert parse_color([0, 0, 1]) == (0.0, 0.0, 1.0)
    assert parse_color((255, 128, 0))[1] == pytest.approx(128 / 255)
    assert get_reward("target-color", color=[0, 0, 255]).color == (0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="3 components"):
        parse_color("1,2")
    with pytest.raises(ValueError, match="outside"):
        parse_color("-1,0,0")


def test_rewards_check_the_batch():
    reward = get_reward("saturation")
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        reward(torch.rand(2, 16, 16), ["a", "b"])
    with pytest.raises(ValueError, match="one entry per image"):
        reward(torch.rand(2, 3, 8, 8), ["a"])


# ------------------------------------------------------------------ aesthetic


@needs_head
def test_aesthetic_head_matches_plain_matmuls_on_a_fixed_embedding():
    from rlr_core.rewards.aesthetic import load_head

    head = load_head(str(HEAD))
    g = torch.Generator().manual_seed(1234)
    emb = torch.randn(3, 768, generator=g, dtype=torch.float64)
    emb = emb / emb.norm(dim=-1, keepdim=True)
    sd = torch.load(HEAD, map_location="cpu", weights_only=True)
    h = emb
    for i in (0, 2, 4, 6, 7):  # dropouts (1, 3, 5) are identity in eval; no nonlinearities
        h = h @ sd[f"layers.{i}.weight"].double().T + sd[f"layers.{i}.bias"].double()
    expected = h.squeeze(-1)
    got = head(emb.float())
    assert torch.allclose(got.double(), expected, atol=1e-4, rtol=1e-5), (got, expected)
    # and the values are in the head's usual range for unit-norm inputs
    assert head.training is False and not any(p.requires_grad for p in head.parameters())


@needs_head
def test_aesthetic_end_to_end_on_tiny_open_clip_with_gradients_to_pixels(tiny_clip):
    from rlr_core.rewards.clip_models import encode_images, load_clip

    reward = get_reward("aesthetic", clip_model=tiny_clip, pretrained="", head_path=str(HEAD), device="cpu")
    assert reward.differentiable and reward.name == "aesthetic"
    x = torch.rand(2, 3, 40, 56, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    r = reward(x, ["a", "b"])
    assert r.shape == (2,) and r.dtype == torch.float32 and torch.isfinite(r).all()
    r.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()
    # the reward is the head applied to the normalised embedding of the preprocessed pixels
    emb = encode_images(load_clip(tiny_clip, "", "cpu"), x.detach())
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(reward.head(torch.device("cpu"))(emb), r.detach(), atol=1e-5)


def test_aesthetic_rejects_a_non_768_clip(tiny_clip, tmp_path):
    import open_clip

    cfg = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 32, "patch_size": 16},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 1, "layers": 1}}
    (tmp_path / "RLRTest-Tiny-32.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "RLRTest-Tiny-32.json")
    if not HEAD.is_file():
        pytest.skip("needs the head copy")
    with pytest.raises(ValueError, match=r"clip_model='RLRTest-Tiny-32' gives 32-d.*768"):
        get_reward("aesthetic", clip_model="RLRTest-Tiny-32", pretrained="", head_path=str(HEAD), device="cpu")


def test_preprocess_matches_open_clip_transform_and_keeps_gradients():
    import numpy as np
    import open_clip
    from PIL import Image

    from rlr_core.rewards.clip_models import preprocess

    # a smooth image, so bicubic resampling differences between PIL and torch stay small
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 96), torch.linspace(0, 1, 128), indexing="ij")
    img = torch.stack([xx, yy, 0.5 + 0.5 * torch.sin(6 * xx * yy)]).clamp(0, 1)
    pixels = (img * 255).round().to(torch.uint8)
    ref = open_clip.image_transform(224, is_train=False)(Image.fromarray(pixels.permute(1, 2, 0).numpy()))
    x = (pixels.float() / 255).unsqueeze(0).requires_grad_(True)
    ours = preprocess(x, (224, 224), open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)
    assert ours.shape == (1, 3, 224, 224)
    assert float((ours[0].detach() - ref).abs().mean()) < 0.02
    ours.sum().backward()
    assert x.grad.abs().sum() > 0
    assert np.isfinite(x.grad.numpy()).all()


# ------------------------------------------------------------------ CLIP score


def test_clip_score_on_tiny_open_clip_with_real_tokenizer(tiny_clip):
    from rlr_core.rewards.clip_models import encode_images, encode_texts, load_clip

    reward = get_reward("clip", clip_model=tiny_clip, pretrained="", scale=50, device="cpu")
    assert reward.differentiable and reward.scale == 50.0
    prompts = ["a photo of a red cat", "an oil painting of a lighthouse"]
    x = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    r = reward(x, prompts)
    assert r.shape == (2,) and r.dtype == torch.float32 and torch.isfinite(r).all()
    r.sum().backward()
    assert x.grad.abs().sum() > 0
    clip = load_clip(tiny_clip, "", "cpu")
    tokens = clip.tokenizer(prompts)
    assert tokens.shape == (2, 77) and int(tokens[0, 0]) == 49406  # the real BPE tokenizer (start token)
    cos = (encode_images(clip, x.detach()) * encode_texts(clip, prompts, torch.device("cpu"))).sum(-1)
    assert torch.allclose(r.detach(), 50 * cos, atol=1e-4)
    assert (r.detach().abs() <= 50 + 1e-4).all()
    clamped = get_reward("clip", clip_model=tiny_clip, pretrained="", clamp=True, device="cpu")
    assert torch.allclose(clamped(x.detach(), prompts), 100 * cos.clamp_min(0), atol=1e-4)


def test_clip_bad_architecture_and_tag_are_named(tiny_clip):
    with pytest.raises(ValueError, match=r"clip_model='ViT-Q-99'.*open_clip.list_models"):
        get_reward("clip", clip_model="ViT-Q-99")
    with pytest.raises(ValueError, match=r"pretrained='laion-nope'.*allowed values.*openai"):
        get_reward("clip", clip_model="ViT-L-14-quickgelu", pretrained="laion-nope")


# ------------------------------------------------------------------ offline behaviour


def test_offline_flag_fails_fast_naming_weights_and_source(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as info:
        get_reward("aesthetic", cache_dir=str(tmp_path), device="cpu")
    assert time.monotonic() - start < 15
    msg = str(info.value)
    assert "sac+logos+ava1-l14-linearMSE" in msg and "huggingface.co/trl-lib/ddpo-aesthetic-predictor" in msg
    assert "could not be reached" in msg
    if HEAD.is_file():  # with a local head, the CLIP weights are the missing piece
        with pytest.raises(WeightsUnavailableError) as info:
            get_reward("aesthetic", head_path=str(HEAD), cache_dir=str(tmp_path), device="cpu")
        msg = str(info.value)
        assert "ViT-L-14-quickgelu (openai)" in msg and "huggingface.co/timm/vit_large_patch14_clip_224.openai" in msg
    with pytest.raises(WeightsUnavailableError, match="could not be reached"):
        get_reward("clip", cache_dir=str(tmp_path), device="cpu")


def test_unreachable_hub_fails_within_15_seconds(tmp_path, monkeypatch):
    """Real: without HF_HUB_OFFLINE, the reachability probe must answer before open_clip's DNS retries."""
    from rlr_core.hub import hf_endpoint_host, host_reachable

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    if host_reachable(hf_endpoint_host()):
        pytest.skip("the hub is reachable here; this test is about the offline failure")
    for name, options in [("aesthetic", {}), ("clip", {})]:
        start = time.monotonic()
        with pytest.raises(WeightsUnavailableError, match="could not be reached") as info:
            get_reward(name, cache_dir=str(tmp_path), device="cpu", **options)
        assert time.monotonic() - start < 15, f"{name} took too long to fail"
        assert "huggingface.co" in str(info.value)


# ------------------------------------------------------------------ plug-ins


@pytest.fixture()
def plugin_files(tmp_path, monkeypatch):
    (tmp_path / "my_rewards_mod.py").write_text(textwrap.dedent('''
        import torch
        def redness(images, prompts):
            return images[:, 0].mean(dim=(1, 2)) - images[:, 1:].mean(dim=(1, 2, 3))
        def wrong_length(images, prompts):
            return [1.0]
        def as_list(images, prompts):
            return [float(i) for i in range(len(prompts))]
    '''))
    (tmp_path / "file_reward.py").write_text(textwrap.dedent('''
        def reward(images, prompts):
            return images.mean(dim=(1, 2, 3))
        reward.differentiable = True
        def other(images, prompts):
            return -images.mean(dim=(1, 2, 3))
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("RLR_STUDIO_HOSTED", raising=False)
    return tmp_path


def test_plugin_module_function(plugin_files):
    reward = get_reward("my_rewards_mod:redness", differentiable=True)
    x = torch.rand(3, 3, 8, 8).requires_grad_(True)
    r = reward(x, ["a"] * 3)
    assert r.shape == (3,) and r.dtype == torch.float32 and reward.differentiable
    r.sum().backward()
    assert x.grad.abs().sum() > 0
    plain = get_reward("my_rewards_mod:as_list")
    assert plain.differentiable is False
    assert plain(torch.rand(3, 3, 8, 8), ["a"] * 3).tolist() == [0.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="returned 1 values for 3 images"):
        get_reward("my_rewards_mod:wrong_length")(torch.rand(3, 3, 8, 8), ["a"] * 3)
    with pytest.raises(ValueError, match="no function 'missing'.*redness"):
        get_reward("my_rewards_mod:missing")
    with pytest.raises(ValueError, match="cannot be imported"):
        get_reward("no_such_module_xyz:f")


def test_plugin_file(plugin_files):
    path = str(plugin_files / "file_reward.py")
    reward = get_reward(path)
    assert reward.differentiable is True  # from the function's attribute
    x = torch.rand(2, 3, 8, 8)
    assert torch.allclose(reward(x, ["a", "b"]), x.mean(dim=(1, 2, 3)))
    other = get_reward(path, function="other")
    assert torch.allclose(other(x, ["a", "b"]), -x.mean(dim=(1, 2, 3)))
    with pytest.raises(ValueError, match="does not exist"):
        get_reward(str(plugin_files / "nope.py"))


def test_plugins_refused_in_hosted_mode(plugin_files, monkeypatch):
    with pytest.raises(ValueError, match="plug-in.*hosted mode"):
        get_reward("my_rewards_mod:redness", hosted=True)
    monkeypatch.setenv("RLR_STUDIO_HOSTED", "1")
    with pytest.raises(ValueError, match="plug-in.*hosted mode.*saturation"):
        get_reward(str(plugin_files / "file_reward.py"))
    assert get_reward("saturation").name == "saturation"  # built-ins still work when hosted
