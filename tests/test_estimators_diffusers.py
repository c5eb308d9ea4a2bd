"""Every estimator on a tiny real diffusers chain: gradients only on LoRA, memory, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from rlr_core.estimators import estimator_options, get_estimator, list_estimators


class Redness:
    """Differentiable toy reward: mean red minus mean green/blue."""

    name = "redness"
    differentiable = True

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return images[:, 0].mean((1, 2)) - images[:, 1:].mean((1, 2, 3))


class Clicks:
    """Non-differentiable reward standing in for human clicks."""

    name = "clicks"
    differentiable = False

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return (images[:, 0].mean((1, 2)) > images[:, 2].mean((1, 2))).float()


class NaNReward(Redness):
    def __call__(self, images, prompts):
        values = super().__call__(images, prompts)
        return torch.where(torch.arange(len(values)) == 1, torch.full_like(values, math.nan), values)


PROMPTS = ["a red circle", "a blue square"] * 4


def randomize_lora(chain, seed=0, std=0.05):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in chain.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * std)


def non_lora_parameters(chain):
    lora = {id(p) for p in chain.trainable_parameters()}
    modules = [chain.unet, chain.text_encoder] + ([chain.vae] if getattr(chain, "vae", None) is not None else [])
    return [p for m in modules for p in m.parameters() if id(p) not in lora]


@pytest.mark.parametrize("name", list_estimators())
def test_every_estimator_runs_and_only_lora_gets_gradients(tiny_chain, name):
    randomize_lora(tiny_chain)
    estimator = get_estimator(name)
    result = estimator.estimate(tiny_chain, Redness(), PROMPTS, torch.Generator().manual_seed(0))
    assert result.skipped is None
    assert result.images.shape[0] == len(PROMPTS) and result.rewards.shape == (len(PROMPTS),)
    flat = torch.cat([p.grad.reshape(-1) for p in tiny_chain.trainable_parameters()])
    assert torch.isfinite(flat).all() and flat.abs().sum() > 0
    assert torch.allclose(flat, result.total.to(flat), atol=1e-6)
    assert all(p.grad is None for p in non_lora_parameters(tiny_chain))
    assert result.seconds > 0 and result.graph_memory_mb >= 0
    covered = sorted(k for part, ks in result.steps.items() if part not in ("dropped", "uncovered") for k in ks)
    if name in ("rlr-paper", "full-bp", "ddpo", "zo"):
        assert covered == list(range(tiny_chain.num_steps)), result.steps  # every step exactly once
    if name == "rlr":  # the default drops the remaining steps, and says so
        dropped = result.steps.get("dropped", [])
        assert sorted(covered + dropped) == list(range(tiny_chain.num_steps)), result.steps


@pytest.mark.parametrize(
    "options", [{}, {"remaining": "lr"}, {"antithetic": False}, {"zo_directions": "per-step"}, {"zo_directions": "per-batch"}]
)
def test_rlr_with_clicks_rollout_then_gradient(tiny_chain, options):
    """The preference path: sample, show, score later; ZO covers the FO step (no in-place clash)."""
    randomize_lora(tiny_chain)
    estimator = get_estimator("rlr-paper", **options)
    rollout = estimator.rollout(tiny_chain, PROMPTS, torch.Generator().manual_seed(1), differentiable_reward=False)
    shown = rollout.display_images()
    clicks = torch.tensor([1.0, 0, 0, 1, 0, 1, 1, 0])
    result = estimator.gradient(rollout, clicks)
    assert torch.equal(result.images, shown)
    assert result.steps["zo"][-1] == tiny_chain.num_steps - 1 and "fo" not in result.steps
    assert result.grad_norms["total"] > 0


def test_default_rlr_with_clicks_uses_the_ho_sub_chain_only(tiny_chain):
    """The default drops the remaining steps and (no FO with clicks) the last one: HO only, twins only."""
    randomize_lora(tiny_chain)
    estimator = get_estimator("rlr")
    assert estimator.noise_groups(False) == 2
    rollout = estimator.rollout(tiny_chain, PROMPTS, torch.Generator().manual_seed(1), differentiable_reward=False)
    result = estimator.gradient(rollout, torch.tensor([1.0, 0, 0, 1, 0, 1, 1, 0]))
    assert set(result.parts) == {"ho"} and result.grad_norms["total"] > 0
    assert tiny_chain.num_steps - 1 in result.steps["dropped"] and "zo" not in result.steps


def test_full_and_truncated_bp_refuse_non_differentiable_rewards(tiny_chain):
    for name in ("full-bp", "truncated-bp", "rlr-released"):
        with pytest.raises(ValueError, match="differentiable reward"):
            get_estimator(name).estimate(tiny_chain, Clicks(), PROMPTS, torch.Generator().manual_seed(0))


def test_non_finite_rewards_skip_and_zero_the_gradient(tiny_chain):
    randomize_lora(tiny_chain)
    before = [p.detach().clone() for p in tiny_chain.trainable_parameters()]
    result = get_estimator("rlr").estimate(tiny_chain, NaNReward(), PROMPTS, torch.Generator().manual_seed(0))
    assert result.skipped and "non-finite" in result.skipped
    assert all(torch.count_nonzero(p.grad) == 0 for p in tiny_chain.trainable_parameters())
    assert all(torch.equal(p, b) for p, b in zip(tiny_chain.trainable_parameters(), before))


def test_perturbation_restores_parameters_exactly(tiny_chain):
    randomize_lora(tiny_chain)
    params = tiny_chain.trainable_parameters()
    before = [p.detach().clone() for p in params]
    storages = [p.data.data_ptr() for p in params]
    with tiny_chain.perturbed(seed=5, scale=0.1):
        assert any(not torch.equal(p, b) for p, b in zip(params, before))
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    assert storages == [p.data.data_ptr() for p in params]


@pytest.mark.parametrize(
    "name,options,batch,match",
    [
        ("nope", {}, 8, "estimator must be one of"),
        ("rlr", {"hh": 2}, 8, "unknown option"),
        ("rlr", {"h": 4}, 8, "h must be between 1 and num_steps - 1"),
        ("rlr", {"h": 1, "window": (0, 3)}, 8, "window must lie within"),
        ("rlr", {"remaining": "zoo"}, 8, "remaining must be one of"),
        ("rlr", {"remaining": "lr", "antithetic": False}, 1, "batch_size must be >= 2"),
        ("rlr-paper", {}, 6, "multiple of 4"),
        ("rlr", {}, 5, "multiple of 2"),
        ("ddpo", {}, 1, "batch_size must be >= 2"),
        ("zo", {"scale": 0}, 8, "scale must be a finite number > 0"),
        ("truncated-bp", {"k": 9}, 8, "k must be <= num_steps"),
        ("rlr-released", {"chain_len": 4}, 8, "chain_len must be <= num_steps - 1"),
    ],
)
def test_bad_input_names_the_field(tiny_chain, name, options, batch, match):
    with pytest.raises(ValueError, match=match):
        estimator = get_estimator(name, **options)
        estimator.check(tiny_chain, Redness(), batch)


def test_estimator_options_lists_defaults():
    options = estimator_options("rlr")
    assert options["h"] == 2 and options["remaining"] == "none" and options["baseline"] == "loo"
    assert options["part_weights"] == "fixed"
    assert estimator_options("rlr-paper")["remaining"] == "zo"  # the unbiased preset
    assert options["normalize"] is False
    assert estimator_options("ddpo")["normalize"] is True


def test_graph_memory_flat_for_rlr_and_linear_for_full_bp(tiny_sd_dir):
    from rlr_core.diffusers_chain import load_model

    graph = {}
    for steps in (10, 40):
        chain = load_model(str(tiny_sd_dir), num_steps=steps, lora_rank=2, guidance_scale=1.0, device="cpu", dtype="float32")
        for name in ("rlr", "full-bp"):
            result = get_estimator(name).estimate(chain, Redness(), PROMPTS[:4], torch.Generator().manual_seed(0))
            graph[(name, steps)] = result.graph_memory_mb
    assert graph[("rlr", 40)] <= 1.1 * graph[("rlr", 10)], graph
    assert graph[("full-bp", 40)] >= 3.0 * graph[("full-bp", 10)], graph
    assert graph[("rlr", 10)] < graph[("full-bp", 10)], graph


@pytest.fixture(scope="module")
def mini_chain_and_reference(mini_pixel_dir):
    """T=6 chain on the mini model with random LoRA weights, and the full-bp mean gradient."""
    from rlr_core.diagnostics import collect_estimates
    from rlr_core.diffusers_chain import load_model

    torch.set_num_threads(1)
    chain = load_model(str(mini_pixel_dir), num_steps=6, lora_rank=1, guidance_scale=1.0, device="cpu", dtype="float32")
    randomize_lora(chain, std=0.3)
    reference = collect_estimates(chain, Redness(), get_estimator("full-bp"), ["a red circle"] * 16, 64, seed=1)
    return chain, reference


@pytest.mark.parametrize(
    "options,repeats",
    [
        ({"remaining": "lr"}, 64),
        ({}, 32),  # the default
        # ZO on the remaining steps: variance ~ (LoRA size / directions) |g|^2, so it needs more
        # estimates (about 3 minutes); the window keeps the HO exit off step 4, whose std is 0.01 here.
        # Its unbiasedness is proven on the analytic chain (test_estimators_analytic), so it runs with -m slow.
        pytest.param({"remaining": "zo", "window": (0, 2)}, 192, marks=pytest.mark.slow),
    ],
)
def test_rlr_mean_points_like_full_bp_mean(mini_chain_and_reference, options, repeats):
    from rlr_core.diagnostics import collect_estimates, cosine

    chain, reference = mini_chain_and_reference
    if options:  # the plain HO term with the remaining steps estimated (unbiased variants)
        options = {"control_variate": False, "ho_weight": 1.0, "window": None, **options}
    stats = collect_estimates(chain, Redness(), get_estimator("rlr", **options), ["a red circle"] * 16, repeats, seed=2)
    assert cosine(stats.mean, reference.mean) > 0.5, (options, cosine(stats.mean, reference.mean))


def test_rlr_survives_a_chain_that_perturbs_in_place(tiny_chain):
    """A third-party Chain may implement perturbed() in place; RLR then replays the HO sub-chain."""
    import contextlib

    from rlr_core.chain import perturbation_direction

    randomize_lora(tiny_chain)
    estimator = get_estimator("rlr-paper")
    reference = estimator.estimate(tiny_chain, Clicks(), PROMPTS, torch.Generator().manual_seed(4)).total.clone()

    @contextlib.contextmanager
    def perturbed_in_place(seed, scale):
        params = tiny_chain.trainable_parameters()
        saved = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, xi in zip(params, perturbation_direction(params, seed)):
                p.add_(xi, alpha=scale)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, original in zip(params, saved):
                    p.copy_(original)

    tiny_chain.perturbed = perturbed_in_place
    replayed = []
    estimator = get_estimator("rlr-paper")
    original_replay = estimator._recompute_ho_log_prob
    estimator._recompute_ho_log_prob = lambda rollout: replayed.append(1) or original_replay(rollout)
    result = estimator.estimate(tiny_chain, Clicks(), PROMPTS, torch.Generator().manual_seed(4))
    assert replayed, "the in-place perturbation did not invalidate the HO graph: the test proves nothing"
    assert torch.allclose(result.total, reference, rtol=1e-5, atol=1e-7)
    # the two-phase path (no memory meter around it) replays the same way
    rollout = estimator.rollout(tiny_chain, PROMPTS, torch.Generator().manual_seed(4), differentiable_reward=False)
    two_phase = estimator.gradient(rollout, Clicks()(rollout.images, PROMPTS))
    assert len(replayed) == 2 and torch.allclose(two_phase.total, reference, rtol=1e-5, atol=1e-7)


def test_predict_final_is_ddim_eta0_on_the_full_grid_and_the_last_step(tiny_chain):
    """predict_final with one jump per remaining step is the deterministic sampler; from the last
    step (deterministic, final_eta 0) it is that step's mean."""
    randomize_lora(tiny_chain)
    cond = tiny_chain.condition(PROMPTS[:2])
    x = tiny_chain.initial(2, torch.Generator().manual_seed(3))
    deterministic = tiny_chain.with_sampler_settings(tiny_chain.num_steps, tiny_chain.guidance_scale, 0.0)
    with torch.no_grad():
        expected = x
        for k in range(1, tiny_chain.num_steps):
            expected, _ = deterministic.step_mean_std(expected, k, cond)
        got = tiny_chain.predict_final(x, 1, cond, jumps=tiny_chain.num_steps - 1)
        last, _ = tiny_chain.step_mean_std(x, tiny_chain.num_steps - 1, cond)
        coarse = tiny_chain.predict_final(x, 1, cond, jumps=1)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(tiny_chain.predict_final(x, tiny_chain.num_steps - 1, cond, jumps=3), last)
    assert not torch.allclose(coarse, expected, atol=1e-3)  # fewer jumps: a different (coarser) guess
    with pytest.raises(ValueError, match="jumps"):
        tiny_chain.predict_final(x, 1, cond, jumps=0)


def test_rlr_control_variate_adds_a_cv_part_and_keeps_clicks_working(tiny_chain):
    randomize_lora(tiny_chain)
    estimator = get_estimator("rlr", control_variate=True)
    first = estimator.estimate(tiny_chain, Redness(), PROMPTS, torch.Generator().manual_seed(0))
    assert first.info["cv_beta"] == 1.0 and float(first.parts["cv"].norm()) > 0.0  # no earlier iteration: 1
    second = estimator.estimate(tiny_chain, Redness(), PROMPTS, torch.Generator().manual_seed(1))
    assert second.info["cv_beta"] != 0.0 or estimator.cv_statistics  # slope from the first batch
    assert set(second.parts) == {"fo", "ho", "cv"}
    resumed = get_estimator("rlr", control_variate=True)
    resumed.load_state_dict(estimator.state_dict())  # checkpoints keep the slopes
    assert {j: resumed.cv_beta(j) for j in range(4)} == {j: estimator.cv_beta(j) for j in range(4)}
    flat = torch.cat([p.grad.reshape(-1) for p in tiny_chain.trainable_parameters()])
    torch.testing.assert_close(flat, sum(second.parts.values()).to(flat), rtol=1e-4, atol=1e-6)
    # the two-phase path (clicks: no differentiable reward) runs the plain HO term
    rollout = estimator.rollout(tiny_chain, PROMPTS, torch.Generator().manual_seed(2), False)
    result = estimator.gradient(rollout, torch.arange(len(PROMPTS), dtype=torch.float32))
    assert "cv" not in result.parts and float(result.parts["ho"].norm()) > 0
    with pytest.raises(ValueError, match="ho_weight"):  # clicks + the residual dropped: no gradient at all
        get_estimator("rlr", control_variate=True, ho_weight=0.0).rollout(tiny_chain, PROMPTS, torch.Generator(), False)
    with pytest.raises(ValueError, match="cv_jumps"):
        get_estimator("rlr", control_variate=True, cv_jumps=0)
    with pytest.raises(ValueError, match="cv_scale"):
        get_estimator("rlr", cv_scale="big")
