"""Masking schedules, stratified timesteps and corruption."""

import math

import pytest
import torch

from jointobj.diffusion.noise import SCHEDULES, corrupt, sample_timesteps


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_elbo_weight_is_minus_alpha_prime_over_mask_prob(name):
    schedule = SCHEDULES.get(name)()
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64, requires_grad=True)
    alpha = 1 - schedule.mask_prob(t)  # keep probability
    (alpha_prime,) = torch.autograd.grad(alpha.sum(), t)
    expected = -alpha_prime / (1 - alpha)
    torch.testing.assert_close(schedule.elbo_weight(t.detach()), expected.detach())


def test_stratified_timesteps_cover_every_stratum():
    eps, batch = 0.01, 16
    t = sample_timesteps(batch, eps=eps, generator=torch.Generator().manual_seed(0))
    assert t.min() >= eps and t.max() < 1
    u = ((t - eps) / (1 - eps)).sort().values
    strata = torch.floor(u * batch).long()
    assert strata.tolist() == list(range(batch))  # exactly one draw per stratum


def test_eps_out_of_range_is_refused():
    with pytest.raises(ValueError, match="eps"):
        sample_timesteps(4, eps=1.0)


def test_corrupt_masks_only_scorable_positions_at_the_given_rate():
    batch, length, rate = 400, 50, 0.3
    ids = torch.randint(5, 20, (batch, length), generator=torch.Generator().manual_seed(0))
    scorable = torch.ones(batch, length, dtype=torch.bool)
    scorable[:, :10] = False  # a prompt
    scorable[::2, -5:] = False  # padding on half the rows
    noisy, masked = corrupt(ids, scorable, torch.full((batch,), rate), mask_token_id=1,
                            generator=torch.Generator().manual_seed(1))
    assert not masked[~scorable].any()
    assert torch.equal(noisy[~masked], ids[~masked])
    assert (noisy[masked] == 1).all()
    n = scorable.sum().item()
    tolerance = 4.5 * math.sqrt(rate * (1 - rate) / n)  # 4.5 binomial standard deviations
    assert abs(masked.sum().item() / n - rate) < tolerance


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_float32_matches_a_float64_reference_at_small_t(name):
    # 1 - cos(pi t / 2) cancels in float32: the cosine weight at t = 1e-3 came out 1971, not 2000.
    schedule = SCHEDULES.get(name)()
    t = torch.tensor([1e-5, 1e-4, 1e-3, 1e-2, 0.1, 0.5, 1.0], dtype=torch.float64)
    for quantity in ("mask_prob", "elbo_weight"):
        reference = getattr(schedule, quantity)(t)  # float64
        got = getattr(schedule, quantity)(t.float())
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), reference, rtol=1e-5, atol=0)


def test_cosine_schedule_against_its_closed_form():
    t = torch.tensor([1e-3, 0.25, 0.5, 0.9], dtype=torch.float64)
    schedule = SCHEDULES.get("cosine")()
    cos = torch.cos(0.5 * math.pi * t)
    torch.testing.assert_close(schedule.mask_prob(t), 1 - cos)
    torch.testing.assert_close(schedule.elbo_weight(t), 0.5 * math.pi * torch.sin(0.5 * math.pi * t) / (1 - cos))
