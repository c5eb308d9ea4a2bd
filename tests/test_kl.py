"""KL regularisation toward the base model (rlr_core.kl, TrainConfig.kl_weight): the value and the
gradient of the Monte-Carlo estimate against the closed form on the analytic chain, the step
subsampling without bias, and the Trainer adding the part "kl"."""

from __future__ import annotations

import contextlib
import json
from typing import Iterator

import pytest
import torch

from rlr_core.chain import LinearGaussianChain, QuadraticReward
from rlr_core.kl import trajectory_kl_gradient


class BaseChain(LinearGaussianChain):
    """The analytic chain with a "base model": ``adapters_disabled`` swaps theta for ``theta0``."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.theta0 = self.theta.detach().clone() - 0.4  # the base weights; theta is the fine-tuned one

    @contextlib.contextmanager
    def adapters_disabled(self) -> Iterator[None]:
        original = self.theta.data
        self.theta.data = self.theta0.clone()
        try:
            yield
        finally:
            self.theta.data = original


def exact_kl_terms(chain: BaseChain, prompt: str = "p") -> tuple[torch.Tensor, torch.Tensor]:
    """(KL(p_theta || p_0) of the trajectories, the surrogate whose theta-gradient is the DPOK gradient:
    the same sum with the state moments under p_theta held fixed)."""
    theta, theta0 = chain.theta, chain.theta0
    mean = torch.zeros(chain.dim, dtype=chain.dtype)
    cov = torch.eye(chain.dim, dtype=chain.dtype)
    offset = chain._prompt_offset(prompt)
    kl, surrogate = 0.0, 0.0
    for k in range(chain.num_steps):
        A = chain.A0[k] + torch.einsum("p,pij->ij", theta, chain.M[k])
        D = A - (chain.A0[k] + torch.einsum("p,pij->ij", theta0, chain.M[k]))
        b = chain.B[k] @ (theta - theta0)
        denom = 2 * chain.stds[k] ** 2
        if denom == 0:  # a deterministic step: no KL term (what rlr_core.kl does)
            mean = A @ mean + chain.B[k] @ theta + chain.c[k] + 0.05 * offset
            cov = A @ cov @ A.T
            continue
        kl = kl + ((D @ mean + b).pow(2).sum() + torch.trace(D @ cov @ D.T)) / denom
        m, c = mean.detach(), cov.detach()
        surrogate = surrogate + ((D @ m + b).pow(2).sum() + torch.trace(D @ c @ D.T)) / denom
        mean = A @ mean + chain.B[k] @ theta + chain.c[k] + 0.05 * offset
        cov = A @ cov @ A.T + chain.stds[k] ** 2 * torch.eye(chain.dim, dtype=chain.dtype)
    return kl, surrogate


def monte_carlo(chain: BaseChain, kl_steps: int, calls: int, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean and standard error over ``calls`` estimates of the value and of the gradient."""
    values, grads = [], []
    for i in range(calls):
        g, value = trajectory_kl_gradient(chain, ["p"] * batch, torch.Generator().manual_seed(1000 + i), kl_steps)
        values.append(value)
        grads.append(g[0].detach())
    v, g = torch.tensor(values, dtype=torch.float64), torch.stack(grads)
    return v.mean(), v.std() / calls**0.5, g.mean(0), g.std(0) / calls**0.5


@pytest.mark.parametrize("kl_steps", [8, 2])
def test_kl_value_and_gradient_match_the_closed_form(kl_steps):
    """All steps (8 of 8) and 2 of 8 per call, scaled by T / kl_steps: both unbiased for the KL and
    for the DPOK gradient (states held fixed). Fails for a missing T / kl_steps factor or a gradient
    through the base mean."""
    chain = BaseChain(num_steps=8, dim=3, num_params=4, step_std=0.5)
    kl, surrogate = exact_kl_terms(chain)
    (exact_grad,) = torch.autograd.grad(surrogate, [chain.theta])
    assert float(kl.detach()) == pytest.approx(float(surrogate.detach()))  # same value, different gradient
    (true_kl_grad,) = torch.autograd.grad(exact_kl_terms(chain)[0], [chain.theta])
    assert float((true_kl_grad - exact_grad).norm()) > 0.05 * float(exact_grad.norm())  # the two gradients differ

    value, value_se, grad, grad_se = monte_carlo(chain, kl_steps, calls=40, batch=400)
    assert float(kl.detach()) > 0.5
    assert abs(float(value) - float(kl.detach())) < 4 * float(value_se) + 1e-3 * float(kl.detach())
    assert bool(((grad - exact_grad).abs() <= 4 * grad_se + 1e-3 * exact_grad.abs().max()).all()), (grad, exact_grad, grad_se)


def test_kl_is_zero_at_the_base_weights():
    chain = BaseChain(num_steps=4)
    chain.theta0 = chain.theta.detach().clone()
    grads, value = trajectory_kl_gradient(chain, ["a", "b"], torch.Generator().manual_seed(0), 2)
    assert value == 0.0 and float(grads[0].abs().max()) == 0.0


def test_kl_needs_a_base_model():
    with pytest.raises(ValueError, match="kl_weight"):
        trajectory_kl_gradient(LinearGaussianChain(num_steps=4), ["a"], torch.Generator().manual_seed(0), 2)


def test_deterministic_steps_carry_no_kl_term():
    """A step with std 0 (DDIM's last step) is skipped: the estimate is the KL of the other steps."""
    chain = BaseChain(num_steps=4, step_std=[0.5, 0.5, 0.5, 0.0])
    kl, _ = exact_kl_terms(chain)
    value, value_se, _, _ = monte_carlo(chain, 4, calls=20, batch=400)
    assert abs(float(value) - float(kl.detach())) < 4 * float(value_se) + 1e-3 * float(kl.detach())


def test_config_validates_kl_fields():
    from rlr_core.config import TrainConfig

    with pytest.raises(ValueError, match="kl_weight"):
        TrainConfig(kl_weight=-1.0).validate()
    with pytest.raises(ValueError, match="kl_steps"):
        TrainConfig(kl_steps=0).validate()
    with pytest.raises(ValueError, match="eta"):
        TrainConfig(kl_weight=0.1, eta=0.0).validate()
    assert TrainConfig(kl_weight=0.1).kl_steps == 4


def _train(tmp_path, name: str, kl_weight: float) -> tuple[BaseChain, list]:
    from rlr_core.config import TrainConfig
    from rlr_core.estimators import get_estimator
    from rlr_core.trainer import Trainer

    chain = BaseChain(num_steps=8)
    chain.theta0 = chain.theta.detach().clone()  # the run starts at the base weights
    config = TrainConfig(steps=6, batch_size=8, lr=0.05, num_steps=8, prompts=["a", "b"], eval_seeds=[0], eval_every=0,
                         checkpoint_every=0, output_dir=str(tmp_path / name), seed=3, kl_weight=kl_weight, kl_steps=3)
    reports = list(Trainer(chain, QuadraticReward(), get_estimator("rlr-paper"), config).run())
    return chain, reports


def test_trainer_adds_the_kl_part_and_it_pulls_toward_the_base(tmp_path):
    """kl_weight > 0: every iteration reports info["kl"] and the part "kl"; the first one (at the base
    weights) has KL 0; a strong KL keeps theta nearer the base weights than the same run without it."""
    free, free_reports = _train(tmp_path, "free", 0.0)
    held, held_reports = _train(tmp_path, "held", 20.0)
    assert all("kl" not in r.info and "kl" not in r.grad_norms for r in free_reports)
    assert all("kl" in r.info and "kl" in r.grad_norms for r in held_reports)
    assert held_reports[0].info["kl"] == 0.0 and held_reports[-1].info["kl"] > 0
    assert held_reports[0].rewards == free_reports[0].rewards  # the KL draws its own noise
    distance = {name: float((c.theta.detach() - c.theta0).norm()) for name, c in (("free", free), ("held", held))}
    assert distance["held"] < 0.5 * distance["free"], distance
    lines = [json.loads(line) for line in open(tmp_path / "held" / "metrics.jsonl", encoding="utf-8")]
    assert all("kl" in line["info"] for line in lines)


def test_kl_on_the_tiny_diffusers_chain(tmp_path, tiny_sd_dir):
    """The real LoRA chain: adapters_disabled is the base model, DDIM's deterministic last step is skipped."""
    from rlr_core.diffusers_chain import load_model

    chain = load_model(str(tiny_sd_dir), num_steps=4, lora_rank=2, guidance_scale=3.0, device="cpu", dtype="float32")
    grads, value = trajectory_kl_gradient(chain, ["a red circle"] * 2, torch.Generator().manual_seed(0), 4)
    assert value == 0.0  # a fresh LoRA (B = 0) is the base model
    with torch.no_grad():
        for p in chain.trainable_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    grads, value = trajectory_kl_gradient(chain, ["a red circle"] * 2, torch.Generator().manual_seed(0), 4)
    assert value > 0 and all(torch.isfinite(g).all() for g in grads if g is not None)
    assert sum(float(g.norm()) for g in grads if g is not None) > 0


def test_train_form_has_the_kl_weight():
    pytest.importorskip("gradio")
    from app import runner

    config = runner.config_from_form({"model": "some/model", "kl_weight": 0.05}, hosted=False)
    assert config.kl_weight == 0.05 and runner.form_from_config(config)["kl_weight"] == 0.05
    assert runner.config_from_form({"model": "some/model"}, hosted=False).kl_weight == 0.0
    with pytest.raises(ValueError, match="KL to the base model"):
        runner.config_from_form({"model": "some/model", "kl_weight": -1}, hosted=False)


class ImageChain:
    """A chain of image-shaped states [B, 2, 4, 4]: the fine-tuned mean adds a uniform shift per channel
    (``shift``, a colour change) and a pattern (``pattern``); the base model adds neither."""

    num_steps = 3

    def __init__(self, shift: list[float], pattern: torch.Tensor) -> None:
        self.shift = torch.nn.Parameter(torch.tensor(shift, dtype=torch.float64))
        self.pattern = torch.nn.Parameter(pattern.double())
        self.adapted = True

    def initial(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(batch_size, 2, 4, 4, generator=generator, dtype=torch.float64)

    def condition(self, prompts):
        return None

    def trainable_parameters(self) -> list[torch.Tensor]:
        return [self.shift, self.pattern]

    def step_mean_std(self, x, k, cond):
        added = self.shift[:, None, None] + self.pattern if self.adapted else 0.0
        return 0.9 * x + added, 0.5

    @contextlib.contextmanager
    def adapters_disabled(self) -> Iterator[None]:
        self.adapted = False
        try:
            yield
        finally:
            self.adapted = True


def _kl(chain, kind: str):
    return trajectory_kl_gradient(chain, ["a", "b"], torch.Generator().manual_seed(0), 3, kind=kind)


def test_local_kl_leaves_a_uniform_colour_shift_free():
    """kind "local": a per-channel shift over the image costs nothing (value and gradient 0), a pattern with zero
    mean per channel costs what the whole KL charges for it, and with both only the pattern counts."""
    pattern = torch.zeros(2, 4, 4)
    pattern[0, :2] = 0.3
    pattern[0, 2:] = -0.3  # zero mean in each channel
    shifted = ImageChain([0.4, -0.2], torch.zeros(2, 4, 4))
    grads, value = _kl(shifted, "local")
    assert value == pytest.approx(0.0, abs=1e-12) and all(float(g.abs().max()) < 1e-12 for g in grads)
    grads, value = _kl(shifted, "trajectory")
    assert value > 0.1 and float(grads[0].abs().max()) > 0  # the whole KL charges for the shift
    drawn = ImageChain([0.0, 0.0], pattern)
    both = ImageChain([0.4, -0.2], pattern)
    expected = 3 * 16 * 0.3**2 / (2 * 0.5**2)  # 3 steps, 16 pixels of 0.3 in channel 0, per image
    assert _kl(drawn, "trajectory")[1] == pytest.approx(expected) and _kl(drawn, "local")[1] == pytest.approx(expected)
    grads, value = _kl(both, "local")
    assert value == pytest.approx(expected) and float(grads[0].abs().max()) < 1e-12
    assert torch.allclose(grads[1], _kl(drawn, "local")[0][1])


def test_local_kl_needs_image_states_and_a_known_kind():
    with pytest.raises(ValueError, match="kl_kind='local' needs image-shaped states"):
        trajectory_kl_gradient(BaseChain(num_steps=4), ["a"], torch.Generator().manual_seed(0), 2, kind="local")
    with pytest.raises(ValueError, match="allowed values"):
        _kl(ImageChain([0.1, 0.1], torch.zeros(2, 4, 4)), "global")
    from rlr_core.config import TrainConfig

    with pytest.raises(ValueError, match="kl_kind"):
        TrainConfig(kl_kind="global").validate()
    assert TrainConfig().kl_kind == "trajectory"


def _rlr_states(chain, calls: int, batch: int, **options) -> list[dict]:
    from rlr_core.estimators import get_estimator

    estimator = get_estimator("rlr", **options)
    estimator.keep_states = True
    rollouts = [estimator.rollout(chain, ["p"] * batch, torch.Generator().manual_seed(500 + i), True, QuadraticReward())
                for i in range(calls)]
    return [r.states for r in rollouts]


def test_kl_read_off_rlr_rollouts_matches_the_closed_form():
    """The KL and its gradient read off rlr's own trajectories (Rollout.states, antithetic twins and all) are the
    closed form's, as from trajectories sampled for the KL. Fails for states shifted by a step (x[k + 1] for x[k])
    or taken after the HO exit's noise flip."""
    chain = BaseChain(num_steps=8, dim=3, num_params=4, step_std=0.5)
    kl, surrogate = exact_kl_terms(chain)
    (exact_grad,) = torch.autograd.grad(surrogate, [chain.theta])
    values, grads = [], []
    for i, states in enumerate(_rlr_states(chain, calls=40, batch=400, h=3)):
        assert sorted(states) == list(range(8)) and all(s.shape == (400, 3) for s in states.values())
        g, value = trajectory_kl_gradient(chain, ["p"] * 400, torch.Generator().manual_seed(i), 2, states=states)
        values.append(value)
        grads.append(g[0].detach())
    v, g = torch.tensor(values, dtype=torch.float64), torch.stack(grads)
    value_se, grad_se = v.std() / 40**0.5, g.std(0) / 40**0.5
    assert abs(float(v.mean()) - float(kl.detach())) < 4 * float(value_se) + 1e-3 * float(kl.detach())
    assert bool(((g.mean(0) - exact_grad).abs() <= 4 * grad_se + 1e-3 * exact_grad.abs().max()).all())


def test_rlr_keeps_its_trajectories_states_only_when_asked_and_at_theta():
    """Every step's input, as a plain run of the chain on the rollout's own noise gives it (h 1 and h 3); none
    without keep_states, and none when the batch runs at perturbed weights (ZO steps)."""
    from rlr_core.estimators import get_estimator
    from rlr_core.sampling import run_steps

    chain = BaseChain(num_steps=6)
    for h in (1, 3):
        estimator = get_estimator("rlr", h=h)
        estimator.keep_states = True
        rollout = estimator.rollout(chain, ["a", "b"] * 2, torch.Generator().manual_seed(h), True, QuadraticReward())
        _, _, cond, noise = rollout.data.ho_replay
        record = {k: None for k in range(6)}
        with torch.no_grad():
            run_steps(chain, noise.x0, range(6), cond, noise, record=record)
        assert all(torch.allclose(rollout.states[k], record[k].x) for k in range(6))
    assert get_estimator("rlr").rollout(chain, ["a"] * 2, torch.Generator().manual_seed(0), True).states is None
    zo = get_estimator("rlr", remaining="zo")
    zo.keep_states = True
    assert zo.rollout(chain, ["a"] * 4, torch.Generator().manual_seed(0), True).states is None


def test_trainer_reads_the_kl_off_the_estimates_own_trajectories(tmp_path, monkeypatch):
    """kl_weight > 0 and kl_trajectories "own" with rlr: the estimator keeps its states and the KL samples nothing of
    its own; with "sampled" (the default) it samples its batch."""
    import rlr_core.kl
    from rlr_core.config import TrainConfig
    from rlr_core.estimators import get_estimator
    from rlr_core.trainer import Trainer

    def no_sampling(*args, **kwargs):
        raise AssertionError("the KL sampled a batch of its own")

    chain = BaseChain(num_steps=6)
    config = TrainConfig(steps=2, batch_size=4, lr=0.05, num_steps=6, prompts=["a", "b"], eval_seeds=[0], eval_every=0,
                         checkpoint_every=0, output_dir=str(tmp_path / "run"), seed=3, kl_weight=1.0,
                         kl_trajectories="own")
    trainer = Trainer(chain, QuadraticReward(), get_estimator("rlr"), config)
    assert trainer.estimator.keep_states
    monkeypatch.setattr(rlr_core.kl, "draw_noise", no_sampling)
    reports = list(trainer.run())
    assert reports[-1].info["kl"] > 0 and reports[-1].grad_norms["kl"] > 0
    free = Trainer(BaseChain(num_steps=6), QuadraticReward(), get_estimator("rlr"), TrainConfig(
        steps=1, batch_size=4, num_steps=6, prompts=["a"], eval_seeds=[0], eval_every=0, checkpoint_every=0,
        output_dir=str(tmp_path / "free")))
    assert not free.estimator.keep_states
    sampled = Trainer(BaseChain(num_steps=6), QuadraticReward(), get_estimator("rlr"),
                      config.replace(kl_trajectories="sampled", output_dir=str(tmp_path / "sampled")))
    assert not sampled.estimator.keep_states  # kl_trajectories "sampled" (the default): a batch of its own
    with pytest.raises(Exception, match="the KL sampled a batch of its own"):  # the trainer's TrainingStepError
        list(sampled.run())
