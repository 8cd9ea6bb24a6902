"""jointobj.utils.ranks: a non-finite loss on one of two gloo ranks stops both, each naming the rank that saw it;
chunks checkpointed over ZeRO-3 shards still reach the weights. (The chunk count agreed across ranks is
tested where it matters, on the likelihood: tests/test_likelihood.py.)"""

import pytest
import torch

from jointobj.objectives.base import check_finite
from jointobj.utils.ranks import collective_device, run_chunks, world_size, zero3_sharded

from helpers import on_gloo_ranks
from tiny_models import MixingLM


def _worker(rank):
    seen = {"world": world_size(), "device": str(collective_device("cuda:3"))}
    check_finite(torch.tensor(1.0), "token_ce loss", torch.zeros(1, 4, dtype=torch.long))  # finite everywhere
    loss = torch.tensor(float("nan") if rank == 1 else 1.0)
    try:
        check_finite(loss, "token_ce loss", torch.zeros(2, 4, dtype=torch.long))
        seen["error"] = None
    except FloatingPointError as error:
        seen["error"] = str(error)
    return seen


@pytest.mark.slow  # spawns two processes
def test_a_non_finite_loss_on_one_rank_stops_every_rank(tmp_path):
    first, second = on_gloo_ranks(_worker, tmp_path)
    assert first["world"] == second["world"] == 2 and first["device"] == "cpu"  # gloo reduces CPU tensors
    assert "not finite on rank(s) [1]; rank 0 (whose loss is finite) stops with them" in first["error"]
    assert "token_ce loss is not finite on rank 1 ([nan])" in second["error"]
    assert "batch of shape (2, 4)" in second["error"]


def test_without_a_group_there_is_one_rank():
    assert world_size() == 1


def test_checkpointed_chunks_over_zero3_shards_still_reach_the_weights():
    # Parameters tagged as ZeRO-3 partitions (`ds_id`) are checkpointed reentrantly, which sends
    # gradients to the weights only if some input of the checkpointed call requires grad; without
    # the anchor input every gradient here would be None.
    ids = torch.randint(2, 20, (8, 12), generator=torch.Generator().manual_seed(0))  # [R, l]
    plain, tagged = MixingLM(length=12, dim=8, scale=1.0), MixingLM(length=12, dim=8, scale=1.0)
    for i, parameter in enumerate(tagged.parameters()):
        parameter.ds_id = i
    assert zero3_sharded(tagged) and not zero3_sharded(plain)

    def score(model):
        return lambda rows, anchor: model(ids[rows]).log_softmax(-1)[..., 2].sum(-1)  # [r]

    plain(ids).log_softmax(-1)[..., 2].sum().backward()
    scores = run_chunks(score(tagged), len(ids), 3, model=tagged, device=ids.device, checkpoint=True)  # [R]
    forwards = tagged.forwards
    scores.sum().backward()
    assert forwards == 3 and tagged.forwards == 3 + 2  # 8 rows in chunks of 3, all but the last recomputed
    for parameter, reference in zip(tagged.parameters(), plain.parameters()):
        torch.testing.assert_close(parameter.grad, reference.grad, atol=1e-6, rtol=1e-5)


def test_the_last_chunk_is_not_checkpointed_and_nothing_else_changes():
    # Checkpointing the call's last forward saves no memory (its backward runs first, before any
    # recomputation) and costs a forward: one chunk runs once, with or without checkpointing, and the
    # values and gradients are those of the plain call. Fails if every chunk is checkpointed.
    ids = torch.randint(2, 20, (8, 12), generator=torch.Generator().manual_seed(0))  # [R, l]
    results = {}
    for checkpoint, max_rows in [(False, 8), (True, 8), (True, 3)]:
        model = MixingLM(length=12, dim=8, scale=1.0)
        scores = run_chunks(lambda rows, anchor: model(ids[rows]).log_softmax(-1)[..., 2].sum(-1), len(ids), max_rows,
                            model=model, device=ids.device, checkpoint=checkpoint)  # [R]
        scores.sum().backward()
        results[checkpoint, max_rows] = (model.forwards, scores.detach(), [p.grad for p in model.parameters()])
    assert [forwards for forwards, _, _ in results.values()] == [1, 1, 3 + 2]
    for _, scores, grads in list(results.values())[1:]:
        torch.testing.assert_close(scores, results[False, 8][1], atol=1e-6, rtol=1e-5)
        for grad, reference in zip(grads, results[False, 8][2]):
            torch.testing.assert_close(grad, reference, atol=1e-6, rtol=1e-5)


def test_max_rows_below_one_is_refused():
    with pytest.raises(ValueError, match=r"max_rows \(rows per forward\) must be a whole number >= 1"):
        run_chunks(lambda rows, anchor: torch.zeros(1), 4, 0, model=None, device=torch.device("cpu"))
