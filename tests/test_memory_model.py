"""The memory model against measurement on a reduced SD-shaped model, the SD architectures, and h: auto."""

from __future__ import annotations

import json

import pytest
import torch

from rlr_core.memory import prediction as mm
from rlr_core import sd_arch
from rlr_core.diffusers_chain import load_model
from rlr_core.estimators import get_estimator
from rlr_core.memory import LiveBytesTracker, MemoryMeter, SavedBytesCounter
from rlr_core.rewards import get_reward

STEPS = 4
PROMPTS = ["a lighthouse at dawn"] * 2


pytestmark = pytest.mark.usefixtures("one_thread")


def _chain(path, ckpt: bool, **kwargs):
    return load_model(str(path), num_steps=STEPS, lora_rank=4, guidance_scale=7.5, device="cpu", dtype="float32",
                      gradient_checkpointing=ckpt, **kwargs)


# --- the architectures ---------------------------------------------------------------------


def test_full_size_architectures_match_published_parameter_counts():
    counts = {arch: (sd_arch.parameter_count(sd_arch.build_unet(arch, device="meta")),
                     sd_arch.parameter_count(sd_arch.build_text_encoder(arch, device="meta")))
              for arch in ("sd15", "sd21")}
    assert counts["sd15"] == (859_520_964, 123_060_480)
    assert counts["sd21"] == (865_910_724, 340_387_840)
    assert sd_arch.parameter_count(sd_arch.build_vae("sd15", device="meta")) == 83_653_863  # SD 1.x and 2.x share it
    assert sd_arch.vae_config("sd15") == {**sd_arch.vae_config("sd21"), "sample_size": 512}
    assert sd_arch.unet_config("sd21")["sample_size"] == 96 and sd_arch.unet_config("sd21-base")["sample_size"] == 64
    assert sd_arch.scheduler_config("sd21")["prediction_type"] == "v_prediction"
    assert sd_arch.scheduler_config("sd21-base")["prediction_type"] == "epsilon"


def test_sd_arch_rejects_unknown_names():
    with pytest.raises(ValueError, match="arch must be one of"):
        sd_arch.unet_config("sd3")
    with pytest.raises(ValueError, match="width_divisor"):
        sd_arch.unet_config("sd15", width_divisor=0)


def test_reduced_folder_loads_through_load_model(reduced_sd_dir):
    chain = _chain(reduced_sd_dir, False)
    assert chain.image_size == (64, 64) and chain.prediction_type == "epsilon" and chain.vae is not None
    info = json.loads((reduced_sd_dir / "rlr_studio.json").read_text())
    assert info["arch"] == "sd15" and info["width_divisor"] == 20
    assert len(chain.tokenizer) == 49408
    images = chain.decode(chain.initial(1, torch.Generator().manual_seed(0)))
    assert images.shape == (1, 3, 64, 64)


# --- counters -------------------------------------------------------------------------------


def test_saved_bytes_counter_agrees_with_memory_meter_and_works_on_meta():
    layer = torch.nn.Linear(64, 64).requires_grad_(False)
    x = torch.randn(8, 64, requires_grad=True)
    with MemoryMeter() as meter:
        y = torch.tanh(layer(x * 2.0))
    with SavedBytesCounter(SavedBytesCounter.storage_keys(layer)) as counter:
        y2 = torch.tanh(layer(x * 2.0))
    assert counter.peak_bytes + counter.weight_bytes == int(meter.graph_memory_mb * 2**20)
    assert counter.weight_bytes == 64 * 64 * 4  # W^T saved as a view of the weight
    with SavedBytesCounter() as meta_counter:
        torch.tanh(torch.empty(8, 64, device="meta", requires_grad=True) * 2.0)
    assert meta_counter.peak_bytes == 8 * 64 * 4
    del y, y2


def test_live_bytes_tracker_sees_peak_not_final():
    with torch.no_grad(), LiveBytesTracker() as tracker:
        big = torch.empty(1000, 1000, device="meta")
        small = big.sum()
        del big
        torch.empty(10, device="meta")
    assert tracker.peak_bytes >= 1000 * 1000 * 4
    assert tracker.live_bytes < 1000 * 1000 * 4
    del small


def _touch_mb(mb: int, hold_s: float = 0.0) -> None:
    """Make the process's resident memory rise by about ``mb`` MB for a moment, then fall back (a fresh
    anonymous mapping, written page by page: the allocator cannot serve it from memory already resident)."""
    import mmap
    import time

    block = mmap.mmap(-1, mb * 2**20)
    for offset in range(0, mb * 2**20, 4096):
        block[offset] = 1
    time.sleep(hold_s)
    block.close()


@pytest.mark.parametrize("how", ["peak mark", "sampling thread"])
def test_memory_meter_sees_a_transient_cpu_peak(monkeypatch, how):
    from rlr_core.memory import meter as meter_module

    if meter_module.psutil is None or (how == "peak mark" and meter_module._peak_mark_bytes() is None):
        pytest.skip("no resident-memory reading on this platform")
    if how == "sampling thread":  # the fallback where the kernel's peak mark is not available
        monkeypatch.setattr(meter_module, "_peak_mark_bytes", lambda: None)
    with MemoryMeter() as outer:
        _touch_mb(300)
        with MemoryMeter() as inner:  # a nested meter resets the mark: the outer one keeps what it saw
            _touch_mb(100, hold_s=0.05)  # the thread samples every 2 ms: give it a look at the held block
    assert 80 <= inner.peak_memory_mb < 250, inner.peak_memory_mb
    if how == "peak mark":
        assert outer.peak_memory_mb >= 250, outer.peak_memory_mb
        assert not meter_module._OPEN_PEAK_MARK_METERS


# --- predicted vs measured ------------------------------------------------------------------


@pytest.mark.parametrize("ckpt", [False, True], ids=["plain", "checkpointing"])
def test_predicted_graph_memory_within_10_percent_of_measured(reduced_sd_dir, ckpt):
    chain = _chain(reduced_sd_dir, ckpt)
    reward = get_reward("saturation")
    configs = [("rlr", {"h": 1, "control_variate": False}), ("rlr", {"h": 2, "control_variate": False}),
               ("rlr", {"h": 3, "control_variate": False}), ("full-bp", {}), ("truncated-bp", {"k": 2}),
               ("rlr", {"h": 2, "control_variate": True, "cv_jumps": 3}),  # the stand-in's graph counts
               ("rlr", {"h": 1, "control_variate": "auto", "cv_jumps": 1})]
    for name, options in configs:
        result = get_estimator(name, **options).estimate(chain, reward, PROMPTS, torch.Generator().manual_seed(0))
        predicted = mm.predict(chain, name, len(PROMPTS), reward=reward, **options).graph_mb
        measured = result.graph_memory_mb
        assert measured > 0
        assert abs(predicted - measured) <= 0.10 * measured, (name, options, ckpt, predicted, measured)


def test_checkpointing_and_h_move_the_prediction_the_right_way(reduced_sd_dir):
    chain, reward = _chain(reduced_sd_dir, False), get_reward("saturation")
    graph = {h: mm.predict(chain, "rlr", 2, reward=reward, h=h, control_variate=False).graph_bytes for h in (1, 2, 3)}
    assert graph[3] - graph[2] == graph[2] - graph[1] > 0  # one more HO step, the same cost
    plain = mm.predict(chain, "full-bp", 2, reward=reward)
    ckpt = mm.predict(chain, "full-bp", 2, reward=reward, gradient_checkpointing=True)
    assert ckpt.graph_bytes < plain.graph_bytes / 5
    assert ckpt.parts["recompute"] > 0 and plain.parts["recompute"] == 0
    assert mm.predict(chain, "zo", 2).graph_bytes == 0
    with pytest.raises(ValueError, match="h must be between 1 and num_steps - 1"):
        mm.predict(chain, "rlr", 2, h=STEPS)
    with pytest.raises(ValueError, match="estimator must be one of"):
        mm.predict(chain, "bogus", 2)


def test_clip_reward_graph_predicted(reduced_sd_dir):
    reward = get_reward("clip", clip_model="ViT-B-32", pretrained="random")
    images = torch.rand(1, 3, 64, 64, requires_grad=True)
    with MemoryMeter() as meter:
        reward(images, ["a lighthouse"])
    spec = mm.spec_for_arch("sd15", width_divisor=20, image_size=64, num_steps=STEPS, reward="clip",
                            reward_clip_model="ViT-B-32")
    parts = mm.trace_parts(spec, mm.Settings(batch_size=1, dtype="float32"))
    predicted = (parts.reward + parts.reward_views) / 2**20
    assert abs(predicted - meter.graph_memory_mb) <= 0.10 * meter.graph_memory_mb


# --- h: auto --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spec10():
    return mm.spec_for_arch("sd15", width_divisor=20, image_size=64, num_steps=10, reward="pixel")


def _peak_gb(spec, h, ckpt):
    return mm.predict(spec, "rlr", 2, dtype="float16", gradient_checkpointing=ckpt, h=h).peak_gb


def test_choose_h_picks_the_largest_h_that_fits_without_checkpointing(spec10):
    budget = _peak_gb(spec10, 9, False) + 1e-6
    h, ckpt, gb = mm.choose_h(spec10, 2, memory_budget_gb=budget, dtype="float16", device_type="cpu")
    assert (h, ckpt) == (9, False) and gb == pytest.approx(_peak_gb(spec10, 9, False))
    h, ckpt, _ = mm.choose_h(spec10, 2, memory_budget_gb=budget, dtype="float16", device_type="cpu", max_h=3)
    assert (h, ckpt) == (3, False)


def test_choose_h_switches_checkpointing_on_when_it_lets_a_larger_h_fit(spec10):
    plain = [_peak_gb(spec10, h, False) for h in range(1, 10)]
    budget = (plain[1] + plain[2]) / 2  # h = 2 fits without checkpointing, h = 3 does not
    assert _peak_gb(spec10, 9, True) < budget  # with checkpointing every h fits here
    h, ckpt, gb = mm.choose_h(spec10, 2, memory_budget_gb=budget, dtype="float16", device_type="cpu")
    assert (h, ckpt) == (9, True) and gb <= budget
    h, ckpt, _ = mm.choose_h(spec10, 2, memory_budget_gb=budget, dtype="float16", device_type="cpu", max_h=2)
    assert (h, ckpt) == (2, False)  # checkpointing only when it buys a larger h


def test_choose_h_refuses_with_needed_and_available_memory(spec10):
    needed = _peak_gb(spec10, 1, True)
    with pytest.raises(ValueError, match=r"needs [0-9.]+ GB .* but 0\.01 GB are available") as info:
        mm.choose_h(spec10, 2, memory_budget_gb=0.01, dtype="float16", device_type="cpu")
    assert f"{needed:.2f} GB" in str(info.value)
    with pytest.raises(ValueError, match="memory_budget_gb must be a number > 0"):
        mm.choose_h(spec10, 2, memory_budget_gb=-1)


def test_choose_h_default_budget_is_free_memory_for_a_loaded_chain(reduced_sd_dir):
    chain = _chain(reduced_sd_dir, False)
    h, ckpt, gb = mm.choose_h(chain, 2, reward=get_reward("saturation"))  # fits in any test machine's free RAM
    assert (h, ckpt) == (STEPS - 1, False) and 0 < gb < mm.free_memory_gb("cpu") + 1
