"""The `learned` policy (top-quota by an order head's score of the state) is state-determined, so the decoder
law stays exact for it: by enumeration, by the sampler's frequencies and its own log q."""

import functools
import itertools

import pytest
import torch

from jointobj import Denoiser
from jointobj.decoding import build_decoder
from jointobj.decoding.decoder_law import DecoderOrder, decoder_blocks, decoder_log_likelihood
from jointobj.diffusion.batch import answer_batch
from jointobj.model.order_head import OrderHead, attach_order_head
from jointobj.model.tiny import tiny_masked_lm

from tiny_models import sharp_denoiser

VOCAB, MASK, PROMPT_TOKEN, LENGTH = 4, 3, 2, 4  # answers over {0, 1, 2}: 3^4 = 81 of them
BUDGETS = [1, 2, LENGTH]  # steps: K in {1, 2, n}


@functools.cache
def random_head() -> OrderHead:
    """An order head with every weight random (its residual far from zero): it ranks unlike confidence."""
    torch.manual_seed(3)
    head = OrderHead(VOCAB, LENGTH, width=8)
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0.0, 2.0)
    return head.eval()


def every_answer() -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(VOCAB - 1), repeat=LENGTH)))  # [81, 4], no [MASK]


def batch_of(answers: torch.Tensor) -> dict:
    return answer_batch(torch.full((len(answers), 1), PROMPT_TOKEN), answers)


def learned(steps: int) -> DecoderOrder:
    return DecoderOrder("learned", (("head", random_head()),), tokens_per_step=None, steps=steps)


@pytest.mark.parametrize("steps", BUDGETS)
def test_the_learned_decoders_law_sums_to_one_over_every_answer(steps):
    with torch.no_grad():
        loglik = decoder_log_likelihood(sharp_denoiser(), batch_of(every_answer()), [learned(steps)])[:, 0]  # [81]
    assert abs(float(loglik.double().exp().sum()) - 1.0) < 1e-5
    assert float(loglik.exp().max()) > 4 / len(loglik)  # far from uniform: the check has teeth


def test_the_random_head_orders_unlike_confidence():
    # Otherwise the tests here would only re-test the confidence policy.
    batch = batch_of(every_answer())
    scorable = ~batch["prompt_mask"]
    ours, _ = decoder_blocks(sharp_denoiser(), batch, scorable, learned(LENGTH))
    theirs, _ = decoder_blocks(sharp_denoiser(), batch, scorable, DecoderOrder.parse(f"confidence:steps={LENGTH}"))
    differ = (ours != theirs).any(1).float().mean()
    assert 0.2 < float(differ) < 1.0, float(differ)  # and not one fixed order either: it reads the state


SAMPLES = 6000


@pytest.mark.parametrize("steps", BUDGETS)
def test_answers_appear_at_the_learned_decoders_law_frequency(steps):
    order = learned(steps)
    out = build_decoder("learned", None, **order.decoder_options).sample(
        sharp_denoiser(), torch.full((SAMPLES, 1), PROMPT_TOKEN), LENGTH, torch.Generator().manual_seed(2))
    with torch.no_grad():
        law = decoder_log_likelihood(sharp_denoiser(), batch_of(every_answer()), [order])[:, 0].double().exp()  # [81]
    code = (out.gen_ids * torch.tensor([27, 9, 3, 1])).sum(1)  # base-3 index of each sample
    frequency = torch.bincount(code, minlength=81).double() / SAMPLES  # [81]
    # 4.5 binomial standard deviations each, plus 4 counts: for answers of law ~1e-5 the normal approximation
    # fails (2 draws where 0.1 are expected happen once in ~200 answers)
    tolerance = 4.5 * (law * (1 - law) / SAMPLES).sqrt() + 4 / SAMPLES
    assert ((frequency - law).abs() <= tolerance).all(), (frequency - law).abs().max()


def test_the_law_is_the_samplers_own_log_q():
    order = learned(2)
    out = build_decoder("learned", None, **order.decoder_options).sample(
        sharp_denoiser(), torch.full((64, 1), PROMPT_TOKEN), LENGTH, torch.Generator().manual_seed(0))
    with torch.no_grad():
        loglik = decoder_log_likelihood(sharp_denoiser(), batch_of(out.gen_ids), [order])[:, 0]
    torch.testing.assert_close(loglik.double(), out.log_prob, atol=1e-4, rtol=0)


def test_the_decoder_uses_the_head_the_model_carries_and_ranks_as_confidence_without_one():
    model = tiny_masked_lm("modernbert", vocab_size=VOCAB, seed=0)
    denoiser = Denoiser(model, mask_token_id=MASK).eval()
    prompt = torch.full((32, 1), PROMPT_TOKEN)

    def decode(name, **options):
        out = build_decoder(name, None, steps=2, **options).sample(denoiser, prompt, LENGTH,
                                                                   torch.Generator().manual_seed(0), return_trace=True)
        return out.commit_step

    assert torch.equal(decode("learned"), decode("confidence"))
    head = attach_order_head(denoiser, max_length=LENGTH, width=8)
    head.load_state_dict(random_head().state_dict())
    assert torch.equal(decode("learned"), decode("learned", head=random_head()))
    assert not torch.equal(decode("learned"), decode("confidence"))


def test_a_head_for_another_model_is_refused():
    with pytest.raises(ValueError, match="OrderHead"):
        build_decoder("learned", None, steps=2, head="not a head")
    with pytest.raises(ValueError, match="logits over at most"):
        OrderHead(VOCAB + 1, LENGTH)(torch.zeros(1, LENGTH, VOCAB), torch.ones(1, LENGTH, dtype=torch.bool))
