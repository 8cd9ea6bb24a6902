"""Under ZeRO-3 every forward is a collective weight gather, so the decoder-order pass, whose number of
forwards depends on the data, must run as many on every rank; padding forwards change no value.

A rank that ran fewer forwards than another would meet a different collective (MixingLM's stand-in
gather asserts it did not) or wait in it: the gloo group of `on_gloo_ranks` times out after 60 s,
so a test that would hang fails instead."""

import pytest
import torch

from jointobj.decoding.decoder_law import DecoderOrder, decoder_log_likelihood
from jointobj.objectives import LogSumOrdersLoss

from helpers import on_gloo_ranks, padded_batch
from tiny_models import MixingLM

VOCAB, MASK, PAD = 20, 1, 0
# one token per step: each row's budget is its answer length; a threshold decoder may finish early
ORDERS = [DecoderOrder.parse("confidence"), DecoderOrder.parse("threshold:threshold=0.3:steps=4")]


def rank_batch(rank: int) -> dict:
    """Rank 0 holds answers of 6 and 5 tokens, rank 1 of 2 and 1: 6 against 2 steps at one token per step."""
    lengths, prompts = ([8, 7], [2, 2]) if rank == 0 else ([4, 2], [2, 1])
    return padded_batch(lengths, prompts, VOCAB, PAD, pad_to=8, seed=rank)


def _values_forwards_grads(model: MixingLM, run) -> tuple[torch.Tensor, int, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    before = model.forwards
    value = run()
    if value.requires_grad:
        value.sum().backward()
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    return value.detach(), model.forwards - before, grads


def _rank_worker(rank: int) -> dict:
    batch = rank_batch(rank)
    model = MixingLM(VOCAB, length=8, dim=8, scale=2.0, mask_token_id=MASK)
    result = {}
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            model.collective = True
            result[f"synced_{grad}"] = _values_forwards_grads(
                model, lambda: decoder_log_likelihood(model, batch, ORDERS, max_rows=2, sync_ranks=True))
            model.collective = False  # the ranks run different numbers of forwards here, on purpose
            result[f"local_{grad}"] = _values_forwards_grads(
                model, lambda: decoder_log_likelihood(model, batch, ORDERS, max_rows=2, sync_ranks=False))
    model.collective = True
    for i, parameter in enumerate(model.parameters()):
        parameter.ds_id = i  # "ZeRO-3 shards": the log-sum syncs by default
    loss_fn = LogSumOrdersLoss([str(order) for order in ORDERS], max_rows=2)
    result["logsum"] = _values_forwards_grads(model, lambda: loss_fn(model, batch).loss)
    return result


def single_process() -> list[torch.Tensor]:
    """Each rank's batch scored in this process, with no group: the law every rank must reproduce."""
    model = MixingLM(VOCAB, length=8, dim=8, scale=2.0, mask_token_id=MASK)
    with torch.no_grad():
        return [decoder_log_likelihood(model, rank_batch(rank), ORDERS) for rank in (0, 1)]


@pytest.mark.slow  # spawns two processes
def test_ranks_with_different_budgets_run_the_same_forwards_and_get_the_single_process_values(tmp_path):
    ranks = on_gloo_ranks(_rank_worker, tmp_path)
    alone = single_process()
    for grad in (False, True):
        local = [r[f"local_{grad}"] for r in ranks]
        synced = [r[f"synced_{grad}"] for r in ranks]
        assert local[0][1] > local[1][1]  # the budgets differ: without the sync the counts differ
        assert synced[0][1] == synced[1][1] >= local[0][1]  # synced: every rank runs as many as the longest
        for rank, ((value, _, grads), (local_value, _, local_grads)) in enumerate(zip(synced, local)):
            torch.testing.assert_close(value, local_value, atol=0, rtol=0)  # padding forwards are not read
            torch.testing.assert_close(value, alone[rank], atol=1e-5, rtol=1e-5)  # the single-process law
            for grad_value, local_grad in zip(grads, local_grads) if grad else ():
                torch.testing.assert_close(grad_value, local_grad, atol=1e-6, rtol=1e-5)
    # the log-sum with decoder orders over "ZeRO-3 shards" syncs by default, and finishes
    assert ranks[0]["logsum"][1] == ranks[1]["logsum"][1]
