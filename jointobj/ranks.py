"""torch.distributed's default group, as the losses and the likelihood see it.

    if world_size() > 1:
        flag = torch.zeros(1, device=collective_device(loss.device))
        torch.distributed.all_reduce(flag)
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["collective_device", "world_size"]


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
