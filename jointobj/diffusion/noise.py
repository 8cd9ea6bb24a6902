"""The forward (masking) process: schedules, timestep sampling, corruption.

A schedule gives, at time t in (0, 1], the probability that a token is masked and the
weight of the continuous-time ELBO, w(t) = -alpha'(t) / (1 - alpha(t)) with alpha(t) the
keep probability (MDLM, Sahoo et al. 2024). Linear: mask prob t, weight 1/t.
"""

from __future__ import annotations

import math

import torch

from jointobj.diffusion.randomness import draw_device, uniform
from jointobj.utils.registry import Registry

SCHEDULES: Registry[type] = Registry("masking schedule")


@SCHEDULES.register("linear")
class LinearSchedule:
    """alpha(t) = 1 - t: mask each token with probability t (MDLM, LLaDA)."""

    def mask_prob(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def elbo_weight(self, t: torch.Tensor) -> torch.Tensor:
        return 1.0 / t


@SCHEDULES.register("cosine")
class CosineSchedule:
    """alpha(t) = cos(pi t / 2): fewer masks early, more late.

    Written without the difference 1 - cos(pi t / 2), which cancels in float32 at small t
    (the weight at t = 1e-3 came out 1971 instead of 2000):
    mask prob = 2 sin^2(pi t / 4), weight = (pi / 2) / tan(pi t / 4).
    """

    def mask_prob(self, t: torch.Tensor) -> torch.Tensor:
        return 2.0 * torch.sin(0.25 * math.pi * t) ** 2

    def elbo_weight(self, t: torch.Tensor) -> torch.Tensor:
        return 0.5 * math.pi / torch.tan(0.25 * math.pi * t)


def sample_timesteps(
    batch_size: int,
    *,
    eps: float = 1e-3,
    stratified: bool = True,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """t in [eps, 1), shape [b]. Stratified: one uniform offset shared by b evenly spaced strata
    (MDLM's low-discrepancy sampler), which lowers the variance of the ELBO across the batch."""
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"eps must lie in [0, 1), got {eps}")
    source = draw_device(generator, "cpu")
    if stratified:
        offset = uniform(1, generator, source, torch.float32)  # [1]
        u = (offset + torch.arange(batch_size, device=source) / batch_size) % 1.0  # [b]
    else:
        u = uniform(batch_size, generator, source, torch.float32)  # [b]
    return (eps + (1.0 - eps) * u).to(device)


def corrupt(
    input_ids: torch.Tensor,
    scorable: torch.Tensor,
    mask_prob: torch.Tensor,
    mask_token_id: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask each scorable token independently with its row's probability.

    input_ids [b, l], scorable [b, l] bool, mask_prob [b]. Returns (noisy_ids [b, l], masked [b, l] bool).
    Prompt and padding positions (not scorable) are never touched.
    """
    draws = uniform(input_ids.shape, generator, input_ids.device, torch.float32)  # [b, l]
    masked = (draws < mask_prob.to(input_ids.device)[:, None]) & scorable
    noisy = torch.where(masked, torch.full_like(input_ids, mask_token_id), input_ids)
    return noisy, masked
