"""Decoder orders in the log-sum: the loss is -log of the mean of the decoder laws and fixed-order
likelihoods, with their gradient; alone it is the decoder's NLL; mixed with TokenCE it runs."""

import math

import pytest
import torch

from jointobj import Denoiser
from jointobj.decoding.decoder_law import decoder_log_likelihood
from jointobj.diffusion.likelihood import order_log_likelihood
from jointobj.diffusion.orders import OrderProposal
from jointobj.model.tiny import tiny_masked_lm
from jointobj.objectives import LogSumOrdersLoss, MixtureLoss

from helpers import padded_batch

VOCAB, MASK = 12, 1


def denoiser() -> Denoiser:
    return Denoiser(tiny_masked_lm("modernbert", vocab_size=VOCAB, seed=3), mask_token_id=MASK)


def batch() -> dict:
    return padded_batch([7, 7, 6], [2, 3, 2], VOCAB, pad=0, seed=4)


def grads(model) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


def test_a_decoder_order_alone_is_the_decoders_nll_per_token():
    model, data = denoiser(), batch()
    loss = LogSumOrdersLoss(orders=["confidence:steps=2"])(model, data)
    loss.loss.backward()
    ours = grads(model)
    model.zero_grad()
    scorable = data["attention_mask"].bool() & ~data["prompt_mask"]
    reference = -decoder_log_likelihood(model, data, ["confidence:steps=2"])[:, 0].sum() / scorable.sum()
    reference.backward()
    torch.testing.assert_close(loss.loss, reference, atol=1e-5, rtol=1e-5)
    for mine, theirs in zip(ours, grads(model)):
        torch.testing.assert_close(mine, theirs, atol=1e-6, rtol=1e-4)
    assert "posterior_confidence:steps=2" in loss.metrics


@pytest.mark.parametrize("mode", ["exact", "sampled"])
def test_decoder_and_fixed_orders_share_one_log_sum(mode):
    model, data = denoiser(), batch()
    loss = LogSumOrdersLoss(orders=["l2r", "threshold:threshold=0.5:steps=3"], blocks=2, mode=mode)(
        model, data, generator=torch.Generator().manual_seed(0))
    scorable = data["attention_mask"].bool() & ~data["prompt_mask"]
    with torch.no_grad():
        fixed = order_log_likelihood(model, data, OrderProposal(["l2r"]).sample(scorable), 2)  # [b, 1]
        law = decoder_log_likelihood(model, data, ["threshold:threshold=0.5:steps=3"])  # [b, 1]
    both = torch.cat([fixed, law], 1) - math.log(2)  # [b, 2], weights 1/M
    reference = -torch.logsumexp(both, -1).sum() / scorable.sum()
    torch.testing.assert_close(loss.loss.detach(), reference, atol=1e-5, rtol=1e-5)
    loss.loss.backward()
    assert any(float(g.abs().sum()) > 0 for g in grads(model))


def test_mixed_with_token_ce_it_trains_a_step():
    model, data = denoiser(), batch()
    objective = MixtureLoss(token_ce_weight=0.5, logsum={"orders": ["confidence:tokens_per_step=2", "l2r"]})
    out = objective(model, data, generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    assert torch.isfinite(out.loss) and "logsum/posterior_confidence:tokens_per_step=2" in out.metrics


@pytest.mark.parametrize("kwargs, words", [
    ({"orders": ["confidence:steps=2"], "prior": {"l2r": 1.0}}, "drop `mixture` / `prior`"),
    ({"orders": ["random:steps=2"]}, "independently of the state"),
    ({"orders": ["spiral"]}, "unknown order 'spiral'"),
])
def test_bad_decoder_orders_are_refused(kwargs, words):
    with pytest.raises(ValueError, match=words):
        LogSumOrdersLoss(**kwargs)
