"""Shared fixtures: tiny real diffusers models built in code and saved as diffusers folders (offline)."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # With `-n 2` on a 2-core machine, torch's default of one thread per core would run 4 threads on 2 cores:
    # the tiny models gain nothing from a second thread and the two workers only wait for each other.
    torch.set_num_threads(1)


def _tiny_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    config = CLIPTextConfig(
        vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
        layer_norm_eps=1e-5, projection_dim=32,
    )
    return CLIPTextModel(config).eval()


def _tiny_unet(in_channels: int, sample_size: int):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(1)
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=in_channels, out_channels=in_channels, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=8,
        norm_num_groups=32,
    ).eval()


def _tiny_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(2)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=32, sample_size=16,
    ).eval()


@pytest.fixture(scope="session")
def clip_tokenizer_dir(tmp_path_factory):
    """A folder with the real 49,408-token CLIP tokenizer, built offline from open_clip's vocabulary."""
    from rlr_core.tokenizer import build_clip_tokenizer

    raw = tmp_path_factory.mktemp("clip-tokenizer-files")
    out = tmp_path_factory.mktemp("clip-tokenizer")
    build_clip_tokenizer(raw).save_pretrained(out)  # saved with tokenizer.json: fast to load again
    return out


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory, clip_tokenizer_dir):
    """A tiny Stable-Diffusion-style folder (UNet 8x8x4 latents, VAE x2 -> 16x16 images, PNDM scheduler).

    ``StableDiffusionPipeline.from_pretrained(tiny_sd_dir)`` works offline.
    """
    from diffusers import PNDMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    out = tmp_path_factory.mktemp("tiny-sd")
    scheduler = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=_tiny_vae(), text_encoder=_tiny_text_encoder(), tokenizer=CLIPTokenizer.from_pretrained(clip_tokenizer_dir),
        unet=_tiny_unet(4, 8), scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_pixel_dir(tmp_path_factory, clip_tokenizer_dir):
    """A tiny pixel-space model folder (no VAE; UNet on 16x16x3 images in [-1, 1], DDIM scheduler)."""
    from diffusers import DDIMScheduler
    from transformers import CLIPTokenizer

    out = tmp_path_factory.mktemp("tiny-pixel")
    _tiny_unet(3, 16).save_pretrained(out / "unet")
    _tiny_text_encoder().save_pretrained(out / "text_encoder")
    CLIPTokenizer.from_pretrained(clip_tokenizer_dir).save_pretrained(out / "tokenizer")
    DDIMScheduler(beta_schedule="linear", clip_sample=True, set_alpha_to_one=True).save_pretrained(out / "scheduler")
    return out


@pytest.fixture()
def tiny_chain(tiny_sd_dir):
    """A DiffusersChain on the tiny SD folder: T=4, LoRA rank 2, CFG 3, eta 1, CPU float32."""
    from rlr_core.diffusers_chain import load_model

    return load_model(str(tiny_sd_dir), num_steps=4, lora_rank=2, guidance_scale=3.0, device="cpu", dtype="float32")


@pytest.fixture()
def tiny_pixel_chain(tiny_pixel_dir):
    """A DiffusersChain on the tiny pixel-space folder: T=4, LoRA rank 2, CFG 3, CPU float32."""
    from rlr_core.diffusers_chain import load_model

    return load_model(str(tiny_pixel_dir), num_steps=4, lora_rank=2, guidance_scale=3.0, device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def mini_pixel_dir(tmp_path_factory, clip_tokenizer_dir):
    """A very small pixel-space model (4x4x3 images, ~700 LoRA parameters at rank 1).

    Small enough that averages of many gradient estimates converge in test time; used to
    compare RLR's mean with full backprop's.
    """
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    out = tmp_path_factory.mktemp("mini-pixel")
    torch.manual_seed(0)
    UNet2DConditionModel(
        sample_size=4, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=4,
    ).save_pretrained(out / "unet")
    CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, projection_dim=16,
    )).save_pretrained(out / "text_encoder")
    CLIPTokenizer.from_pretrained(clip_tokenizer_dir).save_pretrained(out / "tokenizer")
    DDIMScheduler(beta_schedule="linear", clip_sample=False, set_alpha_to_one=True).save_pretrained(out / "scheduler")
    return out


@pytest.fixture(scope="session")
def reduced_sd_dir(tmp_path_factory, clip_tokenizer_dir):
    """SD 1.5's topology (every block, layer and attention) at 1/20 width, 64 px images (8x8 latents),
    random weights; written once for the memory-model and GPU-settings tests."""
    from transformers import CLIPTokenizer

    from rlr_core import sd_arch

    return sd_arch.write_pipeline("sd15", tmp_path_factory.mktemp("sd15-w20"), width_divisor=20, image_size=64,
                                  tokenizer=CLIPTokenizer.from_pretrained(clip_tokenizer_dir))


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): the models
    are tiny, and on shared CPUs extra threads only wait for each other."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def studio(tmp_path, monkeypatch, tiny_pixel_dir):
    """The app on the tiny pixel model with its own home folder (app state reset afterwards); yields the
    model's folder."""
    monkeypatch.setenv("RLR_STUDIO_HOME", str(tmp_path / "home"))
    from app import state

    yield str(tiny_pixel_dir)
    state.reset_all()


@pytest.fixture(scope="module")
def no_rss_sampler():
    """No resident-memory reading in ``MemoryMeter`` for a module
    (``pytestmark = pytest.mark.usefixtures("no_rss_sampler")``). On Linux each estimate reads and resets the
    kernel's peak-RSS mark (~0.1-0.3 ms); elsewhere it starts a thread that wakes every 2 ms, which on a busy 2-core
    machine cost 3-4x what one estimate on the analytic chain costs. The estimates are bit-identical without it;
    only ``peak_memory_mb`` reads 0 (graph memory is still counted). For modules that assert nothing on
    peak_memory_mb."""
    from rlr_core.memory import meter

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(meter, "psutil", None)
        yield
