"""LogSumOrdersLoss and MixtureLoss: gradients against a naive logsumexp, sampled-gradient
unbiasedness, bounds, prompt masking, metrics and bad input."""

import functools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from jointobj import Denoiser, TokenCELoss
from jointobj.diffusion.likelihood import order_log_likelihood
from jointobj.diffusion.orders import ORDERS, OrderProposal, Orders
from jointobj.model.tiny import tiny_masked_lm
from jointobj.objectives import LOSSES, LogSumOrdersLoss, MixtureLoss
from jointobj.objectives.logsum import logsum_nll

from helpers import padded_batch
from tiny_models import MixingLM

VOCAB, MASK, PAD = 20, 1, 0


@functools.cache
def modernbert() -> Denoiser:
    return Denoiser(tiny_masked_lm("modernbert", vocab_size=VOCAB, seed=0), mask_token_id=MASK)


def make_batch(lengths, prompt_lengths, pad_to=None, seed=0):
    return padded_batch(lengths, prompt_lengths, VOCAB, PAD, pad_to, seed)


def scorable_of(batch):
    return batch["attention_mask"].bool() & ~batch["prompt_mask"]


def grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def sampler_block_of_rank(n, k_count):
    """Block of each rank 0..n-1 as the K-step sampler commits them: ceil(left / steps left) per step."""
    block, left = [], n
    for step in range(k_count):
        size = math.ceil(left / (k_count - step))
        block += [step] * size
        left -= size
    return block


def naive_logsum_loss(denoiser, batch, orders, blocks):
    """-logsumexp_m(log w_m + l_m) summed over rows / #scorable, every block a separate forward, no checkpointing."""
    scorable = scorable_of(batch)
    rows = []
    for b in range(batch["input_ids"].shape[0]):
        n = int(scorable[b].sum())
        k_count = n if blocks == "all" else blocks
        per_order = []
        for m in range(orders.num_orders):
            rank = orders.rank[b, m]
            block = torch.tensor(sampler_block_of_rank(n, k_count) + [-1])[rank]  # rank -1 picks the trailing -1
            total = 0.0
            for k in range(k_count):
                noisy = batch["input_ids"][b].clone()
                noisy[block >= k] = MASK
                logits = denoiser(input_ids=noisy[None], attention_mask=batch["attention_mask"][b : b + 1])[0]
                logp = torch.log_softmax(logits, dim=-1).gather(-1, batch["input_ids"][b][:, None])[:, 0]
                total = total + logp[block == k].sum()
            per_order.append(total)
        rows.append(-torch.logsumexp(orders.log_weights[b] + torch.stack(per_order), dim=0))
    return torch.stack(rows).sum() / scorable.sum()


# ---------------------------------------------------------------- value and gradient


@pytest.mark.parametrize("blocks, lengths, prompts", [(2, [7, 5], [2, 1]), ("all", [7, 5], [2, 1]),
                                                     (4, [11, 6], [1, 1])])  # n=10, K=4: blocks of 3, 3, 2, 2
def test_exact_gradient_matches_a_naive_logsumexp(blocks, lengths, prompts):
    denoiser = modernbert()
    batch = make_batch(lengths, prompts, pad_to=max(lengths) + 1, seed=1)
    proposal = OrderProposal(mixture={"l2r": 1, "r2l": 1, "random": 2}, num_orders=3,
                             prior={"l2r": 2, "r2l": 1, "random": 1})
    orders = proposal.sample(scorable_of(batch), torch.Generator().manual_seed(0))
    loss_fn = LogSumOrdersLoss(blocks=blocks, mode="exact", max_rows=5)
    assert loss_fn.checkpoint
    output = loss_fn(denoiser, batch, orders=orders)
    naive = naive_logsum_loss(denoiser, batch, orders, blocks)
    torch.testing.assert_close(output.loss, naive, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads(denoiser, output.loss), grads(denoiser, naive), atol=1e-6, rtol=1e-4)


def test_sampled_value_equals_the_exact_value():
    denoiser = modernbert()
    batch = make_batch([7, 5], [2, 1], pad_to=8, seed=2)
    orders = OrderProposal().sample(scorable_of(batch), torch.Generator().manual_seed(0))
    exact = LogSumOrdersLoss(blocks=3, mode="exact")(denoiser, batch, orders=orders).loss
    sampled_loss = LogSumOrdersLoss(blocks=3, mode="sampled")
    sampled = sampled_loss(denoiser, batch, torch.Generator().manual_seed(1), orders=orders).loss
    torch.testing.assert_close(sampled, exact, atol=1e-6, rtol=1e-6)


@pytest.mark.slow  # a large statistical sample
def test_sampled_gradient_is_unbiased():
    draws = 500  # a uniform (wrong) draw of o* fails this by ~13 standard errors
    model = MixingLM(scale=1.0, seed=2)
    batch = make_batch([8, 6], [1, 2], pad_to=8, seed=3)
    proposal = OrderProposal(["l2r", "r2l", "random", "random"])
    orders = proposal.sample(scorable_of(batch), torch.Generator().manual_seed(0))
    with torch.no_grad():
        posterior = torch.softmax(orders.log_weights + order_log_likelihood(model, batch, orders, 2), dim=-1)  # [b, M]
    # every order is drawn often (else the empirical se misses it) and r is far from flat (so a wrong sampler shows)
    assert (posterior.min(-1).values > 0.05).all() and (posterior.max(-1).values - posterior.min(-1).values > 0.1).all()
    exact = grads(model, LogSumOrdersLoss(blocks=2, mode="exact")(model, batch, orders=orders).loss)
    loss_fn = LogSumOrdersLoss(blocks=2, mode="sampled", max_rows=64)
    generator = torch.Generator().manual_seed(1)
    samples = torch.stack([grads(model, loss_fn(model, batch, generator, orders=orders).loss) for _ in range(draws)])
    mean, se = samples.mean(0), samples.std(0) / math.sqrt(draws)  # per coordinate
    assert (se > 0).any()
    assert ((mean - exact).abs() <= 5 * se + 1e-6).all(), ((mean - exact).abs() / (se + 1e-12)).max()


# ---------------------------------------------------------------- properties


@given(
    a=st.lists(st.floats(-200, 50, allow_nan=False), min_size=1, max_size=8),
    rows=st.integers(1, 3),
)
def test_logsum_lies_between_max_and_max_plus_log_m(a, rows):
    # with a_m = log w_m + l_m:  -max_m a_m - log M <= -logsumexp(a) <= -max_m a_m, for any weights
    a = torch.tensor([a] * rows, dtype=torch.float64)  # [b, M]
    split = torch.rand(a.shape, generator=torch.Generator().manual_seed(len(a[0])), dtype=torch.float64)
    nll = logsum_nll(a - split, split)  # how a splits into log w and l does not matter
    top = a.max(-1).values
    assert (-top - math.log(a.shape[1]) - 1e-9 <= nll).all() and (nll <= -top + 1e-9).all()


@settings(max_examples=10)
@given(
    rows=st.lists(st.tuples(st.integers(2, 6), st.integers(0, 3)), min_size=1, max_size=3),
    num_orders=st.integers(1, 4),
    seed=st.integers(0, 1000),
)
def test_loss_obeys_the_bound_for_the_whole_batch(rows, num_orders, seed):
    batch = make_batch([n for n, _ in rows], [min(p, n - 1) for n, p in rows], seed=seed)
    model = MixingLM()
    proposal = OrderProposal(mixture={"l2r": 1, "random": 1}, num_orders=num_orders, prior={"l2r": 3, "random": 1})
    orders = proposal.sample(scorable_of(batch), torch.Generator().manual_seed(seed))
    with torch.no_grad():
        loss = LogSumOrdersLoss(blocks=1)(model, batch, orders=orders).loss
        top = (orders.log_weights + order_log_likelihood(model, batch, orders, 1)).max(-1).values  # [b]
    tokens = scorable_of(batch).sum()
    assert (-top - math.log(num_orders)).sum() / tokens - 1e-5 <= loss <= -top.sum() / tokens + 1e-5


@settings(max_examples=10)
@given(num_orders=st.integers(1, 5), seed=st.integers(0, 1000))
def test_equal_orders_give_minus_l_minus_log_sum_w(num_orders, seed):
    batch = make_batch([7, 5], [2, 0], seed=seed)
    model = MixingLM()
    g = torch.Generator().manual_seed(seed)
    rank = ORDERS.get("random")(scorable_of(batch), g)[:, None].expand(-1, num_orders, -1)  # [b, M, l], all equal
    log_prior = torch.randn(2, num_orders, generator=g)
    family = torch.zeros(2, num_orders, dtype=torch.long)  # [b, M]
    orders = Orders(rank, family, ("random",), log_prior, torch.zeros(2, num_orders))
    with torch.no_grad():
        loss = LogSumOrdersLoss(blocks=2)(model, batch, orders=orders).loss
        loglik = order_log_likelihood(model, batch, orders.select(torch.zeros(2, dtype=torch.long)), 2)[:, 0]  # [b]
    expected = (-loglik - orders.log_weights.logsumexp(-1)).sum() / scorable_of(batch).sum()
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)


class LogitGradRecorder(torch.nn.Module):
    """Records (input ids, gradient of the logits) for every forward whose logits receive a gradient."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.mask_token_id, self.seen = inner, inner.mask_token_id, []

    def forward(self, input_ids, attention_mask=None):
        logits = self.inner(input_ids=input_ids, attention_mask=attention_mask)
        if logits.requires_grad:
            logits.register_hook(lambda grad, ids=input_ids: self.seen.append((ids, grad)))
        return logits


@settings(max_examples=10)
@given(
    rows=st.lists(st.tuples(st.integers(2, 7), st.integers(0, 6)), min_size=1, max_size=3),
    mode=st.sampled_from(["exact", "sampled"]),
    seed=st.integers(0, 1000),
)
def test_only_masked_positions_get_gradient(rows, mode, seed):
    # Prompt and padding are never masked (test_likelihood), so they never get gradient either.
    batch = make_batch([n for n, _ in rows], [min(p, n - 1) for n, p in rows], pad_to=8, seed=seed)
    recorder = LogitGradRecorder(MixingLM())
    LogSumOrdersLoss(mode=mode)(recorder, batch, torch.Generator().manual_seed(seed)).loss.backward()
    assert recorder.seen
    for ids, grad in recorder.seen:
        assert (grad[ids != MASK] == 0).all()
        assert (grad[ids == MASK] != 0).any()


def test_metrics_are_the_posterior_and_loglik_per_family():
    model = MixingLM()
    batch = make_batch([8, 5], [1, 0], seed=4)
    orders = OrderProposal().sample(scorable_of(batch), torch.Generator().manual_seed(0))
    metrics = LogSumOrdersLoss(blocks=2)(model, batch, orders=orders).metrics
    with torch.no_grad():
        loglik = order_log_likelihood(model, batch, orders, 2)  # [b, 4]: l2r, r2l, random, random
    posterior = torch.softmax(orders.log_weights + loglik, dim=-1)
    per_token = loglik / scorable_of(batch).sum(-1, keepdim=True)
    torch.testing.assert_close(metrics["posterior_l2r"], posterior[:, 0].mean())
    torch.testing.assert_close(metrics["posterior_random"], posterior[:, 2:].sum(-1).mean())
    torch.testing.assert_close(metrics["loglik_per_token_r2l"], per_token[:, 1].mean())
    torch.testing.assert_close(metrics["loglik_per_token_random"], per_token[:, 2:].mean())
    total = sum(metrics[f"posterior_{name}"] for name in ("l2r", "r2l", "random"))
    torch.testing.assert_close(total, torch.tensor(1.0))
    assert all(not v.requires_grad for v in metrics.values())


# ---------------------------------------------------------------- mixture


def test_mixture_is_the_weighted_sum_of_its_parts_with_prefixed_metrics():
    model = MixingLM()
    batch = make_batch([8, 5], [1, 0], seed=5)
    mixture = MixtureLoss(0.3, logsum={"blocks": 2})(model, batch, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)  # the mixture draws token_ce's noise first, then the orders
    token_ce = TokenCELoss()(model, batch, g)
    logsum = LogSumOrdersLoss(blocks=2)(model, batch, g)
    torch.testing.assert_close(mixture.loss, 0.3 * token_ce.loss + 0.7 * logsum.loss)
    assert {"token_ce/masked_nll", "logsum/posterior_l2r", "token_ce/loss", "logsum/loss"} <= set(mixture.metrics)


def test_an_objective_is_found_by_name_and_an_unknown_one_lists_the_known():
    assert LOSSES.get("logsum") is LogSumOrdersLoss and LOSSES.get("mixture") is MixtureLoss
    with pytest.raises(ValueError, match=r"unknown objective 'log_sum'; known: .*logsum, mixture"):
        LOSSES.get("log_sum")


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"orders": []}, r"M >= 1|num_orders M .*whole number >= 1"),
        ({"mixture": {"l2r": 1}, "num_orders": 0}, r"M >= 1|num_orders M .*whole number >= 1"),
        ({"orders": ["l2r", "spiral"]}, "known: l2r, r2l, random"),
        ({"blocks": 0}, "blocks must be a whole number K >= 1 or 'all'"),
        ({"blocks": "most"}, "blocks must be a whole number K >= 1 or 'all'"),
        ({"mode": "approximate"}, "mode must be one of exact, sampled"),
        ({"max_rows": 0}, r"max_rows \(rows per forward\) must be a whole number >= 1"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LogSumOrdersLoss(**kwargs)


def test_mixture_weight_outside_zero_one_is_refused():
    with pytest.raises(ValueError, match=r"must be a number in \[0, 1\]"):
        MixtureLoss(1.5)


def test_more_blocks_than_scorable_tokens_is_refused_before_any_forward():
    batch = make_batch([8, 4], [1, 1])
    with pytest.raises(ValueError, match=r"rows \[1\] have only \[3\] scorable positions"):
        LogSumOrdersLoss(blocks=4)(MixingLM(), batch)


def test_row_without_scorable_position_is_refused():
    with pytest.raises(ValueError, match=r"rows \[0\] of the batch have no scorable position"):
        LogSumOrdersLoss()(MixingLM(), make_batch([4, 4], [4, 1]))
