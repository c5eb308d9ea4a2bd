"""The baselines a user would pick today (alignprop, draft-lv, refl) and ddpo's group advantages.

Tiny diffusers models from conftest.py and the analytic chain; the whole file runs in well under a
minute on one core.
"""

from __future__ import annotations

import math
import types

import pytest
import torch

from rlr_core.memory import prediction as mm
from rlr_core.chain import LinearGaussianChain, QuadraticReward
from rlr_core.estimators import estimator_options, get_estimator, list_estimators
from rlr_core.estimators.base import part_gradient
from rlr_core.rewards import get_reward

NEW = ("alignprop", "draft-lv", "refl")
PROMPTS = ["a red circle", "a blue square"] * 2


pytestmark = pytest.mark.usefixtures("one_thread")


class Redness:
    """Differentiable toy reward: mean red minus mean green/blue."""

    name = "redness"
    differentiable = True

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return images[:, 0].mean((1, 2)) - images[:, 1:].mean((1, 2, 3))


def randomize_lora(chain, seed=0, std=0.05):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in chain.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * std)


def flat_grad(chain) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in chain.trainable_parameters()])


# --- registry and options -------------------------------------------------------------------


def test_new_estimators_are_listed_with_their_options():
    assert set(NEW) <= set(list_estimators())
    assert estimator_options("alignprop") == {"k_min": 1, "k_max": None, "normalize": False}
    assert estimator_options("draft-lv") == {"n": 2, "normalize": False}
    assert estimator_options("refl") == {"window": None, "jumps": 1, "normalize": False}
    assert estimator_options("ddpo")["advantages"] == "batch"
    for name in NEW:
        estimator = get_estimator(name)
        assert estimator.name == name and estimator.requires_differentiable_reward


@pytest.mark.parametrize(
    "name,options,match",
    [
        ("alignprop", {"k_min": 0}, "k_min must be an integer >= 1"),
        ("alignprop", {"k_min": 3, "k_max": 2}, "k_max must be None .* or an integer >= k_min"),
        ("alignprop", {"k_max": 9}, r"k_max must be None or an integer in \[k_min, num_steps = 4\]"),
        ("alignprop", {"k_min": 5}, r"k_min must be an integer in \[1, num_steps = 4\]"),
        ("alignprop", {"k": 2}, "unknown option"),
        ("draft-lv", {"n": 0}, "n must be an integer >= 1"),
        ("draft-lv", {"n": 1.5}, "n must be an integer >= 1"),
        ("refl", {"window": (3, 1)}, "window must be None .* or two step indices 0 <= a <= b"),
        ("refl", {"window": (1, 4)}, r"window must lie within \[0, num_steps - 1 = 3\]"),
        ("refl", {"jumps": 0}, "jumps must be an integer >= 1"),
        ("ddpo", {"advantages": "prompt"}, r"advantages must be one of \['batch', 'group'\]"),
    ],
)
def test_bad_options_name_the_field_and_the_allowed_values(name, options, match):
    chain = types.SimpleNamespace(num_steps=4, renoise=lambda *a: None, predict_final=lambda *a: None)
    with pytest.raises(ValueError, match=match):
        get_estimator(name, **options).check(chain, Redness(), 4)


def test_missing_chain_methods_and_non_differentiable_rewards_are_refused():
    analytic = LinearGaussianChain(num_steps=4)
    with pytest.raises(ValueError, match="draft-lv needs a chain with renoise"):
        get_estimator("draft-lv").check(analytic, QuadraticReward(), 4)
    with pytest.raises(ValueError, match="refl needs a chain with predict_final"):
        get_estimator("refl").check(types.SimpleNamespace(num_steps=4), Redness(), 4)
    clicks = types.SimpleNamespace(differentiable=False)
    for name in NEW:
        with pytest.raises(ValueError, match="needs a differentiable reward"):
            chain = types.SimpleNamespace(num_steps=4, renoise=lambda *a: None, predict_final=lambda *a: None)
            get_estimator(name).check(chain, clicks, 4)


# --- every new estimator on a tiny diffusers chain ------------------------------------------


@pytest.mark.parametrize("name", NEW)
def test_estimate_writes_finite_gradients_to_every_lora_tensor(tiny_chain, name):
    randomize_lora(tiny_chain)
    result = get_estimator(name).estimate(tiny_chain, Redness(), PROMPTS, torch.Generator().manual_seed(0))
    assert result.skipped is None
    assert result.images.shape[0] == len(PROMPTS) and result.rewards.shape == (len(PROMPTS),)
    params = tiny_chain.trainable_parameters()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
    assert sum(int(p.grad.abs().sum() > 0) for p in params) > 0.9 * len(params)  # (nearly) every tensor moves
    torch.testing.assert_close(flat_grad(tiny_chain), result.total.to(flat_grad(tiny_chain)))
    assert set(result.parts) == {"fo"} and result.grad_norms["fo"] > 0
    T = tiny_chain.num_steps
    covered, dropped = result.steps["fo"], result.steps.get("dropped", [])
    assert covered[-1] == T - 1 and sorted(covered + dropped) == list(range(T))  # a tail, the rest dropped
    if name == "draft-lv":
        assert covered == [T - 1] and result.info["renoisings"] == 2
    if name == "alignprop":
        assert covered == list(range(T - int(result.info["k"]), T))
    if name == "refl":
        assert covered == list(range(int(result.info["j"]), T))


def test_alignprop_draws_k_within_its_range_and_checkpoints_the_kept_steps():
    chain, reward = LinearGaussianChain(num_steps=8), QuadraticReward()
    estimator = get_estimator("alignprop", k_min=2, k_max=5)
    generator = torch.Generator().manual_seed(0)
    drawn = []
    for _ in range(40):
        result = estimator.estimate(chain, reward, ["a"] * 2, generator)
        k = int(result.info["k"])
        drawn.append(k)
        assert result.steps["fo"] == list(range(8 - k, 8)) and result.steps["dropped"] == list(range(8 - k))
    assert set(drawn) == {2, 3, 4, 5}
    # k_max None: K up to num_steps (no step dropped then)
    seen = {int(get_estimator("alignprop").estimate(chain, reward, ["a"] * 2, generator).info["k"]) for _ in range(60)}
    assert seen <= set(range(1, 9)) and 8 in seen and 1 in seen
    # checkpointed: the same gradient as truncated-bp with the same K on the same noise (K drawn the same way)
    fixed = get_estimator("alignprop", k_min=3, k_max=3).estimate(chain, reward, ["a"] * 2, torch.Generator().manual_seed(7))
    plain = get_estimator("truncated-bp", k_range=(3, 3)).estimate(
        chain, reward, ["a"] * 2, torch.Generator().manual_seed(7))
    torch.testing.assert_close(fixed.total, plain.total)


def test_refl_draws_j_in_its_window_and_predicts_in_one_call():
    chain, reward = LinearGaussianChain(num_steps=8), QuadraticReward()
    generator = torch.Generator().manual_seed(0)
    estimator = get_estimator("refl", window=[2, 5])
    drawn = set()
    for _ in range(40):
        result = estimator.estimate(chain, reward, ["a"] * 2, generator)
        j = int(result.info["j"])
        drawn.add(j)
        assert result.steps["fo"] == list(range(j, 8)) and result.steps["dropped"] == list(range(j))
    assert drawn == {2, 3, 4, 5}
    assert get_estimator("refl").start_window(8) == (6, 7)  # the last quarter, ReFL's [30, 39] of 40
    assert get_estimator("refl").start_window(40) == (30, 39)
    assert get_estimator("refl").start_window(3) == (2, 2)


def test_refl_backpropagates_through_exactly_jumps_model_calls(tiny_chain):
    randomize_lora(tiny_chain)
    calls = []
    original = tiny_chain.model_output

    def counted(x, k, cond):
        calls.append((k, torch.is_grad_enabled()))
        return original(x, k, cond)

    tiny_chain.model_output = counted
    for jumps in (1, 2):
        calls.clear()
        estimator = get_estimator("refl", window=[1, 1], jumps=jumps)
        result = estimator.estimate(tiny_chain, Redness(), PROMPTS, torch.Generator().manual_seed(0))
        assert [k for k, grad in calls if grad] == [1, 2][:jumps] and result.grad_norms["total"] > 0
        assert [k for k, grad in calls if not grad] == [0]  # step 0 sampled without autograd


def test_draft_lv_averages_n_renoisings_of_the_final_state(tiny_chain):
    randomize_lora(tiny_chain)
    T = tiny_chain.num_steps
    last_step_calls = []
    original = tiny_chain.step_mean_std

    def counted(x, k, cond):
        if k == T - 1:
            last_step_calls.append(torch.is_grad_enabled())
        return original(x, k, cond)

    tiny_chain.step_mean_std = counted
    results = {}
    for n in (1, 3):
        last_step_calls.clear()
        estimator = get_estimator("draft-lv", n=n)
        results[n] = estimator.estimate(tiny_chain, Redness(), PROMPTS, torch.Generator().manual_seed(5))
        assert last_step_calls == [False] + [True] * n  # sampled once without grad, then n re-denoisings
        assert results[n].info["renoisings"] == n
    # the estimate is the mean of the n re-noisings' first-order gradients (re-noising 0 is the scored one)
    rollout = results[3].rollout
    data, params = rollout.data, tiny_chain.trainable_parameters()
    singles = []
    for index in range(3):
        images = estimator.redenoise(tiny_chain, data["x_final"], data["cond"], data["seeds"], index)
        if index == 0:
            torch.testing.assert_close(images.detach(), results[3].images)
        singles.append(part_gradient(-Redness()(images, PROMPTS).sum() / len(PROMPTS), params))
    torch.testing.assert_close(results[3].total, torch.stack(singles).mean(0), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(results[1].total, singles[0], rtol=1e-4, atol=1e-7)
    assert not torch.allclose(singles[0], singles[1])  # independent re-noisings
    # rollout() + gradient() without estimate(): only the scored re-noising, and it says so
    two_phase = get_estimator("draft-lv", n=3)
    rollout = two_phase.rollout(tiny_chain, PROMPTS, torch.Generator().manual_seed(5), True)
    assert rollout.images.requires_grad  # the shown images carry the graph
    result = two_phase.gradient(rollout, Redness()(rollout.images, PROMPTS))
    assert result.info["renoisings"] == 1
    torch.testing.assert_close(result.total, singles[0], rtol=1e-4, atol=1e-7)


def test_renoise_is_forward_diffusion_to_the_input_of_step_k(tiny_chain):
    scheduler_alphas = tiny_chain.scheduler.alphas_cumprod.double()
    x_final = torch.full((64, 4, 8, 8), 0.7)
    n = x_final.numel()
    for k in (0, tiny_chain.num_steps - 1):
        a_t = float(scheduler_alphas[tiny_chain.timestep(k)])
        x_k = tiny_chain.renoise(x_final, k, torch.Generator().manual_seed(k))
        assert x_k.shape == x_final.shape and x_k.dtype == torch.float32
        noise = (x_k - math.sqrt(a_t) * x_final) / math.sqrt(1 - a_t)  # must be N(0, 1)
        assert abs(float(noise.mean())) < 5 / math.sqrt(n)
        assert abs(float(noise.std()) - 1.0) < 5 * math.sqrt(2 / n)
    same = tiny_chain.renoise(x_final, 1, torch.Generator().manual_seed(3))
    torch.testing.assert_close(same, tiny_chain.renoise(x_final, 1, torch.Generator().manual_seed(3)))
    with pytest.raises(ValueError, match="step k must be an int"):
        tiny_chain.renoise(x_final, tiny_chain.num_steps, torch.Generator())


# --- agreement with full backprop -----------------------------------------------------------


@pytest.fixture(scope="module")
def mini_chain_and_reference(mini_pixel_dir):
    """T=6 chain on the mini model with random LoRA weights, and the mean of 24 full-bp estimates."""
    from rlr_core.diagnostics import collect_estimates
    from rlr_core.diffusers_chain import load_model

    chain = load_model(str(mini_pixel_dir), num_steps=6, lora_rank=1, guidance_scale=1.0, device="cpu", dtype="float32")
    randomize_lora(chain, std=0.3)
    reference = collect_estimates(chain, Redness(), get_estimator("full-bp"), ["a red circle"] * 4, 24, seed=1)
    return chain, reference


@pytest.mark.parametrize(
    "name,options", [("alignprop", {}), ("draft-lv", {}), ("refl", {}), ("refl", {"window": [2, 5]})]
)
def test_mean_estimate_points_like_full_bp(mini_chain_and_reference, name, options):
    from rlr_core.diagnostics import collect_estimates, cosine

    chain, reference = mini_chain_and_reference
    stats = collect_estimates(chain, Redness(), get_estimator(name, **options), ["a red circle"] * 4, 12, seed=2)
    assert stats.mean_norm > 0
    assert cosine(stats.mean, reference.mean) > 0.5, (name, options, cosine(stats.mean, reference.mean))


# --- memory model ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,options,predict_options",
    [
        ("alignprop", {"k_min": 3, "k_max": 3}, {"k_max": 3}),
        ("draft-lv", {}, {}),
        ("refl", {"window": [1, 1], "jumps": 2}, {"jumps": 2}),
        ("rlr-paper", {}, {}),
        ("rlr-released", {}, {}),
    ],
)
def test_memory_model_predicts_the_new_estimators(tiny_chain, name, options, predict_options):
    reward, prompts = get_reward("saturation"), ["a red circle"] * 4  # rlr-paper: rows sharing noise share the prompt
    result = get_estimator(name, **options).estimate(tiny_chain, reward, prompts, torch.Generator().manual_seed(0))
    predicted = mm.predict(tiny_chain, name, len(prompts), reward=reward, **predict_options)
    assert result.graph_memory_mb > 0
    assert abs(predicted.graph_mb - result.graph_memory_mb) <= 0.10 * result.graph_memory_mb, (
        name, predicted.graph_mb, result.graph_memory_mb)


def test_memory_model_orders_the_baselines_sensibly(tiny_sd_dir):
    from rlr_core.diffusers_chain import load_model

    chain = load_model(str(tiny_sd_dir), num_steps=8, lora_rank=2, guidance_scale=3.0, device="cpu", dtype="float32")
    reward = get_reward("saturation")

    def predict(name, **options):
        return mm.predict(chain, name, 2, reward=reward, **options)

    full, draft, refl = predict("full-bp"), predict("draft-lv"), predict("refl")
    alignprop = predict("alignprop")  # K up to num_steps, checkpointed
    assert draft.graph_bytes == predict("truncated-bp", k=1).graph_bytes  # one last-step graph
    assert refl.graph_bytes < full.graph_bytes / 4 and predict("refl", jumps=3).graph_bytes > refl.graph_bytes
    assert alignprop.graph_bytes < draft.graph_bytes  # only step inputs stay alive ...
    assert alignprop.parts["recompute"] > 0 and alignprop.peak_bytes < full.peak_bytes  # ... one step is rebuilt
    assert predict("alignprop", k_max=8).graph_bytes > predict("alignprop", k_max=1).graph_bytes
    with pytest.raises(ValueError, match="k_max must be between 1 and num_steps"):
        predict("alignprop", k_max=9)
    with pytest.raises(ValueError, match="needs a differentiable reward"):
        mm.predict(chain, "refl", 2, reward=None)


# --- ddpo with group advantages -------------------------------------------------------------


def test_ddpo_group_advantages_are_standardised_per_prompt():
    estimator = get_estimator("ddpo", advantages="group")
    prompts = ["a", "b", "b", "a", "b", "a", "b", "a", "solo"]  # groups: a (4 rows), b (4 rows), solo (1 row)
    rewards = torch.tensor([1.0, 10.0, 3.0, 2.0, 30.0, 4.0, 20.0, 7.0, 5.0])
    advantages = estimator.advantages(rewards, prompts)
    for prompt in ("a", "b"):
        rows = [i for i, p in enumerate(prompts) if p == prompt]
        group = advantages[rows]
        assert abs(float(group.mean())) < 1e-9
        assert abs(float(group.std(unbiased=False)) - 1.0) < 1e-3
        expected = (rewards[rows] - rewards[rows].mean()) / (rewards[rows].std(unbiased=False) + 1e-4)
        torch.testing.assert_close(group.float(), expected)
    assert float(advantages[prompts.index("solo")]) == 0.0
    # the default keeps the leave-one-out baseline over the whole batch
    batch = get_estimator("ddpo").advantages(rewards, prompts)
    torch.testing.assert_close(batch[0], (rewards[0] - (rewards.sum() - rewards[0]) / 8).double())
    assert not get_estimator("ddpo", advantages="group").uses_baseline()


def test_ddpo_group_gradient_ignores_per_prompt_offsets_and_scales():
    """Group advantages are invariant to r -> c_g r + d_g per prompt group; the batch baseline is not."""
    chain = LinearGaussianChain(num_steps=4)
    prompts = ["a", "b"] * 3
    rewards = torch.tensor([0.3, -1.0, 0.9, 2.0, -0.4, 0.5], dtype=torch.float64)
    shifted = torch.where(torch.tensor([p == "a" for p in prompts]), 3.0 * rewards + 5.0, rewards - 7.0)

    def gradient(options, values):
        estimator = get_estimator("ddpo", **options)
        rollout = estimator.rollout(chain, prompts, torch.Generator().manual_seed(3), differentiable_reward=False)
        return estimator.gradient(rollout, values)

    group, group_shifted = gradient({"advantages": "group"}, rewards), gradient({"advantages": "group"}, shifted)
    assert set(group.parts) == {"lr"} and group.grad_norms["total"] > 0
    torch.testing.assert_close(group.total, group_shifted.total, rtol=1e-3, atol=1e-6)
    batch, batch_shifted = gradient({}, rewards), gradient({}, shifted)
    assert not torch.allclose(batch.total, batch_shifted.total, rtol=1e-2)


def test_ddpo_group_runs_on_a_diffusers_chain_with_its_first_order_last_step(tiny_chain):
    randomize_lora(tiny_chain)
    result = get_estimator("ddpo", advantages="group").estimate(
        tiny_chain, Redness(), PROMPTS, torch.Generator().manual_seed(0))
    assert set(result.parts) == {"fo", "lr"} and all(v > 0 for v in result.grad_norms.values())
    assert torch.isfinite(flat_grad(tiny_chain)).all()
