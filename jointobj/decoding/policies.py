"""Unmasking policies: which masked positions a parallel sampler commits at a step.

    policy = POLICIES.get("confidence")()                 # ConfidenceTopK
    commit = policy.select(logits, eligible, quota, generator)   # [b, L] bool

Every policy ranks the eligible positions by a score (higher commits first) and commits a
prefix of that ranking:

- *top-k* policies (`RandomTopK`, `LeftToRightTopK`, `ConfidenceTopK`, `MarginTopK`,
  `EntropyTopK`) commit exactly `quota[b]` positions per row; the sampler sets the quota
  from the tokens-per-step budget;
- the *learned* policy (`LearnedOrder`) commits the top `quota[b]` by a trained order head's
  score of the same state (jointobj/model/order_head.py), so it is state-determined too;
- *adaptive* policies (`ConfidenceThreshold`, `EntropyBounded`) decide how many to commit
  from the step's distributions; `quota[b]` is then a floor (the sampler's step budget),
  and at least one position is always committed.

Scores are read from the model's own distribution softmax(logits) at temperature 1 (as
LLaDA does), never from the sampled token, so a policy's choice at a step does not depend
on that step's sampling noise (it does depend, through the logits, on tokens committed
earlier). Ties are broken towards the lower position (stable sort), deterministically.
"""

from __future__ import annotations

from typing import ClassVar, Sequence

import torch

from jointobj.diffusion.randomness import uniform
from jointobj.model.order_head import OrderHead, find_order_head
from jointobj.utils.registry import Registry

__all__ = [
    "POLICIES",
    "ConfidenceThreshold",
    "ConfidenceTopK",
    "EntropyBounded",
    "EntropyTopK",
    "LearnedOrder",
    "LeftToRightTopK",
    "MarginTopK",
    "PlannedOrder",
    "RandomTopK",
    "UnmaskingPolicy",
    "max_probability",
    "token_entropy",
]

POLICIES: Registry[type] = Registry("unmasking policy")


# ---------------------------------------------------------------- per-position statistics


def max_probability(logits: torch.Tensor) -> torch.Tensor:
    """[b, L, V] logits -> [b, L] max_v softmax(logits)_v (the 'confidence')."""
    return logits.softmax(-1).amax(-1)  # [b, L] (CPU logsumexp is several times slower)


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """[b, L, V] logits -> [b, L] entropy of softmax(logits) in nats; zero-probability tokens add 0."""
    return torch.special.entr(logits.softmax(-1)).sum(-1)  # [b, L]; entr(p) = -p log p, entr(0) = 0


def _ranks(scores: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
    """[b, L] scores, eligibility -> [b, L] long rank of each position (0 = commit first);
    ineligible positions rank after every eligible one."""
    scores = scores.masked_fill(~eligible, -torch.inf)
    order = scores.argsort(dim=1, descending=True, stable=True)  # [b, L]
    positions = torch.arange(scores.shape[1], device=scores.device).expand_as(order)  # [b, L]
    return torch.empty_like(order).scatter_(1, order, positions)  # [b, L]


# ---------------------------------------------------------------- interface


class UnmaskingPolicy:
    """Base class: rank eligible positions by `scores`, commit the first `count` of them.

    `select(logits [b, L, V] float32, eligible [b, L] bool, quota [b] long, generator) -> [b, L] bool`.
    `logits` are the step's logits over the generated positions (the sampler has already
    ruled out the mask token). The sampler guarantees 1 <= quota <= eligible.sum(1).
    """

    name: ClassVar[str]
    adaptive: ClassVar[bool] = False  # True: the policy picks how many; quota is only a floor

    def scores(self, logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """[b, L, V] -> [b, L] float, higher = commit earlier."""
        raise NotImplementedError

    def for_denoiser(self, denoiser: object) -> "UnmaskingPolicy":
        """The policy as it runs on `denoiser` (every decoding loop and the decoder law call this once
        before their first step): itself, unless it reads something the model carries (`learned`)."""
        return self

    def count(self, logits: torch.Tensor, scores: torch.Tensor, ranks: torch.Tensor,
              eligible: torch.Tensor) -> torch.Tensor:
        """Adaptive policies: [b] long, how many top-ranked positions they want (>= 1)."""
        raise NotImplementedError

    def select(self, logits: torch.Tensor, eligible: torch.Tensor, quota: torch.Tensor,
               generator: torch.Generator | None = None) -> torch.Tensor:
        scores = self.scores(logits, generator)  # [b, L]
        ranks = _ranks(scores, eligible)  # [b, L]
        take = quota
        if self.adaptive:
            take = torch.maximum(quota, self.count(logits, scores, ranks, eligible))  # [b]
        return (ranks < take[:, None]) & eligible  # [b, L]

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({options})"


# ---------------------------------------------------------------- top-k policies


@POLICIES.register("random")
class RandomTopK(UnmaskingPolicy):
    """K positions uniformly at random among the eligible ones (MDLM / LLaDA 'random')."""

    name = "random"

    def scores(self, logits, generator):
        return uniform(logits.shape[:2], generator, logits.device)  # [b, L] float64: no ties to break


@POLICIES.register("l2r")
class LeftToRightTopK(UnmaskingPolicy):
    """The K leftmost eligible positions (autoregressive order when K = 1)."""

    name = "l2r"

    def scores(self, logits, generator):
        b, length, _ = logits.shape
        return -torch.arange(length, device=logits.device, dtype=torch.float32).expand(b, length)  # [b, L]


@POLICIES.register("confidence")
class ConfidenceTopK(UnmaskingPolicy):
    """The K positions with the highest max probability (LLaDA 'low_confidence' remasking)."""

    name = "confidence"

    def scores(self, logits, generator):
        return max_probability(logits)  # [b, L]


@POLICIES.register("margin")
class MarginTopK(UnmaskingPolicy):
    """The K positions with the largest gap between the top two probabilities."""

    name = "margin"

    def scores(self, logits, generator):
        top2 = logits.softmax(-1).topk(2, dim=-1).values  # [b, L, 2]
        return top2[..., 0] - top2[..., 1]  # [b, L]


@POLICIES.register("entropy")
class EntropyTopK(UnmaskingPolicy):
    """The K positions with the lowest entropy."""

    name = "entropy"

    def scores(self, logits, generator):
        return -token_entropy(logits)  # [b, L]


@POLICIES.register("planned")
class PlannedOrder(UnmaskingPolicy):
    """A fixed order of the answer's positions, K at a time: `order` lists answer positions (0-based)
    first to last, as a sequence or text "4-0-2" (positions not listed follow, left to right). The
    order a plan chose (jointobj.decoding.decoder_law.plan_order: the candidate whose decoder law gives
    the data the highest likelihood at the budget), so that coupled positions land in different steps."""

    name = "planned"

    def __init__(self, order: "str | Sequence[int]" = ""):
        if isinstance(order, int):  # "order=5" parses as a number
            order = [order]
        positions = [int(p) for p in order.split("-") if p.strip()] if isinstance(order, str) else list(order)
        if any(p < 0 for p in positions) or len(set(positions)) != len(positions):
            raise ValueError(f"order must list distinct answer positions >= 0, e.g. '4-0-2', got {order!r}")
        self.order = "-".join(map(str, positions))
        self._positions = positions

    def scores(self, logits, generator):
        b, length, _ = logits.shape
        rank = torch.arange(length, dtype=torch.float32, device=logits.device) + length  # unlisted: after, l2r
        listed = torch.tensor([p for p in self._positions if p < length], dtype=torch.long, device=logits.device)
        rank[listed] = torch.arange(len(listed), dtype=torch.float32, device=logits.device)
        return (-rank).expand(b, length)  # [b, L]

    def __repr__(self) -> str:
        return f"PlannedOrder(order={self.order!r})"


@POLICIES.register("learned")
class LearnedOrder(UnmaskingPolicy):
    """The K positions an order head scores highest at the current state (jointobj/model/order_head.py;
    trained by jointobj/training/order_head.py). The head reads only the state's logits and which
    positions are eligible, so the choice is state-determined, ties to the lower position.

    `head`: an OrderHead, or None for the one the denoiser carries (`for_denoiser`). Without either it
    ranks as an untrained head does: exactly as `confidence`."""

    name = "learned"

    def __init__(self, head: OrderHead | None = None):
        if head is not None and not isinstance(head, OrderHead):
            raise ValueError(f"head must be an OrderHead (jointobj.model.order_head.attach_order_head), got "
                             f"{type(head).__name__}")
        self.head = head

    def for_denoiser(self, denoiser):
        if self.head is not None:
            return self
        head = find_order_head(denoiser)
        return self if head is None else LearnedOrder(head)

    def scores(self, logits, generator):
        raise NotImplementedError("LearnedOrder scores need the eligible positions: call select")

    def select(self, logits, eligible, quota, generator=None):
        if self.head is None:
            scores = max_probability(logits)  # [b, L], what a fresh head ranks by
        else:
            with torch.no_grad():
                scores = self.head(logits, eligible)  # [b, L]
        return (_ranks(scores, eligible) < quota[:, None]) & eligible  # [b, L]

    def __repr__(self) -> str:
        return "LearnedOrder(head=None)" if self.head is None else f"LearnedOrder(head={self.head.settings()})"


# ---------------------------------------------------------------- adaptive policies


@POLICIES.register("threshold")
class ConfidenceThreshold(UnmaskingPolicy):
    """Every eligible position whose max probability exceeds `threshold`, and always at least
    the single most confident one (Fast-dLLM's parallel decoding rule). threshold = 1 commits
    one position per step (nothing exceeds 1)."""

    name = "threshold"
    adaptive = True

    def __init__(self, threshold: float = 0.9):
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must lie in (0, 1], got {threshold}; Fast-dLLM uses 0.9")
        self.threshold = float(threshold)

    def scores(self, logits, generator):
        return max_probability(logits)  # [b, L]

    def count(self, logits, scores, ranks, eligible):
        above = (scores > self.threshold) & eligible  # [b, L]; ranked first, being the most confident
        return above.sum(1).clamp(min=1)  # [b]


@POLICIES.register("entropy_bounded")
class EntropyBounded(UnmaskingPolicy):
    """The most confident positions, in order, while their summed entropy stays <= `bound`
    nats; at least one (the most confident) even when its entropy alone exceeds the bound.
    After the EB-sampler (Ben-Hamu et al., 2025)."""

    name = "entropy_bounded"
    adaptive = True

    def __init__(self, bound: float = 0.1):
        if not bound >= 0.0:
            raise ValueError(f"bound must be a non-negative number of nats, got {bound}; try 0.1")
        self.bound = float(bound)

    def scores(self, logits, generator):
        return max_probability(logits)  # [b, L]

    def count(self, logits, scores, ranks, eligible):
        entropy = token_entropy(logits).masked_fill(~eligible, 0.0)  # [b, L]
        in_rank_order = torch.zeros_like(entropy).scatter_(1, ranks, entropy)  # [b, L]: slot r = rank-r entropy
        summed = in_rank_order.cumsum(1)  # [b, L]
        slot = torch.arange(entropy.shape[1], device=entropy.device)  # [L]
        within = (summed <= self.bound) & (slot < eligible.sum(1, keepdim=True))  # [b, L], a prefix per row
        return within.sum(1).clamp(min=1)  # [b]
