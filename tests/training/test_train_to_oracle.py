"""A tiny transformer trained with TokenCELoss learns the exact fully-masked marginals.

This is the per-token loss doing its job: the marginals are right, which is exactly why
one-step parallel sampling from them falls into the marginal trap (see test_marginal_trap).
"""

import pytest
import torch

from jointobj.toysets.builtin import load_toyset
from jointobj.toysets.oracle import OracleDenoiser

from training import train_token_ce

# Training draws 4096 examples per set: a 1/2 marginal is off by sqrt(.25/4096) = 0.008 per sd
# in the data alone. 0.06 total variation per position allows that at 4.5 sd plus optimisation error.
TOLERANCE = 0.06


def fully_masked(toyset, denoiser) -> torch.Tensor:
    """The denoiser's answer marginals [la, V] with the whole answer masked, for the set's first prompt."""
    ids = torch.cat([toyset.prompts[0], torch.full((toyset.answer_length,), denoiser.mask_token_id)])[None]
    with torch.no_grad():
        return denoiser(input_ids=ids).softmax(-1)[0, toyset.prompt_length:]


@pytest.mark.slow  # 600 training steps
def test_trained_marginals_match_the_oracle():
    denoiser = train_token_ce(("likes_tennis", "cities"), lr=3e-3)  # at 1e-2 the two-set model loses positions
    for name in ("likes_tennis", "cities"):
        toyset = load_toyset(name)
        model, exact = fully_masked(toyset, denoiser), fully_masked(toyset, OracleDenoiser(toyset))
        total_variation = 0.5 * (model - exact).abs().sum(-1)  # [la]
        assert (total_variation < TOLERANCE).all(), f"{name}: TV per position {total_variation.tolist()}"


def test_untrained_marginals_do_not_match():
    """The check above can fail: a model that has not trained is far from the oracle."""
    denoiser = train_token_ce(("likes_tennis", "cities"), steps=1, lr=3e-3)
    toyset = load_toyset("likes_tennis")
    difference = fully_masked(toyset, denoiser) - fully_masked(toyset, OracleDenoiser(toyset))
    total_variation = 0.5 * difference.abs().sum(-1)
    assert (total_variation > TOLERANCE).any()
