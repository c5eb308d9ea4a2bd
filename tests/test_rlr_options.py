"""rlr's automatic options: control_variate / ho_weight "auto", windows as fractions, the CV slope's fallbacks."""

from __future__ import annotations

import pytest
import torch

from rlr_core.chain import LinearGaussianChain, QuadraticReward
from rlr_core.estimators import get_estimator
from rlr_core.estimators.rlr import RLREstimator

from test_estimators_diffusers import PROMPTS, Redness, randomize_lora


class ChainWithoutStandIn:
    """The analytic chain without ``predict_final`` (a custom chain that offers no stand-in)."""

    def __init__(self) -> None:
        self.inner = LinearGaussianChain(num_steps=6, dim=3, num_params=4)
        self.num_steps = self.inner.num_steps

    def __getattr__(self, name):
        if name == "predict_final":
            raise AttributeError(name)
        return getattr(self.inner, name)


def test_window_fractions_map_to_step_indices():
    estimator = RLREstimator(h=2, window=[0.0, 0.4])
    assert estimator.start_window(20) == (0, 7)  # starts 0 .. 17 allowed: 0.4 * 17 = 6.8 -> 7
    assert estimator.start_window(50) == (0, 19)
    assert RLREstimator(h=2, window=[0.5, 0.5]).start_window(12) == (4, 4)  # 0.5 * 9 = 4.5 -> 4 (round half to even)
    assert RLREstimator(h=2, window=[1, 6]).start_window(20) == (1, 6)  # integers stay step indices
    for bad in ([0.5, 0.2], [-0.1, 0.5], [0.2, 1.5], [1, "a"], "ab", [True, 2]):
        with pytest.raises(ValueError, match="window must be"):
            RLREstimator(window=bad)


def test_auto_control_variate_runs_where_it_can_and_drops_the_residual(tiny_chain):
    randomize_lora(tiny_chain)
    estimator = get_estimator("rlr", control_variate="auto", ho_weight="auto")
    result = estimator.estimate(tiny_chain, Redness(), PROMPTS, torch.Generator().manual_seed(0))
    assert set(result.parts) >= {"ho", "cv"}
    assert float(result.parts["ho"].norm()) == 0.0  # the residual is dropped ...
    assert float(result.parts["cv"].norm()) > 0.0  # ... and the pathwise part carries the sub-chain
    assert result.info["weight_ho_residual"] == 0.0
    # a non-differentiable reward (clicks): no stand-in gradient, so the plain HO term at weight 1
    rollout = estimator.rollout(tiny_chain, PROMPTS, torch.Generator().manual_seed(1), False)
    clicks = estimator.gradient(rollout, torch.arange(len(PROMPTS), dtype=torch.float32))
    assert "cv" not in clicks.parts and float(clicks.parts["ho"].norm()) > 0.0
    assert clicks.info["weight_ho"] == 1.0


def test_auto_control_variate_without_a_stand_in_falls_back_to_the_plain_term():
    chain = ChainWithoutStandIn()
    reward = QuadraticReward(dim=3)
    prompts = ["a", "b"] * 4
    result = get_estimator("rlr", control_variate="auto", ho_weight="auto").estimate(
        chain, reward, prompts, torch.Generator().manual_seed(0))
    assert "cv" not in result.parts and float(result.parts["ho"].norm()) > 0.0
    with pytest.raises(ValueError, match="predict_final"):
        get_estimator("rlr", control_variate=True).estimate(chain, reward, prompts, torch.Generator().manual_seed(0))


def test_option_values_are_checked():
    with pytest.raises(ValueError, match="control_variate must be true, false or 'auto'"):
        RLREstimator(control_variate="sometimes")
    with pytest.raises(ValueError, match="ho_weight must be 'auto' or a finite number"):
        RLREstimator(ho_weight="half")
    with pytest.raises(ValueError, match="ho_weight"):
        RLREstimator(ho_weight=-1.0)


def test_cv_slope_falls_back_to_the_pooled_slope_then_to_one():
    estimator = RLREstimator(control_variate=True)
    assert estimator.cv_beta(3) == 1.0  # nothing seen yet: the stand-in at face value
    estimator.cv_statistics = {1: [2.0, 4.0], 2: [1.0, 1.0]}
    assert estimator.cv_beta(1) == 0.5  # its own slope
    assert estimator.cv_beta(5) == pytest.approx(3.0 / 5.0)  # unseen start: pooled over the seen ones
    assert RLREstimator(control_variate=True, cv_scale=0.25).cv_beta(5) == 0.25
