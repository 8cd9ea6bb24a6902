"""TokenCELoss against a naive per-example loop, plus hypothesis properties."""

import functools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from jointobj import Denoiser, TokenCELoss
from jointobj.model.tiny import tiny_masked_lm

from helpers import padded_batch

VOCAB, MASK, PAD = 100, 1, 0


class FixedLogits(torch.nn.Module):
    """A denoiser whose logits are a parameter: gradients reach them directly."""

    mask_token_id = MASK

    def __init__(self, batch: int, length: int):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.randn(batch, length, VOCAB, generator=torch.Generator().manual_seed(0)))

    def forward(self, input_ids=None, attention_mask=None):
        return self.logits


@functools.cache
def tiny(architecture: str) -> Denoiser:
    return Denoiser(tiny_masked_lm(architecture, vocab_size=VOCAB, seed=0), mask_token_id=MASK).eval()


def make_batch(lengths, prompt_lengths, pad_to=None, seed=0):
    return padded_batch(lengths, prompt_lengths, VOCAB, PAD, pad_to, seed)


def naive_token_ce(logits, batch, noised):
    """sum_b w(t_b) sum_i 1[masked] * -log p(x_i) / #scorable, one token at a time."""
    total, scorable = 0.0, 0
    for b in range(logits.shape[0]):
        for i in range(logits.shape[1]):
            real = bool(batch["attention_mask"][b, i]) and not bool(batch["prompt_mask"][b, i])
            scorable += int(real)
            if noised.masked[b, i]:
                target = batch["input_ids"][b, i]
                total += noised.weight[b] * -F.log_softmax(logits[b, i], dim=-1)[target]
    return total / scorable


def test_matches_naive_reference_at_batch_2_length_8_vocab_100():
    batch = make_batch([8, 6], [2, 1], pad_to=8)
    loss_fn = TokenCELoss()
    denoiser = FixedLogits(2, 8)
    noised = loss_fn.corrupt(batch, MASK, torch.Generator().manual_seed(3))
    assert noised.masked.any()
    output = loss_fn.score(denoiser(), batch, noised)
    torch.testing.assert_close(output.loss, naive_token_ce(denoiser(), batch, noised))


@given(
    rows=st.lists(st.tuples(st.integers(2, 10), st.integers(0, 9)), min_size=1, max_size=4),
    extra_padding=st.integers(1, 6),
    seed=st.integers(0, 1000),
)
def test_padding_length_does_not_change_the_loss(rows, extra_padding, seed):
    lengths = [length for length, _ in rows]
    prompts = [min(prompt, length - 1) for length, prompt in rows]
    short = make_batch(lengths, prompts, seed=seed)
    long = make_batch(lengths, prompts, pad_to=max(lengths) + extra_padding, seed=seed)
    model = tiny("bert")
    loss_fn = TokenCELoss()
    noised = loss_fn.corrupt(short, MASK, torch.Generator().manual_seed(seed))
    padded = type(noised)(
        F.pad(noised.input_ids, (0, extra_padding), value=PAD), F.pad(noised.masked, (0, extra_padding)),
        noised.t, noised.weight, noised.num_scorable,
    )
    with torch.no_grad():
        short_logits = model(input_ids=noised.input_ids, attention_mask=short["attention_mask"])
        short_loss = loss_fn.score(short_logits, short, noised)
        long_logits = model(input_ids=padded.input_ids, attention_mask=long["attention_mask"])
        long_loss = loss_fn.score(long_logits, long, padded)
    torch.testing.assert_close(short_loss.loss, long_loss.loss, atol=1e-5, rtol=1e-5)


@given(
    rows=st.lists(st.tuples(st.integers(2, 8), st.integers(0, 7)), min_size=1, max_size=4),
    seed=st.integers(0, 1000),
)
def test_prompt_and_padding_never_get_gradient(rows, seed):
    lengths = [length for length, _ in rows]
    prompts = [min(prompt, length - 1) for length, prompt in rows]
    batch = make_batch(lengths, prompts, seed=seed)
    denoiser = FixedLogits(*batch["input_ids"].shape)
    TokenCELoss()(denoiser, batch, generator=torch.Generator().manual_seed(seed)).loss.backward()
    unscored = batch["prompt_mask"] | ~batch["attention_mask"].bool()
    assert (denoiser.logits.grad[unscored] == 0).all()


@given(
    rows=st.lists(st.tuples(st.integers(2, 12), st.integers(0, 11)), min_size=1, max_size=5),
    schedule=st.sampled_from(["linear", "cosine"]),
    seed=st.integers(0, 1000),
)
def test_loss_is_finite_for_any_valid_batch(rows, schedule, seed):
    lengths = [length for length, _ in rows]
    prompts = [min(prompt, length - 1) for length, prompt in rows]
    batch = make_batch(lengths, prompts, seed=seed)
    model = tiny("modernbert")
    output = TokenCELoss(schedule=schedule)(model, batch, generator=torch.Generator().manual_seed(seed))
    assert torch.isfinite(output.loss)
    assert output.loss >= 0


def test_batch_whose_prompt_covers_everything_is_refused():
    batch = make_batch([4, 4], [2, 4])
    with pytest.raises(ValueError, match=r"rows \[1\] of the batch have no scorable position"):
        TokenCELoss()(FixedLogits(2, 4), batch)


def test_unknown_schedule_lists_the_known_ones():
    with pytest.raises(ValueError, match="known: cosine, linear"):
        TokenCELoss(schedule="quadratic")
