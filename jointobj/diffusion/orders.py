"""Generation orders over the scorable positions, their importance weights, and their K blocks.

    from jointobj.diffusion.orders import OrderProposal
    proposal = OrderProposal(["l2r", "r2l", "random", "random"])     # a fixed set: M = 4
    orders = proposal.sample(scorable, generator)                    # Orders, rank [b, 4, l]
    blocks = block_index(orders.rank, orders.lengths, 4)             # [b, 4, l] block of each position

An order is a permutation of one row's *scorable* positions (real tokens outside the prompt);
rows with different scorable counts n_b live in one tensor as ranks:

    rank[b, m, i] = the step (0 .. n_b - 1) at which order m generates position i of row b,
                    -1 where position i is prompt or padding (never generated, never scored).

Ranks make the block likelihood a comparison (`block < k` is visible, `block == k` is scored)
with no gather of ragged permutations. An order belongs to a *family* (`ORDERS`: l2r, r2l,
random); the weights of the log-sum objective are set per family:

    w_m = pi(f_m) / (M q(f_m))      pi: prior over families, q: proposal over families

An order set drawn this way estimates the mixture likelihood sum_f pi(f) E_{o ~ f}[p_o(x)]
without bias. A fixed set such as [l2r, r2l, random, random] is the stratified case with
q(f) = (slots of f) / M, so with the default prior pi = q every weight is 1/M.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch

from jointobj.diffusion.randomness import multinomial, uniform
from jointobj.utils.checks import ALL, check_blocks, check_whole_number
from jointobj.utils.registry import Registry

OrderSampler = Callable[[torch.Tensor, "torch.Generator | None"], torch.Tensor]
ORDERS: Registry[OrderSampler] = Registry("generation order")


def _lengths(scorable: torch.Tensor) -> torch.Tensor:
    return scorable.sum(dim=-1)  # [b]


@ORDERS.register("l2r")
def left_to_right(scorable: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """scorable [b, l] bool -> rank [b, l]: scorable positions generated left to right."""
    rank = scorable.long().cumsum(dim=-1) - 1  # [b, l]
    return torch.where(scorable, rank, -1)


@ORDERS.register("r2l")
def right_to_left(scorable: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """scorable [b, l] bool -> rank [b, l]: scorable positions generated right to left."""
    rank = _lengths(scorable)[:, None] - scorable.long().cumsum(dim=-1)  # [b, l]
    return torch.where(scorable, rank, -1)


@ORDERS.register("random")
def uniform_random(scorable: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """scorable [b, l] bool -> rank [b, l]: a uniformly random permutation of each row's scorable positions."""
    # float64 keys: float32 ones tie about once in 500 rows of 256 positions, and a tie breaks by
    # position, so the permutation would not be quite uniform.
    keys = uniform(scorable.shape, generator, scorable.device, torch.float64)  # [b, l]
    keys = keys.masked_fill(~scorable, math.inf)  # non-scorable positions sort last
    rank = keys.argsort(dim=-1).argsort(dim=-1)  # [b, l]
    return torch.where(scorable, rank, -1)


@dataclass
class Orders:
    """M orders per row of a batch, with their families and importance weights.

    rank          [b, M, l] long   generation step of each position, -1 off the scorable positions
    family        [b, M] long      index into `names`
    names         tuple[str]       family names (keys of ORDERS)
    log_prior     [b, M] float     log pi(family)
    log_proposal  [b, M] float     log q(family)
    """

    rank: torch.Tensor
    family: torch.Tensor
    names: tuple[str, ...]
    log_prior: torch.Tensor
    log_proposal: torch.Tensor

    @property
    def num_orders(self) -> int:
        return self.rank.shape[1]

    @property
    def lengths(self) -> torch.Tensor:
        """[b] long: scorable positions per row (n_b)."""
        return (self.rank[:, 0] >= 0).sum(dim=-1)

    @property
    def log_weights(self) -> torch.Tensor:
        """[b, M] log w_m = log pi - log q - log M."""
        return self.log_prior - self.log_proposal - math.log(self.num_orders)

    def select(self, index: torch.Tensor) -> "Orders":
        """index [b] long -> the one order index[b] of each row, as Orders with M = 1."""
        rows = torch.arange(len(index), device=index.device)
        pick = lambda t: t[rows, index][:, None]  # noqa: E731  [b, 1, ...]
        return Orders(pick(self.rank), pick(self.family), self.names, pick(self.log_prior), pick(self.log_proposal))


def check_orders(rank: torch.Tensor, scorable: torch.Tensor) -> None:
    """Every rank[b, m] must be a permutation of 0 .. n_b - 1 on row b's scorable positions, -1 elsewhere."""
    if rank.dim() != 3 or rank.shape[0] != scorable.shape[0] or rank.shape[2] != scorable.shape[1]:
        raise ValueError(f"orders have rank shape {tuple(rank.shape)}; expected [batch, M, length] with "
                         f"batch and length of the scorable mask {tuple(scorable.shape)}")
    length = scorable.shape[1]
    on = scorable[:, None, :].expand_as(rank)  # [b, M, l]
    steps = torch.arange(length, device=rank.device)  # [l]
    got = torch.where(on, rank, length).sort(dim=-1).values  # [b, M, l]
    want = torch.where(steps < scorable.sum(-1)[:, None, None], steps, length)  # [b, 1, l]
    bad = ((got != want) | (on != (rank >= 0)) | ((rank < 0) & (rank != -1))).any(dim=-1)  # [b, M]
    if bad.any():
        b, m = bad.nonzero()[0].tolist()
        raise ValueError(f"order {m} of batch row {b} is not a permutation of the row's scorable positions "
                         f"(ranks {rank[b, m].tolist()}); build orders with OrderProposal or the ORDERS samplers")


def num_blocks(blocks: int | str, lengths: torch.Tensor) -> torch.Tensor:
    """K per row, [b] long: `blocks` itself, or n_b for "all" (exact any-order autoregressive)."""
    blocks = check_blocks(blocks)
    if blocks == ALL:
        return lengths.clone()
    short = (lengths < blocks).nonzero().flatten().tolist()
    if short:
        raise ValueError(f"blocks={blocks} must lie in 1..n for every row, where n is the row's scorable count; "
                         f"rows {short} have only {lengths[short].tolist()} scorable positions. Lower blocks, "
                         "or use blocks='all' for one position per block")
    return torch.full_like(lengths, blocks)


def block_index(rank: torch.Tensor, lengths: torch.Tensor, blocks: int | str) -> torch.Tensor:
    """rank [b, M, l], lengths [b] -> block [b, M, l] long: the step k at which a K-step sampler
    that follows the order commits each position, -1 off the scorable positions.

    The cut is the hard sampler's (`UnmaskingSampler`: at each step ceil(left / steps left)
    tokens, LLaDA's even spread), so that the K-block likelihood is the likelihood of that
    sampler: with n = q K + r, the first r blocks hold q + 1 positions and the other K - r
    hold q (n=10, K=4: 3, 3, 2, 2). Blocks are contiguous along the order, differ in size by
    at most one, and none is empty when K <= n.
    """
    k = num_blocks(blocks, lengths).clamp(min=1)[:, None, None]  # [b, 1, 1]
    n = lengths[:, None, None]  # [b, 1, 1]
    small = (n // k).clamp(min=1)  # [b, 1, 1] q; rows with n = 0 have no rank >= 0
    large = n % k  # [b, 1, 1] r blocks of q + 1
    head = large * (small + 1)  # [b, 1, 1] ranks held by the r larger blocks
    block = torch.where(rank < head, rank // (small + 1), large + (rank - head) // small)  # [b, M, l]
    return torch.where(rank >= 0, block, -1)


def _distribution(weights: Mapping[str, float], what: str) -> dict[str, float]:
    if not weights:
        raise ValueError(f"{what} is empty; give at least one order family with a positive weight")
    for name, weight in weights.items():
        ORDERS.get(name)  # unknown names list the known ones
        if not weight >= 0 or math.isinf(weight):
            raise ValueError(f"{what} weight of {name!r} is {weight}; weights must be finite and >= 0")
    total = sum(weights.values())
    if total <= 0:
        raise ValueError(f"{what} weights sum to 0; give some family a positive weight")
    return {name: weight / total for name, weight in weights.items() if weight > 0}


class OrderProposal:
    """Draws M orders per row, with importance weights.

    Either a fixed (stratified) set, `OrderProposal(["l2r", "r2l", "random", "random"])`, or a
    mixture drawn independently per row and slot, `OrderProposal(mixture={"l2r": .25, "random": .75},
    num_orders=4)`. `prior` (family -> weight, normalised) defaults to the proposal itself, which
    makes every weight 1/M; it must give mass to exactly the families the proposal draws.
    """

    def __init__(self, orders: Sequence[str] | None = ("l2r", "r2l", "random", "random"), *,
                 mixture: Mapping[str, float] | None = None, num_orders: int | None = None,
                 prior: Mapping[str, float] | None = None):
        if mixture is not None:
            num_orders = check_whole_number("num_orders M (orders per sequence of a mixture proposal)", num_orders)
            self.slots = None
            self.proposal = _distribution(mixture, "mixture")
            self.num_orders = num_orders
        else:
            if isinstance(orders, str) or orders is None or len(orders) < 1:
                raise ValueError(f"orders must be a non-empty list of family names (M >= 1), e.g. "
                                 f"['l2r', 'r2l', 'random'], got {orders!r}; known: {', '.join(ORDERS.names())}")
            for name in orders:
                ORDERS.get(name)
            self.slots = list(orders)
            self.proposal = {name: self.slots.count(name) / len(self.slots) for name in dict.fromkeys(self.slots)}
            self.num_orders = len(self.slots)
        self.prior = self.proposal if prior is None else _distribution(prior, "prior")
        if set(self.prior) != set(self.proposal):
            raise ValueError(f"the prior gives mass to {sorted(self.prior)} but the proposal draws "
                             f"{sorted(self.proposal)}; they must match (a family the proposal never draws cannot be "
                             "estimated, and one the prior ignores would only waste forwards)")
        self.names = tuple(self.proposal)

    def __repr__(self) -> str:
        mixture = f"mixture={self.proposal}, num_orders={self.num_orders}"
        what = f"orders={self.slots}" if self.slots is not None else mixture
        return f"OrderProposal({what}, prior={self.prior})"

    def sample(self, scorable: torch.Tensor, generator: torch.Generator | None = None) -> Orders:
        """scorable [b, l] bool -> Orders with rank [b, M, l]."""
        batch, device = scorable.shape[0], scorable.device
        if self.slots is not None:
            family = torch.tensor([self.names.index(s) for s in self.slots], device=device).expand(batch, -1)  # [b, M]
        else:
            q = torch.tensor([self.proposal[n] for n in self.names], device=device)  # [F]
            family = multinomial(q.expand(batch, -1), self.num_orders, generator, replacement=True)  # [b, M]
        rank = torch.full((batch, self.num_orders, scorable.shape[1]), -1, dtype=torch.long, device=device)
        for f, name in enumerate(self.names):
            for m in (family == f).any(dim=0).nonzero().flatten().tolist():  # slots where some row uses f
                drawn = ORDERS.get(name)(scorable, generator)  # [b, l]
                rank[:, m] = torch.where((family[:, m] == f)[:, None], drawn, rank[:, m])
        log_q = torch.tensor([math.log(self.proposal[n]) for n in self.names], device=device)  # [F]
        log_pi = torch.tensor([math.log(self.prior[n]) for n in self.names], device=device)  # [F]
        return Orders(rank, family, self.names, log_pi[family], log_q[family])
