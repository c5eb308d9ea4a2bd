"""The Chain protocol every estimator talks to, and a linear-Gaussian chain with an exact gradient.

A chain is a stochastic sampler with ``num_steps`` (T) steps, indexed in sampling order
k = 0 .. T-1 (k = 0 starts from pure noise, k = T-1 produces the final state)::

    x[0] ~ initial()
    x[k+1] = mean_theta(x[k], k, cond) + std[k] * eps[k]
    images = decode(x[T])

``LinearGaussianChain`` implements the same protocol with linear steps and a quadratic reward,
so the gradient of the expected reward is known exactly; the tests use it to prove that the
estimators are unbiased.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, ContextManager, Iterator, Protocol, runtime_checkable

import torch


@runtime_checkable
class Chain(Protocol):
    """What an estimator needs from a sampler (names and signatures are binding)."""

    num_steps: int

    def trainable_parameters(self) -> list[torch.Tensor]:
        """The parameters theta being fine-tuned (LoRA weights for diffusers models)."""
        ...

    def condition(self, prompts: list[str]) -> Any:
        """Encode prompts (with classifier-free guidance and a per-step schedule if any)."""
        ...

    def initial(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """Draw x[0]."""
        ...

    def step_mean_std(self, x: torch.Tensor, k: int, cond: Any) -> tuple[torch.Tensor, torch.Tensor | float]:
        """Mean and std of x[k+1] given x[k]; differentiable in theta and x when grad is on."""
        ...

    def decode(self, x_T: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] in [0, 1] (differentiable)."""
        ...

    def perturbed(self, seed: int, scale: float) -> ContextManager:
        """Temporarily theta += scale * xi(seed), xi ~ N(0, I); restored exactly on exit."""
        ...


@runtime_checkable
class LoraChain(Chain, Protocol):
    """A Chain whose trainable parameters are LoRA adapters (``DiffusersChain``): what the Trainer
    uses for "before" images and for saving, when the chain has it."""

    def adapters_disabled(self) -> ContextManager:
        """Sample with the base weights (LoRA off) inside the context."""
        ...

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        """The LoRA weights by name."""
        ...

    def load_lora_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Copy LoRA weights in (every key and shape checked)."""
        ...

    def save_lora(self, directory: str) -> Any:
        """Write the LoRA in the diffusers format."""
        ...


def perturbation_direction(parameters: list[torch.Tensor], seed: int) -> list[torch.Tensor]:
    """The direction xi(seed) ~ N(0, I) over ``parameters``, regenerated from ``seed``.

    Drawn on the CPU in float32 so that the same seed gives the same direction on every device.
    """
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    return [
        torch.randn(p.shape, generator=generator, dtype=torch.float32).to(device=p.device, dtype=p.dtype)
        for p in parameters
    ]


@contextlib.contextmanager
def perturb_parameters(parameters: list[torch.Tensor], seed: int, scale: float) -> Iterator[None]:
    """Context manager: theta += ``scale * xi(seed)``, and exactly the original tensors back on exit.

    The perturbed values live in new tensors swapped in through ``.data``; the original
    storages are never written. This matters: a gradient segment recorded earlier (e.g. RLR's
    HO sub-chain) saved these parameters for its backward pass, and an in-place change would
    invalidate that graph. After exit every parameter holds its original storage again.
    """
    originals = [p.data for p in parameters]
    try:
        with torch.no_grad():
            for p, xi in zip(parameters, perturbation_direction(parameters, seed)):
                p.data = p.data + float(scale) * xi
        yield
    finally:
        for p, original in zip(parameters, originals):
            p.data = original


def step_std_is_zero(std: torch.Tensor | float) -> bool:
    """True when a step is deterministic (no likelihood ratio exists for it)."""
    if isinstance(std, torch.Tensor):
        return bool((std == 0).all())
    return float(std) == 0.0


# --------------------------------------------------------------------------------------------
# The analytic chain
# --------------------------------------------------------------------------------------------


@dataclass
class LinearGaussianCondition:
    """Conditioning of the analytic chain: one offset vector per prompt (prompt text is hashed)."""

    offsets: torch.Tensor  # [B, dim]


class LinearGaussianChain:
    """x[k+1] = A_k(theta) x[k] + B_k theta + c_k(prompt) + s_k eps with a quadratic reward.

    ``A_k(theta) = A0_k + sum_i theta_i M_{k,i}`` (``multiplicative=True``) makes the mean
    non-linear in theta through the chain, like a network; the exact gradient of
    E[reward] is still computable by propagating the Gaussian's mean and covariance.
    ``decode`` is the identity: the "images" are the [B, dim] states, and ``QuadraticReward``
    scores them.
    """

    def __init__(
        self,
        num_steps: int = 8,
        dim: int = 3,
        num_params: int = 4,
        step_std: float | list[float] = 0.5,
        multiplicative: bool = True,
        seed: int = 0,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        if num_steps < 2:
            raise ValueError(f"num_steps must be >= 2, got {num_steps}")
        self.num_steps = num_steps
        self.dim = dim
        self.dtype = dtype
        gen = torch.Generator().manual_seed(seed)
        eye = torch.eye(dim, dtype=dtype)
        self.A0 = [0.9 * eye + 0.1 * torch.randn(dim, dim, generator=gen, dtype=dtype) for _ in range(num_steps)]
        self.M = [
            (0.15 * torch.randn(num_params, dim, dim, generator=gen, dtype=dtype)) if multiplicative
            else torch.zeros(num_params, dim, dim, dtype=dtype)
            for _ in range(num_steps)
        ]
        self.B = [0.3 * torch.randn(dim, num_params, generator=gen, dtype=dtype) for _ in range(num_steps)]
        self.c = [0.1 * torch.randn(dim, generator=gen, dtype=dtype) for _ in range(num_steps)]
        stds = step_std if isinstance(step_std, (list, tuple)) else [step_std] * num_steps
        if len(stds) != num_steps:
            raise ValueError(f"step_std must have num_steps={num_steps} entries, got {len(stds)}")
        self.stds = [float(s) for s in stds]
        self.theta = torch.nn.Parameter(0.2 * torch.randn(num_params, generator=gen, dtype=dtype))

    # --- Chain protocol -------------------------------------------------------------------
    def trainable_parameters(self) -> list[torch.Tensor]:
        return [self.theta]

    def condition(self, prompts: list[str]) -> LinearGaussianCondition:
        offsets = torch.stack([self._prompt_offset(p) for p in prompts])
        return LinearGaussianCondition(offsets=offsets)

    def initial(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(batch_size, self.dim, generator=generator, dtype=self.dtype)

    def step_mean_std(self, x: torch.Tensor, k: int, cond: LinearGaussianCondition) -> tuple[torch.Tensor, float]:
        A = self.A0[k] + torch.einsum("p,pij->ij", self.theta, self.M[k])
        mean = x @ A.T + self.B[k] @ self.theta + self.c[k] + 0.05 * cond.offsets
        return mean, self.stds[k]

    def decode(self, x_T: torch.Tensor) -> torch.Tensor:
        return x_T

    def perturbed(self, seed: int, scale: float) -> ContextManager:
        return perturb_parameters(self.trainable_parameters(), seed, scale)

    def predict_final(self, x: torch.Tensor, k: int, cond: LinearGaussianCondition, jumps: int = 3) -> torch.Tensor:
        """E[x[T] | x[k]]: the step means from k on, without noise (exact for this chain; ``jumps`` unused)."""
        for step in range(k, self.num_steps):
            x, _ = self.step_mean_std(x, step, cond)
        return x

    # --- exact quantities -----------------------------------------------------------------
    def _prompt_offset(self, prompt: str) -> torch.Tensor:
        gen = torch.Generator().manual_seed(sum(ord(ch) * (i + 1) for i, ch in enumerate(str(prompt))) % (2**31))
        return torch.randn(self.dim, generator=gen, dtype=self.dtype)

    def final_moments(self, prompt: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and covariance of x[T] for one prompt, differentiable in theta."""
        mean = torch.zeros(self.dim, dtype=self.dtype)
        cov = torch.eye(self.dim, dtype=self.dtype)
        offset = self._prompt_offset(prompt)
        for k in range(self.num_steps):
            A = self.A0[k] + torch.einsum("p,pij->ij", self.theta, self.M[k])
            mean = A @ mean + self.B[k] @ self.theta + self.c[k] + 0.05 * offset
            cov = A @ cov @ A.T + self.stds[k] ** 2 * torch.eye(self.dim, dtype=self.dtype)
        return mean, cov

    def expected_reward(self, reward: "QuadraticReward", prompts: list[str]) -> torch.Tensor:
        """E[reward] averaged over ``prompts`` (exact, differentiable in theta)."""
        values = []
        for prompt in prompts:
            mean, cov = self.final_moments(prompt)
            values.append(reward.expectation(mean, cov))
        return torch.stack(values).mean()

    def exact_gradient(self, reward: "QuadraticReward", prompts: list[str]) -> torch.Tensor:
        """Exact gradient of -E[reward] in theta (the same sign convention as ``p.grad``)."""
        theta = self.theta
        (grad,) = torch.autograd.grad(-self.expected_reward(reward, prompts), [theta])
        return grad.detach()


class QuadraticReward:
    """r(x) = -|W x - target|^2, differentiable; its expectation under a Gaussian is closed-form."""

    name = "quadratic"
    differentiable = True

    def __init__(self, dim: int = 3, seed: int = 1, dtype: torch.dtype = torch.float64) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.W = torch.eye(dim, dtype=dtype) + 0.2 * torch.randn(dim, dim, generator=gen, dtype=dtype)
        self.target = torch.randn(dim, generator=gen, dtype=dtype)

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        residual = images @ self.W.T - self.target
        return -(residual**2).sum(dim=-1)

    def expectation(self, mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
        residual = self.W @ mean - self.target
        return -(residual @ residual) - torch.trace(self.W @ cov @ self.W.T)
