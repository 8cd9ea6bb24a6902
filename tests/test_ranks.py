"""Across two gloo ranks: a non-finite loss on one rank stops both, each naming the rank that saw it."""

import pytest
import torch

from jointobj.losses.base import check_finite
from jointobj.ranks import collective_device, world_size

from helpers import on_gloo_ranks


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
