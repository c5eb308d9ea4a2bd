"""GPU-ready settings of DiffusersChain, checked on CPU: SDPA, checkpointing, sliced decode, bf16 + autocast, TF32."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlr_core.memory import prediction as mm
from rlr_core import sd_arch
from rlr_core.diffusers_chain import DiffusersChain, load_model
from rlr_core.memory import MemoryMeter

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


def _chain(path, **kwargs):
    options = dict(num_steps=3, lora_rank=2, guidance_scale=3.0, device="cpu", dtype="float32")
    options.update(kwargs)
    chain = load_model(str(path), **options)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in chain.trainable_parameters():
            p.normal_(0.0, 0.2)  # non-zero LoRA B: gradients reach every LoRA tensor
    return chain


def _step_grad(chain, x):
    cond = chain.condition(["a lighthouse"] * x.shape[0])
    with MemoryMeter() as meter:
        mean, _ = chain.step_mean_std(x, 1, cond)
        loss = chain.decode(mean).square().mean()
    grads = torch.autograd.grad(loss, chain.trainable_parameters())
    return mean.detach(), torch.cat([g.reshape(-1) for g in grads]), meter.graph_memory_mb


def test_attention_backends_agree_and_sdpa_keeps_less(reduced_sd_dir):
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    sdpa, eager = _chain(reduced_sd_dir, attention="sdpa"), _chain(reduced_sd_dir, attention="eager")
    assert all(isinstance(p, AttnProcessor2_0) for p in sdpa.unet.attn_processors.values())
    assert all(isinstance(p, AttnProcessor) for p in eager.unet.attn_processors.values())
    assert all(isinstance(p, AttnProcessor) for p in eager.vae.attn_processors.values())
    x = sdpa.initial(2, torch.Generator().manual_seed(0))
    mean_s, grad_s, graph_s = _step_grad(sdpa, x)
    mean_e, grad_e, graph_e = _step_grad(eager, x)
    torch.testing.assert_close(mean_s, mean_e, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grad_s, grad_e, rtol=1e-3, atol=1e-6)
    assert graph_s < graph_e  # eager keeps the softmax(QK^T) matrices for backward
    assert mm.predict(eager, "rlr", 2, h=1).parts["ho"] > mm.predict(sdpa, "rlr", 2, h=1).parts["ho"]
    with pytest.raises(ValueError, match="attention must be one of"):
        _chain(reduced_sd_dir, attention="flash3")


def test_gradient_checkpointing_covers_unet_and_decode(reduced_sd_dir):
    plain, ckpt = _chain(reduced_sd_dir), _chain(reduced_sd_dir, gradient_checkpointing=True)
    x = plain.initial(2, torch.Generator().manual_seed(1))
    mean_p, grad_p, graph_p = _step_grad(plain, x)
    mean_c, grad_c, graph_c = _step_grad(ckpt, x)
    torch.testing.assert_close(mean_p, mean_c)
    torch.testing.assert_close(grad_p, grad_c, rtol=1e-4, atol=1e-7)
    assert graph_c < 0.05 * graph_p
    latents = x.clone().requires_grad_(True)
    with MemoryMeter() as decode_plain:
        plain.decode(latents).sum()
    with MemoryMeter() as decode_ckpt:
        ckpt.decode(latents).sum()
    assert decode_ckpt.graph_memory_mb < 0.05 * decode_plain.graph_memory_mb  # the decode is checkpointed too


def test_sliced_decode_matches_whole_batch(reduced_sd_dir):
    whole, sliced = _chain(reduced_sd_dir), _chain(reduced_sd_dir, decode_slice_size=1, gradient_checkpointing=True)
    assert sliced.decode_slice_size == 1 and sliced.describe()["decode_slice_size"] == 1
    x = whole.initial(3, torch.Generator().manual_seed(2)).requires_grad_(True)
    images_w = whole.decode(x)
    (grad_w,) = torch.autograd.grad(images_w.square().sum(), x)
    images_s = sliced.decode(x)
    (grad_s,) = torch.autograd.grad(images_s.square().sum(), x)
    torch.testing.assert_close(images_w, images_s, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grad_w, grad_s, rtol=1e-3, atol=1e-4)  # clamp(0, 1) edges: float noise
    spec = mm.spec_for_arch("sd15", width_divisor=20, image_size=64, num_steps=3, reward="pixel")
    one = mm.trace_parts(spec, mm.Settings(batch_size=2, dtype="float32", gradient_checkpointing=True, decode_slice_size=1))
    two = mm.trace_parts(spec, mm.Settings(batch_size=2, dtype="float32", gradient_checkpointing=True))
    assert one.recompute < two.recompute  # backward rebuilds one slice at a time
    with pytest.raises(ValueError, match="decode_slice_size"):
        _chain(reduced_sd_dir, decode_slice_size=0)


def test_bf16_weights_fp32_lora_under_autocast(reduced_sd_dir):
    chain = _chain(reduced_sd_dir, dtype="bfloat16", autocast=True)
    lora = {id(p) for p in chain.trainable_parameters()}
    assert all(p.dtype == torch.float32 for p in chain.trainable_parameters())
    assert all(p.dtype == torch.bfloat16 for p in chain.unet.parameters() if id(p) not in lora)
    seen = []
    handle = chain.unet.conv_in.register_forward_hook(lambda *a: seen.append(torch.is_autocast_enabled("cpu")))
    x = chain.initial(2, torch.Generator().manual_seed(0))
    mean, grad, _ = _step_grad(chain, x)
    handle.remove()
    assert seen == [True]
    assert mean.dtype == torch.float32 and torch.isfinite(mean).all()
    assert grad.dtype == torch.float32 and torch.isfinite(grad).all() and grad.abs().sum() > 0
    from rlr_core.estimators import get_estimator
    from rlr_core.rewards import get_reward

    reward = get_reward("saturation")  # the memory model replays CPU autocast's casts on meta: same graph
    result = get_estimator("truncated-bp", k=1).estimate(chain, reward, ["a"] * 2, torch.Generator().manual_seed(0))
    predicted = mm.predict(chain, "truncated-bp", 2, reward=reward, k=1).graph_mb
    assert abs(predicted - result.graph_memory_mb) <= 0.10 * result.graph_memory_mb
    with pytest.raises(ValueError, match="autocast needs dtype float16 or bfloat16"):
        _chain(reduced_sd_dir, autocast=True)


def test_tf32_only_on_cuda(reduced_sd_dir):
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        assert DiffusersChain.enable_tf32(torch.device("cpu")) is False
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False, False)
        assert _chain(reduced_sd_dir).tf32 is False  # a CPU chain leaves the flags alone
        assert DiffusersChain.enable_tf32(torch.device("cuda")) is True
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_sd21_v_prediction_architecture_runs(tmp_path, clip_tokenizer_dir):
    from transformers import CLIPTokenizer

    path = sd_arch.write_pipeline("sd21", tmp_path / "sd21", width_divisor=20, image_size=64,
                                  tokenizer=CLIPTokenizer.from_pretrained(clip_tokenizer_dir))
    chain = load_model(str(path), num_steps=2, lora_rank=2, device="cpu", dtype="float32")
    assert chain.prediction_type == "v_prediction" and chain.tokenizer.pad_token == "!"
    assert chain.text_encoder.config.num_hidden_layers == 23
    cond = chain.condition(["a lighthouse"])
    mean, _ = chain.step_mean_std(chain.initial(1, torch.Generator().manual_seed(0)), 0, cond)
    assert mean.shape == (1, 4, 8, 8) and torch.isfinite(mean).all()


@pytest.mark.slow
def test_gpu_check_script_smoke_mode_on_cpu(tmp_path):
    env = {"RLR_SD_ARCH_DIR": str(tmp_path / "models"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env["PATH"] = str(Path(sys.executable).parent) + ":" + env["PATH"]
    out = tmp_path / "out"
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--tiny", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads((out / "gpu_tiny.json").read_text())
    assert data["device"] == "cpu" and data["tiny"] is True
    configs = {(run["config"], run["model"]) for run in data["runs"]}
    rlr = {("rlr h=1", "sd15"), ("rlr h=2", "sd15"), ("rlr h=1 +ckpt", "sd15"), ("rlr h=2 +ckpt", "sd15")}
    baselines = {("truncated-bp k=1", "sd15"), ("full-bp +ckpt", "sd15"), ("ddpo", "sd15"), ("alignprop +ckpt", "sd15"),
                 ("draft-lv", "sd15"), ("refl", "sd15")}
    assert rlr | baselines <= configs
    for run in data["runs"]:
        assert "error" not in run, run
        assert run["seconds_per_estimate"] > 0 and run["seconds_per_sampling_pass"] > 0
        assert abs(run["graph_gb_predicted"] - run["graph_gb_measured"]) <= 0.1 * run["graph_gb_measured"]
    bad = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--bogus"], capture_output=True, text=True)
    assert bad.returncode == 2 and "allowed" in bad.stderr
