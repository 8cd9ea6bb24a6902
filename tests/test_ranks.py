"""Across two gloo ranks: a non-finite loss on one rank stops both, each naming the rank that saw it."""

import datetime
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from jointobj.losses.base import check_finite
from jointobj.ranks import collective_device, world_size


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        seen = {"world": world_size(), "device": str(collective_device("cuda:3"))}
        check_finite(torch.tensor(1.0), "token_ce loss", torch.zeros(1, 4, dtype=torch.long))  # finite everywhere
        loss = torch.tensor(float("nan") if rank == 1 else 1.0)
        try:
            check_finite(loss, "token_ce loss", torch.zeros(2, 4, dtype=torch.long))
            seen["error"] = None
        except FloatingPointError as error:
            seen["error"] = str(error)
        torch.save(seen, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_a_non_finite_loss_on_one_rank_stops_every_rank(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    first, second = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert first["world"] == second["world"] == 2 and first["device"] == "cpu"  # gloo reduces CPU tensors
    assert "not finite on rank(s) [1]; rank 0 (whose loss is finite) stops with them" in first["error"]
    assert "token_ce loss is not finite on rank 1 ([nan])" in second["error"] and "batch of shape (2, 4)" in second["error"]


def test_without_a_group_there_is_one_rank():
    assert world_size() == 1
