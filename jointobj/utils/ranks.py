"""torch.distributed's default group and ZeRO-3, as the losses and the likelihood see them.

    if world_size() > 1:
        flag = torch.zeros(1, device=collective_device(loss.device))
        torch.distributed.all_reduce(flag)

    scores = run_chunks(score_rows, num_rows, max_rows, model=denoiser, device=ids.device, checkpoint=True)  # [R]

`run_chunks` is the plumbing every chunked forward shares: the chunk count agreed across ranks
(under ZeRO-3 every forward gathers the weights collectively, so every rank must run as many),
and activation checkpointing, reentrant over ZeRO-3 shards with a grad-requiring anchor input.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from jointobj.utils.checks import check_whole_number

__all__ = ["accelerator_available", "chunks_on_every_rank", "collective_device", "configure_cpu_ranks", "run_chunks",
           "world_size", "zero3_sharded"]


def launcher_rank() -> int:
    """This process's global rank as a launcher set it (RANK, else LOCAL_RANK; 0 without a launcher):
    readable before any process group exists."""
    for name in ("RANK", "LOCAL_RANK"):
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


def world_size() -> int:
    """Ranks in the initialised default group; 1 when there is none."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def collective_device(device: torch.device | str) -> torch.device:
    """Where a tensor for a collective on the default group must live: the current CUDA device
    under NCCL (device tensors only), the CPU under gloo, else `device`."""
    backend = dist.get_backend()
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu") if backend == "gloo" else torch.device(device)


def zero3_sharded(model: Any) -> bool:
    """True when DeepSpeed ZeRO-3 partitioned the model's weights (it tags them with `ds_id`):
    outside a DeepSpeed forward they are placeholders. False for anything without parameters.
    The one ZeRO-3 test of the package."""
    parameters = getattr(model, "parameters", None)
    return callable(parameters) and any(hasattr(p, "ds_id") for p in parameters())


def chunks_on_every_rank(count: int, device: torch.device, sync_ranks: bool = True) -> int:
    """The largest `count` over the ranks of torch.distributed's default group; `count` itself
    when there is no such group, it has one rank, or `sync_ranks` is False."""
    if not sync_ranks or world_size() == 1:
        return count
    most = torch.tensor([count], dtype=torch.long, device=collective_device(device))
    dist.all_reduce(most, op=dist.ReduceOp.MAX)
    return int(most.item())


def run_chunks(
    score_rows: Callable[[slice, torch.Tensor | None], torch.Tensor],
    num_rows: int,
    max_rows: int,
    *,
    model: Any,
    device: torch.device,
    checkpoint: bool = False,
    sync_ranks: bool | None = None,
) -> torch.Tensor:
    """`score_rows(rows, anchor) -> [r]` over rows 0..num_rows-1 in chunks of `max_rows`: [num_rows].

    Agreed across ranks: with `sync_ranks` (None: when `model`'s weights are ZeRO-3 shards) and
    more than one rank, the chunk count is agreed (MAX) before the first forward, and a rank
    with fewer chunks runs padding chunks (rows 0..0 again) that enter the result with weight 0,
    so their backward, and their recomputation under checkpointing, run as well. A rank that ran
    out of chunks while another gathers weights would wait in a different collective (a deadlock).

    Checkpointed: with `checkpoint` and grad mode on, each chunk but the call's last forward runs
    under activation checkpointing, so the saved activations are one chunk's. The last is not
    checkpointed because that would save nothing: its activations are alive from its forward to its
    backward, which runs first, before any recomputation, and a recomputation would hold the
    same activations at the same moment; it would only cost one more forward (with one chunk,
    checkpointing cost a forward and bought nothing). Non-reentrant checkpointing cannot
    recompute a forward over frozen ZeRO-3 shards (they are re-gathered with another shape:
    "CheckpointError: Recomputed values ... shape [0]", DeepSpeed before PR #8148), so shards are
    checkpointed reentrantly; reentrant checkpointing back-propagates into the weights only if
    some input requires grad, hence `anchor`, a zero scalar that does (None otherwise), which
    `score_rows` takes and need not use.
    """
    max_rows = check_whole_number("max_rows (rows per forward)", max_rows)
    grad_checkpoint = checkpoint and torch.is_grad_enabled()
    reentrant = grad_checkpoint and zero3_sharded(model)
    anchor = torch.zeros((), device=device, requires_grad=True) if reentrant else None

    def run(rows: slice, last: bool) -> torch.Tensor:
        if grad_checkpoint and not last:
            return activation_checkpoint(score_rows, rows, anchor, use_reentrant=reentrant)  # [r]
        return score_rows(rows, anchor)  # [r]

    starts = range(0, num_rows, max_rows)
    sync = zero3_sharded(model) if sync_ranks is None else sync_ranks
    missing = chunks_on_every_rank(len(starts), device, sync) - len(starts)
    total = len(starts) + max(missing, 0)  # forwards this call runs, the same on every rank when synchronised
    scores = torch.cat([run(slice(start, start + max_rows), c == total - 1)
                        for c, start in enumerate(starts)])  # [num_rows]
    if missing > 0:  # padding forwards: the same collectives as the other ranks, weight 0 in the result
        padding = torch.stack([run(slice(0, 1), len(starts) + p == total - 1).sum() for p in range(missing)]).sum()
        scores = scores + 0.0 * padding
    return scores


def accelerator_available() -> bool:
    """Whether torch sees any accelerator (CUDA, ROCm, MPS, XPU, ...), not just CUDA."""
    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6
    if accelerator is not None and hasattr(accelerator, "is_available"):
        return bool(accelerator.is_available())
    mps = getattr(torch.backends, "mps", None)
    xpu = getattr(torch, "xpu", None)
    return (torch.cuda.is_available() or bool(mps is not None and mps.is_available())
            or bool(xpu is not None and xpu.is_available()))


def configure_cpu_ranks() -> None:
    """Without an accelerator, share the cores among this machine's ranks and leave one free.

    OpenMP threads that outnumber free cores spin against each other (a tiny model's step slows by
    an order of magnitude on a busy machine). OMP_NUM_THREADS, if set, wins.
    """
    if accelerator_available() or "OMP_NUM_THREADS" in os.environ:
        return
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE") or os.environ.get("WORLD_SIZE") or 1)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // ranks - 1))
