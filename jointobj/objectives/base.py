"""What the trainer may ask of an objective (`Objective`), what every objective returns (`LossOutput`), and the
registry the trainer picks objectives from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from jointobj.utils.ranks import collective_device, world_size, zero3_sharded
from jointobj.utils.registry import Registry

LOSSES: Registry[type] = Registry("objective")  # LOSSES.build(name, kwargs): an objective from its name and kwargs


@dataclass
class LossOutput:
    """`loss` is the scalar to back-propagate; `metrics` are detached scalars for logging
    (kept as tensors so a training step never waits on a device sync to read them)."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor | float] = field(default_factory=dict)


class Objective(nn.Module):
    """An objective: `forward(denoiser, batch) -> LossOutput` (the loss to back-propagate and detached metrics
    to log), plus the three questions the trainer and the recipe ask, never by class or attribute lookup.

    The defaults suit an objective made of parts: each question is put to the Objective sub-modules (a
    mixture's token-CE and log-sum parts, a wrapper's wrapped objective) and their answers combined; an
    objective with none answers "nothing to prepare, one scorable token, no block forwards".
    """

    def parts(self) -> list["Objective"]:
        """The Objective modules directly inside this one."""
        return [module for module in self.children() if isinstance(module, Objective)]

    def prepare(self, denoiser: nn.Module) -> None:
        """Called by the trainer once, before the optimizer exists: attach what the objective trains beside
        the denoiser (the energy objective's head). Default: prepare each part."""
        for part in self.parts():
            part.prepare(denoiser)

    @property
    def min_scorable_tokens(self) -> int:
        """The scorable (answer) tokens every training row needs (K for a K-block likelihood); the recipe
        refuses shorter rows before training. Default: the most any part needs, else 1."""
        return max((part.min_scorable_tokens for part in self.parts()), default=1)

    def checkpoint_block_forwards(self) -> bool:
        """Turn on activation checkpointing of the objective's own block forwards (the recipe's fallback for a
        model without gradient checkpointing of its own); returns whether there were any. Default: each
        part's (every part is asked)."""
        return any([part.checkpoint_block_forwards() for part in self.parts()])


def refuse_zero3_on_several_ranks(denoiser: nn.Module, objective: str, why: str) -> None:
    """An objective whose forward count per step differs between ranks (`why`) cannot run under ZeRO-3 on
    several ranks, where every forward gathers the weights collectively: the job would hang. Refuse it with
    the way out."""
    if world_size() > 1 and zero3_sharded(denoiser):
        raise ValueError(f"the {objective} objective does not run under ZeRO-3 on several ranks ({world_size()} "
                         f"here): {why} and ZeRO-3 forwards are collective. Use ds_configs/zero2.json (or "
                         "zero2_offload.json)")


def check_finite(loss: torch.Tensor, what: str, batch_ids: torch.Tensor) -> None:
    """Stop on a non-finite loss with enough context to find the batch that produced it.

    Under torch.distributed every rank stops together: the ranks all-reduce (MAX) a flag per rank
    and each raises, naming the rank(s) that saw the non-finite loss, instead of the other ranks
    waiting in the next gradient all-reduce until the timeout. Every rank must therefore call this
    the same number of times per step, which the objectives do (once per loss term on every rank).
    """
    finite = torch.isfinite(loss.detach()).all()  # [] bool, on the loss's device
    world = world_size()
    if world == 1:
        if not bool(finite):
            raise _not_finite(loss, what, batch_ids, where="")
        return
    rank, device = torch.distributed.get_rank(), collective_device(loss.device)
    seen = torch.zeros(world, device=device)  # [world] 1 at each rank whose loss is not finite
    seen[rank] = (~finite).float().to(device)
    torch.distributed.all_reduce(seen, op=torch.distributed.ReduceOp.MAX)
    bad_ranks = seen.nonzero().flatten().tolist()  # one sync, as the single-process check
    if not bad_ranks:
        return
    if rank in bad_ranks:
        others = [r for r in bad_ranks if r != rank]
        also = f" (and on rank(s) {others})" if others else ""
        raise _not_finite(loss, what, batch_ids, where=f" on rank {rank}{also}")
    raise FloatingPointError(
        f"{what} is not finite on rank(s) {bad_ranks}; rank {rank} (whose loss is finite) stops with them. "
        f"Rank {bad_ranks[0]}'s error names the batch."
    )


def _not_finite(loss: torch.Tensor, what: str, batch_ids: torch.Tensor, where: str) -> FloatingPointError:
    return FloatingPointError(
        f"{what} is not finite{where} ({loss.detach().flatten()[:4].tolist()}) on a batch of shape "
        f"{tuple(batch_ids.shape)} whose first row is {batch_ids[0].tolist()[:32]}; lower the learning rate, "
        "check the data for empty responses, or enable gradient clipping"
    )


def build_part(part: nn.Module | Mapping[str, Any] | None, cls: type, what: str, **defaults: Any) -> nn.Module:
    """An objective's sub-objective: a module as given, else `cls` built from a dict of its keyword
    arguments (None: its defaults); `defaults` fill what the dict leaves out (e.g. the parent's seed)."""
    if isinstance(part, nn.Module):
        return part
    if part is None or isinstance(part, Mapping):
        return cls(**{**defaults, **(part or {})})
    raise ValueError(f"{what} must be a {cls.__name__}, a dict of its keyword arguments, or None; "
                     f"got {type(part).__name__}")
