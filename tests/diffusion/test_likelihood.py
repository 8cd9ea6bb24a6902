"""order_log_likelihood: brute-force normalisation, a naive chain rule, chunking, bad input."""

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from jointobj.decoding import build_decoder
from jointobj.diffusion.likelihood import order_log_likelihood, plan_blocks
from jointobj.diffusion.orders import ORDERS, OrderProposal, Orders
from jointobj.objectives import LogSumOrdersLoss

from helpers import on_gloo_ranks, padded_batch
from tiny_models import MixingLM, sharp_denoiser

VOCAB, MASK, PAD = 20, 1, 0


def make_batch(lengths, prompt_lengths, pad_to=None, seed=0):
    return padded_batch(lengths, prompt_lengths, VOCAB, PAD, pad_to, seed)


def scorable_of(batch):
    return batch["attention_mask"].bool() & ~batch["prompt_mask"]


rows_strategy = st.lists(st.tuples(st.integers(2, 8), st.integers(0, 7)), min_size=1, max_size=3)


def batch_from(rows, extra_padding=0, seed=0):
    lengths = [length for length, _ in rows]
    prompts = [min(prompt, length - 1) for length, prompt in rows]
    return make_batch(lengths, prompts, pad_to=max(lengths) + extra_padding, seed=seed)


# ---------------------------------------------------------------- normalisation and the chain rule


@pytest.mark.parametrize("blocks", [1, 2, 4])
def test_probabilities_sum_to_one_over_all_sequences(blocks):
    # Vocabulary {0, 1, 2, 3} with mask id 3. x ranges over all 4^4 answers, mask token included,
    # because the model's softmax puts mass on every id; the identity holds over what it can output.
    vocab, mask, prompt_token = 4, 3, 2
    denoiser = sharp_denoiser(vocab, mask)
    answers = torch.tensor(list(itertools.product(range(vocab), repeat=4)))  # [256, 4]
    input_ids = torch.cat([torch.full((len(answers), 1), prompt_token), answers], dim=1)  # [256, 5]
    prompt_mask = torch.zeros_like(input_ids, dtype=torch.bool)
    prompt_mask[:, 0] = True
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "prompt_mask": prompt_mask}
    scorable = scorable_of(batch)
    random = ORDERS.get("random")(scorable[:1], torch.Generator().manual_seed(5))  # [1, 5]
    random = random.expand(len(answers), -1)  # the same order everywhere
    rank = torch.stack([ORDERS.get("l2r")(scorable), ORDERS.get("r2l")(scorable), random], dim=1)  # [256, 3, 5]
    zeros = torch.zeros(len(answers), 3)
    orders = Orders(rank, torch.zeros(len(answers), 3, dtype=torch.long), ("l2r",), zeros, zeros)
    with torch.no_grad():
        loglik = order_log_likelihood(denoiser, batch, orders, blocks, max_rows=1024)  # [256, 3]
    torch.testing.assert_close(loglik.exp().sum(0), torch.ones(3), atol=1e-4, rtol=0)
    assert loglik.exp().max() > 4 / len(answers)  # far from uniform, so the check has teeth


def naive_l2r_chain_rule(denoiser, batch):
    """sum_i log p(x_i | x_<i scorable visible, rest masked), one single-position forward at a time."""
    totals = []
    for b in range(batch["input_ids"].shape[0]):
        ids, attention = batch["input_ids"][b : b + 1], batch["attention_mask"][b : b + 1]
        scorable = (attention.bool() & ~batch["prompt_mask"][b : b + 1])[0]
        positions = scorable.nonzero().flatten().tolist()
        total = 0.0
        for j, i in enumerate(positions):
            noisy = ids.clone()
            noisy[0, positions[j:]] = denoiser.mask_token_id
            logits = denoiser(input_ids=noisy, attention_mask=attention)[0, i]
            total += torch.log_softmax(logits, dim=-1)[ids[0, i]]
        totals.append(total)
    return torch.stack(totals)


def test_l2r_with_one_block_per_position_is_the_chain_rule():
    denoiser = sharp_denoiser(VOCAB, MASK)
    batch = make_batch([7, 5, 6], [2, 1, 0], pad_to=8, seed=3)
    orders = OrderProposal(["l2r"]).sample(scorable_of(batch))
    with torch.no_grad():
        loglik = order_log_likelihood(denoiser, batch, orders, "all")[:, 0]  # [b]
        expected = naive_l2r_chain_rule(denoiser, batch)
    torch.testing.assert_close(loglik, expected, atol=1e-4, rtol=1e-5)


class NoMassOnMask(torch.nn.Module):
    """A denoiser whose [MASK] logit is -1e9: its softmax over the whole vocabulary (the
    likelihood's) equals its softmax without [MASK] (the sampler's), so the two can be compared."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.mask_token_id = inner, inner.mask_token_id

    def forward(self, input_ids, attention_mask=None):
        logits = self.inner(input_ids=input_ids, attention_mask=attention_mask)  # [r, l, V]
        return logits.index_fill(-1, torch.tensor([self.mask_token_id]), -1e9)


@pytest.mark.parametrize("length, budget", [
    *[(n, {"tokens_per_step": t}) for n, t in [(10, 3), (13, 3), (14, 4), (10, 4), (7, 2), (6, 6), (5, 1)]],
    *[(n, {"steps": s}) for n, s in [(10, 4), (13, 5), (7, 3), (11, 6), (12, 7), (9, 9), (6, 1)]],
])
def test_k_block_l2r_likelihood_is_the_l2r_samplers_log_prob(length, budget):
    # The l2r sampler commits ceil(left / steps left) tokens per step (n=10, t=3: 3, 3, 2, 2; n=13 in
    # 5 steps: 3, 3, 3, 2, 2), so its log q(answer) is l_o for the l2r order cut into K blocks of
    # those sizes, K = ceil(n / t) or the steps asked for (uneven quotas included).
    denoiser = NoMassOnMask(sharp_denoiser(VOCAB, MASK))
    generator = torch.Generator().manual_seed(length * 10 + sum(budget.values()))
    prompt = torch.randint(2, VOCAB, (6, 2), generator=generator)  # [b, lp]
    decoder = build_decoder("l2r", temperature=1.0, **budget)
    out = decoder.sample(denoiser, prompt, length, generator=generator)
    blocks = budget.get("steps") or math.ceil(length / budget["tokens_per_step"])
    assert out.steps == blocks
    prompt_mask = torch.zeros_like(out.ids, dtype=torch.bool)
    prompt_mask[:, : prompt.shape[1]] = True
    batch = {"input_ids": out.ids, "attention_mask": torch.ones_like(out.ids), "prompt_mask": prompt_mask}
    orders = OrderProposal(["l2r"]).sample(scorable_of(batch))
    with torch.no_grad():
        loglik = order_log_likelihood(denoiser, batch, orders, blocks, max_rows=64)[:, 0]  # [b]
    torch.testing.assert_close(loglik.double(), out.log_prob, atol=1e-4, rtol=1e-5)
    assert out.log_prob.std() > 0.5  # samples differ in probability, so a wrong cut shows


# ---------------------------------------------------------------- chunking and what gets read


@settings(max_examples=10)  # max_rows=1 runs one forward per row: keep it short
@given(rows=rows_strategy, blocks=st.sampled_from([1, 2, "all"]), seed=st.integers(0, 1000))
def test_chunk_size_does_not_change_the_result(rows, blocks, seed):
    batch = batch_from(rows, seed=seed)
    orders = OrderProposal(["l2r", "random"]).sample(scorable_of(batch), torch.Generator().manual_seed(seed))
    if blocks == 2 and int(orders.lengths.min()) < 2:
        blocks = 1
    denoiser = sharp_denoiser(VOCAB, MASK)
    total_rows = plan_blocks(orders, blocks).num_rows
    with torch.no_grad():
        results = [order_log_likelihood(denoiser, batch, orders, blocks, max_rows=r) for r in (1, 7, total_rows)]
    for other in results[1:]:
        torch.testing.assert_close(other, results[0], atol=1e-5, rtol=1e-5)


@given(rows=rows_strategy, extra_padding=st.integers(0, 3), seed=st.integers(0, 1000))
def test_rows_mask_and_score_only_scorable_positions(rows, extra_padding, seed):
    batch = batch_from(rows, extra_padding, seed)
    scorable = scorable_of(batch)
    orders = OrderProposal(["r2l", "random"]).sample(scorable, torch.Generator().manual_seed(seed))
    plan = plan_blocks(orders, "all")
    noisy, targets = plan.inputs(batch["input_ids"], MASK, slice(None))  # [R, l]
    owner = plan.batch_row
    assert not (targets & ~scorable[owner]).any()  # prompt and padding are never scored
    assert torch.equal(noisy[~scorable[owner]], batch["input_ids"][owner][~scorable[owner]])  # nor masked
    assert (noisy[targets] == MASK).all()  # a scored position is hidden from its own forward
    assert torch.equal(targets.sum(0).bool(), scorable[owner].any(0))  # every scorable position is scored
    per_order = torch.zeros(len(rows), 2, batch["input_ids"].shape[1], dtype=torch.long)
    per_order.index_put_((plan.batch_row, plan.order), targets.long(), accumulate=True)
    assert torch.equal(per_order, scorable[:, None].expand_as(per_order).long())  # exactly once per order


class PerturbVisibleLogits(torch.nn.Module):
    """Adds large noise to the logits of every position whose input is not the mask token."""

    def __init__(self, inner, seed):
        super().__init__()
        self.inner, self.mask_token_id, self.seed = inner, inner.mask_token_id, seed

    def forward(self, input_ids, attention_mask=None):
        logits = self.inner(input_ids=input_ids, attention_mask=attention_mask)  # [r, l, V]
        noise = 30 * torch.randn(logits.shape, generator=torch.Generator().manual_seed(self.seed))
        return torch.where((input_ids != self.mask_token_id)[..., None], logits + noise, logits)


@given(rows=rows_strategy, seed=st.integers(0, 1000))
def test_logits_at_visible_positions_never_count(rows, seed):
    # Prompt and padding are never masked, so this also says their own probabilities never count.
    batch = batch_from(rows, extra_padding=1, seed=seed)
    denoiser = sharp_denoiser(VOCAB, MASK)
    orders = OrderProposal(["l2r", "random"]).sample(scorable_of(batch), torch.Generator().manual_seed(seed))
    with torch.no_grad():
        clean = order_log_likelihood(denoiser, batch, orders, 1 if int(orders.lengths.min()) < 2 else 2)
        noisy = order_log_likelihood(PerturbVisibleLogits(denoiser, seed), batch, orders,
                                     1 if int(orders.lengths.min()) < 2 else 2)
    torch.testing.assert_close(noisy, clean, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- equal forwards on every rank (ZeRO-3)


def counting_lm() -> MixingLM:
    """A MixingLM that counts its forwards; its parameters are the same on every rank."""
    return MixingLM(VOCAB, length=12, dim=8, scale=1.0, mask_token_id=MASK)


def _forwards_and_grads(model, run):
    model.zero_grad(set_to_none=True)
    before = model.forwards
    value = run()
    value.sum().backward()
    return value.detach(), model.forwards - before, [p.grad.clone() for p in model.parameters()]


def _rank_worker(rank):
    # Rank 0 scores long answers, rank 1 short ones: 2 orders x sum_b n_b rows = 22 vs 6, 6 vs 2 chunks of 4.
    lengths, prompts = ([8, 7], [2, 2]) if rank == 0 else ([4, 2], [2, 1])
    batch = make_batch(lengths, prompts, pad_to=12, seed=rank)
    orders = OrderProposal(["l2r", "random"]).sample(scorable_of(batch), torch.Generator().manual_seed(rank))
    model = counting_lm()
    result = {}
    for checkpoint in (False, True):
        score = lambda sync: order_log_likelihood(model, batch, orders, "all", max_rows=4,  # noqa: E731
                                                  checkpoint=checkpoint, sync_ranks=sync)
        model.collective = True
        result[f"synced_{checkpoint}"] = _forwards_and_grads(model, lambda: score(True))
        model.collective = False  # the ranks run different numbers of forwards here, on purpose
        result[f"local_{checkpoint}"] = _forwards_and_grads(model, lambda: score(False))
    model.collective = True
    for i, parameter in enumerate(model.parameters()):
        parameter.ds_id = i  # "ZeRO-3 shards": the loss syncs by default
    loss_fn = LogSumOrdersLoss(blocks="all", mode="sampled", max_rows=4)
    result["sampled"] = _forwards_and_grads(model, lambda: loss_fn(model, batch, torch.Generator().manual_seed(0)).loss)
    return result


@pytest.mark.slow  # spawns two processes
def test_every_rank_runs_the_same_forwards_and_padding_changes_nothing(tmp_path):
    ranks = on_gloo_ranks(_rank_worker, tmp_path)
    for checkpoint in (False, True):
        runs = (lambda chunks: 2 * chunks - 1) if checkpoint else (lambda chunks: chunks)  # all but the last
        synced = [r[f"synced_{checkpoint}"] for r in ranks]                             # chunk rerun in backward
        local = [r[f"local_{checkpoint}"] for r in ranks]
        assert [forwards for _, forwards, _ in local] == [runs(6), runs(2)]  # the counts differ
        assert [forwards for _, forwards, _ in synced] == [runs(6), runs(6)]  # until they are synced
        for (value, _, grads), (local_value, _, local_grads) in zip(synced, local):
            torch.testing.assert_close(value, local_value, atol=0, rtol=0)  # padding has weight 0
            for grad, local_grad in zip(grads, local_grads):
                torch.testing.assert_close(grad, local_grad, atol=1e-6, rtol=1e-5)
    # sampled log-sum: a no-grad pass over all orders, then a grad pass over the drawn one, each synced
    assert ranks[0]["sampled"][1] == ranks[1]["sampled"][1]


# ---------------------------------------------------------------- bad input


class NaNOnToken(torch.nn.Module):
    """NaN logits for every row that contains `token` anywhere (a model that blew up on one example)."""

    def __init__(self, inner, token):
        super().__init__()
        self.inner, self.mask_token_id, self.token = inner, inner.mask_token_id, token

    def forward(self, input_ids, attention_mask=None):
        logits = self.inner(input_ids=input_ids, attention_mask=attention_mask)
        poisoned = (input_ids == self.token).any(-1)[:, None, None]  # [r, 1, 1]
        return torch.where(poisoned, float("nan"), logits)


def test_non_finite_loglik_names_the_batch_row():
    batch = make_batch([5, 5, 5], [1, 1, 1], seed=0)
    batch["input_ids"][:, 0] = 2
    batch["input_ids"][1, 0] = 19  # only row 1's prompt holds the poisoned token
    batch["input_ids"][:, 1:][batch["input_ids"][:, 1:] == 19] = 18
    orders = OrderProposal(["l2r"]).sample(scorable_of(batch))
    with pytest.raises(FloatingPointError, match=r"not finite for batch rows \[1\]"):
        order_log_likelihood(NaNOnToken(sharp_denoiser(VOCAB, MASK), 19), batch, orders, 2)


def test_row_without_scorable_position_is_refused():
    batch = make_batch([4, 4], [1, 4])
    orders = OrderProposal(["l2r"]).sample(scorable_of(batch))
    with pytest.raises(ValueError, match=r"rows \[1\] of the batch have no scorable position"):
        order_log_likelihood(sharp_denoiser(VOCAB, MASK), batch, orders)


@pytest.mark.parametrize("blocks", [0, 4])
def test_blocks_outside_one_to_n_name_the_short_rows(blocks):
    batch = make_batch([6, 4], [1, 1])
    orders = OrderProposal(["l2r"]).sample(scorable_of(batch))
    with pytest.raises(ValueError, match=r"must lie in 1..n for every row|blocks must be a whole number K >= 1"):
        order_log_likelihood(sharp_denoiser(VOCAB, MASK), batch, orders, blocks)


def test_orders_of_another_batch_are_refused():
    batch = make_batch([6, 4], [1, 1])
    orders = OrderProposal(["l2r"]).sample(scorable_of(make_batch([6, 4], [2, 1])))
    with pytest.raises(ValueError, match="order 0 of batch row 0 is not a permutation"):
        order_log_likelihood(sharp_denoiser(VOCAB, MASK), batch, orders)


def test_max_rows_below_one_is_refused():
    batch = make_batch([4], [1])
    with pytest.raises(ValueError, match=r"max_rows \(rows per forward\) must be a whole number >= 1"):
        orders = OrderProposal(["l2r"]).sample(scorable_of(batch))
        order_log_likelihood(sharp_denoiser(VOCAB, MASK), batch, orders, max_rows=0)
