"""KL regularisation toward the base model (DPOK-style): keeps a run near what the base model draws.

A reward model read off its training distribution can be fooled (pixel noise, colour shifts); a run
then climbs the reward without drawing what the reward asks for. The fine-tuned chain p_theta and
the base chain p_0 (LoRA off) are both Gaussian per step with the same std, so the KL of their
trajectory distributions is a sum over the steps,

    KL(p_theta || p_0) = E_{x ~ p_theta} sum_k |mu_theta(x_k, k) - mu_0(x_k, k)|^2 / (2 std_k^2),

and the Trainer adds ``kl_weight`` times its gradient to the estimator's (part "kl"). The gradient is
the upper bound DPOK uses: trajectories are sampled from p_theta without autograd and held fixed,
the gradient flows through mu_theta only. ``kl_steps`` steps k are drawn per iteration (uniformly,
without replacement) and scaled by T / kl_steps, so the sum over the steps is estimated without bias.
By default a batch is sampled for it; with ``kl_trajectories="own"`` the trajectories are the estimate's own where
its rollout kept their states (``Rollout.states``: rlr without ZO steps, sampled at the current theta), so the KL
costs no sampling.
Deterministic steps (std 0: DDIM's last step, or eta = 0) have no density and no KL term; the config
refuses kl_weight > 0 with eta = 0.

``kind="local"`` counts only the local part of each step's mean difference: its average over the image, per
channel, is taken out before squaring. A uniform shift of a channel (a colour change of a pixel-space model such
as the tiny one, a brightness or tint change in a latent model) is then free, while a shape that turns ragged,
moves or changes costs as much as before. It is not a KL any more: a regulariser for runs whose reward asks for a
colour while the drawing itself should stay as the base model draws it (click sessions, docs/app.md).
"""

from __future__ import annotations

import random
from typing import Any

import torch

from .chain import Chain, step_std_is_zero
from .config.schema import KL_KINDS
from .sampling import RecordedStep, draw_noise, run_steps


def trajectory_kl_gradient(
    chain: Chain,
    prompts: list[Any],
    generator: torch.Generator,
    kl_steps: int,
    global_batch_size: int | None = None,
    kind: str = "trajectory",
    states: dict[int, torch.Tensor] | None = None,
) -> tuple[list[torch.Tensor | None], float]:
    """Gradient (per trainable parameter) and value of the per-image trajectory KL to the base model.

    One batch for ``prompts`` is sampled with the current LoRA (no autograd), ``kl_steps`` of its T
    steps are drawn from ``generator`` and the KL of those steps, times T / kl_steps, averaged over
    the ``global_batch_size`` images of the whole batch (default: these prompts; under data
    parallelism every process passes the global size and the caller sums over processes), is
    differentiated through the fine-tuned mean. ``chain`` must have ``adapters_disabled`` (a LoRA
    chain). Deterministic steps (std 0, such as DDIM's last step) carry no KL term and add nothing.
    ``kind``: "trajectory" (the KL) or "local" (each step's mean difference less its per-channel average over the
    image; see the module's docstring). ``states``: the batch's state entering each step, sampled with the current
    LoRA, one row per prompt (``Rollout.states``): the chosen steps are read off those trajectories instead of a
    batch sampled here (the same expectation, without the sampling's cost).
    """
    if kind not in KL_KINDS:
        raise ValueError(f"kl_kind={kind!r} is not allowed; allowed values: {list(KL_KINDS)}")
    if not hasattr(chain, "adapters_disabled"):
        raise ValueError("kl_weight > 0 needs a chain with a base model to compare to (a LoRA chain); "
                         "allowed: kl_weight = 0 for this chain")
    num_steps = int(chain.num_steps)
    kl_steps = min(int(kl_steps), num_steps)
    params = chain.trainable_parameters()
    batch = len(prompts)
    scale = num_steps / kl_steps / float(global_batch_size or batch)
    chosen = sorted(random.Random(int(torch.randint(2**62, (1,), generator=generator))).sample(range(num_steps), kl_steps))
    cond = chain.condition(list(prompts))
    if states is None:
        noise = draw_noise(chain, batch, generator)
        record: dict[int, RecordedStep | None] = {k: None for k in chosen}
        with torch.no_grad():
            run_steps(chain, noise.x0, range(max(chosen) + 1), cond, noise, record=record)
        states = {k: record[k].x for k in chosen}
    missing = [k for k in chosen if k not in states or states[k].shape[0] != batch]
    if missing:
        raise ValueError(f"states must hold every step's state, one row per prompt ({batch}); steps {missing} "
                         f"are missing or of another batch size")
    grads: list[torch.Tensor | None] = [None] * len(params)
    total = 0.0
    for k in chosen:
        x_k = states[k]
        mean, std = chain.step_mean_std(x_k, k, cond)
        if step_std_is_zero(std):  # a deterministic step (DDIM's last one) has no density: no KL term
            continue
        with torch.no_grad(), chain.adapters_disabled():
            base_mean, _ = chain.step_mean_std(x_k, k, cond)
        difference = mean - base_mean
        if kind == "local":  # [B, C, *spatial]: the per-channel average over the image is free
            if difference.dim() < 3:
                raise ValueError(f"kl_kind='local' needs image-shaped states [batch, channels, ...]; this chain's are "
                                 f"{list(difference.shape)}; allowed here: kl_kind='trajectory'")
            difference = difference - difference.mean(dim=tuple(range(2, difference.dim())), keepdim=True)
        kl = (difference ** 2 / (2 * torch.as_tensor(std, dtype=mean.dtype) ** 2)).flatten(1).sum(dim=1)
        loss = kl.sum() * scale
        total += float(loss.detach())
        step_grads = torch.autograd.grad(loss, params, allow_unused=True)
        grads = [g if acc is None else (acc if g is None else acc + g) for acc, g in zip(grads, step_grads)]
    return grads, total


def recorded_trajectory_kl(chain: Chain, record: dict[int, RecordedStep | None], cond: Any) -> list[float] | None:
    """Per-image trajectory KL(p_theta || p_0) of trajectories already sampled with the current LoRA.

    ``record`` holds every step of the trajectories with its mean (``sampling.sample(..., record=...)``); the
    base model's mean of each step is computed here with the LoRA off (one UNet pass per step, no gradient),
    and the KL is the exact sum over the steps of |mu_theta - mu_0|^2 / (2 std_k^2) along these trajectories:
    a Monte Carlo estimate of the KL with one trajectory per image. None when the chain has no base model
    (``adapters_disabled``) or no step is stochastic (eta = 0).
    """
    if not hasattr(chain, "adapters_disabled"):
        return None
    total: torch.Tensor | None = None
    with torch.no_grad():
        for k in sorted(record):
            step = record[k]
            if step is None or step.mean is None:
                raise ValueError(f"recorded_trajectory_kl: step {k} was not recorded with its mean (record_means)")
            with chain.adapters_disabled():
                base_mean, std = chain.step_mean_std(step.x, k, cond)
            if step_std_is_zero(std):
                continue
            std = torch.as_tensor(std, dtype=torch.float64, device=base_mean.device)
            kl = ((step.mean.double() - base_mean.double()) ** 2 / (2 * std**2)).flatten(1).sum(dim=1)
            total = kl if total is None else total + kl
    return None if total is None else [float(v) for v in total.cpu()]
