"""PickScore and HPSv2 rewards, end to end on tiny random models (no download).

Values are checked against an independent computation (the transformers processor / open_clip's
own preprocess on PIL images from uint8 pixels), gradients must reach the pixels, and without
network the rewards must fail fast naming the weights and where they come from.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from PIL import Image  # noqa: E402

from rlr_core.hub import WeightsUnavailableError  # noqa: E402
from rlr_core.rewards import clear_reward_cache, get_reward, list_rewards  # noqa: E402

PROMPTS = ["a red circle on a white background", "a photo of a dog on the grass"]
OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]


def _uint8_images(seed: int, shapes: list[tuple[int, int]]) -> list[np.ndarray]:
    """Smooth random images (so resampling differences stay small), uint8 HWC."""
    rng = np.random.default_rng(seed)
    out = []
    for h, w in shapes:
        low = rng.random((3, 6, 6)).astype(np.float32)
        t = torch.nn.functional.interpolate(torch.from_numpy(low)[None], size=(h, w), mode="bicubic", align_corners=False)[0]
        arr = (t.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        out.append(arr)
    return out


def _as_tensor(arrays: list[np.ndarray]) -> torch.Tensor:
    return torch.stack([torch.from_numpy(a).permute(2, 0, 1).float() / 255.0 for a in arrays])


# --------------------------------------------------------------------------------------------
# PickScore
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_pickscore(tmp_path_factory):
    """A tiny random CLIPModel and a CLIPProcessor with the laion ViT-H-14 image settings."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from rlr_core.tokenizer import build_clip_tokenizer

    root = tmp_path_factory.mktemp("pickscore")
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=224, patch_size=32),
        projection_dim=16,
    )
    model = CLIPModel(config).eval()
    model.save_pretrained(root / "model")
    image_processor = CLIPImageProcessor(
        do_resize=True, size={"shortest_edge": 224}, resample=3, do_center_crop=True, crop_size={"height": 224, "width": 224},
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=OPENAI_MEAN, image_std=OPENAI_STD, do_convert_rgb=True,
    )
    tokenizer = build_clip_tokenizer(root / "tok", model_max_length=77)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(root / "processor")
    return str(root / "model"), str(root / "processor")


def test_pickscore_is_registered():
    info = {r["name"]: r for r in list_rewards()}["pickscore"]
    assert info["differentiable"] and info["needs_weights"]
    assert info["options"]["model"]["default"] == "yuvalkirstain/PickScore_v1"
    assert info["options"]["processor"]["default"] == "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


@pytest.mark.parametrize("shape", [(64, 64), (48, 80)])  # square, and non-square (resize + centre crop)
def test_pickscore_matches_the_processor_path(tiny_pickscore, shape):
    from transformers import CLIPModel, CLIPProcessor

    model_dir, proc_dir = tiny_pickscore
    reward = get_reward("pickscore", model=model_dir, processor=proc_dir)
    arrays = _uint8_images(1, [shape, shape])
    ours = reward(_as_tensor(arrays), PROMPTS)

    # independent: the PickScore reference computation with the transformers processor on PIL images
    processor = CLIPProcessor.from_pretrained(proc_dir)
    clip = CLIPModel.from_pretrained(model_dir).eval()
    pil = [Image.fromarray(a) for a in arrays]
    image_inputs = processor(images=pil, return_tensors="pt")
    text_inputs = processor(text=PROMPTS, padding=True, truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        out = clip(input_ids=text_inputs["input_ids"], attention_mask=text_inputs["attention_mask"], pixel_values=image_inputs["pixel_values"])
    reference = torch.diagonal(out.logits_per_image)  # logit_scale.exp() * cos(image_i, text_i)
    assert ours.shape == (2,) and ours.dtype == torch.float32
    assert torch.allclose(ours, reference, atol=0.15, rtol=0), (ours, reference)
    # the scores differ between prompts/images by much more than the tolerance: the check has teeth
    swapped = reward(_as_tensor(arrays), PROMPTS[::-1])
    assert (swapped - ours).abs().max() > 0.3


def test_pickscore_gradients_reach_the_pixels(tiny_pickscore):
    model_dir, proc_dir = tiny_pickscore
    reward = get_reward("pickscore", model=model_dir, processor=proc_dir)
    images = _as_tensor(_uint8_images(2, [(40, 40), (40, 40)])).requires_grad_(True)
    reward(images, PROMPTS).sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()
    assert images.grad.abs().sum(dim=(1, 2, 3)).min() > 0  # every image gets a gradient


def test_pickscore_offline_fails_fast_naming_the_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    clear_reward_cache()
    t0 = time.time()
    with pytest.raises(WeightsUnavailableError) as info:
        get_reward("pickscore", cache_dir=str(tmp_path))
    assert time.time() - t0 < 15
    text = str(info.value)
    assert "PickScore" in text and "huggingface.co/yuvalkirstain/PickScore_v1" in text


def test_pickscore_bad_local_folder_names_the_option(tmp_path):
    with pytest.raises(ValueError, match="model="):
        get_reward("pickscore", model=str(tmp_path))  # a folder without config.json


# --------------------------------------------------------------------------------------------
# HPSv2
# --------------------------------------------------------------------------------------------

TINY_HPS = "rlr-test-tiny-hps"


@pytest.fixture(scope="module")
def tiny_hps(tmp_path_factory):
    """A tiny open_clip config registered with open_clip and a random checkpoint in the HPS format."""
    import open_clip

    root = tmp_path_factory.mktemp("hps")
    cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 224, "layers": 2, "width": 32, "head_width": 16, "patch_size": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    }
    (root / f"{TINY_HPS}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(str(root / f"{TINY_HPS}.json"))
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_HPS, pretrained=None)
    ckpt = root / "HPS_v2.1_compressed.pt"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    return str(ckpt)


def test_hpsv2_is_registered():
    info = {r["name"]: r for r in list_rewards()}["hpsv2"]
    assert info["differentiable"] and info["needs_weights"]
    assert info["options"]["version"]["choices"] == ["v2.0", "v2.1"]


@pytest.mark.parametrize("shape", [(64, 64), (48, 96)])  # the non-square one is padded (longest side resized)
def test_hpsv2_matches_open_clip_preprocess(tiny_hps, shape):
    import open_clip

    reward = get_reward("hpsv2", checkpoint=tiny_hps, clip_model=TINY_HPS)
    arrays = _uint8_images(3, [shape, shape])
    ours = reward(_as_tensor(arrays), PROMPTS)

    # independent: open_clip's own validation transform (resize longest side, pad with black) on PIL
    model = open_clip.create_model(TINY_HPS, pretrained=None)
    model.load_state_dict(torch.load(tiny_hps, weights_only=True)["state_dict"])
    model.eval()
    preprocess = open_clip.image_transform(224, is_train=False, mean=OPENAI_MEAN, std=OPENAI_STD, resize_mode="longest", fill_color=0)
    tokenizer = open_clip.get_tokenizer(TINY_HPS)
    pixels = torch.stack([preprocess(Image.fromarray(a)) for a in arrays])
    with torch.no_grad():
        img = model.encode_image(pixels, normalize=True)
        txt = model.encode_text(tokenizer(PROMPTS), normalize=True)
    reference = torch.diagonal(img @ txt.T)
    assert torch.allclose(ours, reference, atol=3e-3, rtol=0), (ours, reference)
    swapped = reward(_as_tensor(arrays), PROMPTS[::-1])
    assert (swapped - ours).abs().max() > 0.01


def test_hpsv2_gradients_reach_the_pixels(tiny_hps):
    reward = get_reward("hpsv2", checkpoint=tiny_hps, clip_model=TINY_HPS)
    images = _as_tensor(_uint8_images(4, [(32, 32), (32, 32)])).requires_grad_(True)
    reward(images, PROMPTS).sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()
    assert images.grad.abs().sum(dim=(1, 2, 3)).min() > 0


@pytest.mark.parametrize("version, filename", [("v2.0", "HPS_v2_compressed.pt"), ("v2.1", "HPS_v2.1_compressed.pt")])
def test_hpsv2_offline_fails_fast_naming_the_weights(tmp_path, monkeypatch, version, filename):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    clear_reward_cache()
    t0 = time.time()
    with pytest.raises(WeightsUnavailableError) as info:
        get_reward("hpsv2", version=version, cache_dir=str(tmp_path))
    assert time.time() - t0 < 15
    text = str(info.value)
    assert filename in text and "huggingface.co/xswu/HPSv2" in text


def test_hpsv2_without_network_flag_fails_fast(tmp_path, monkeypatch):
    """No HF_HUB_OFFLINE: the reachability probe must still fail within seconds (unreachable endpoint)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")
    clear_reward_cache()
    t0 = time.time()
    with pytest.raises(WeightsUnavailableError) as info:
        get_reward("hpsv2", cache_dir=str(tmp_path))
    assert time.time() - t0 < 15
    assert "HPS_v2.1_compressed.pt" in str(info.value)


def test_hpsv2_bad_options_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="version"):
        get_reward("hpsv2", version="v3")
    with pytest.raises(ValueError, match="checkpoint="):
        get_reward("hpsv2", checkpoint=str(tmp_path / "missing.pt"))
