"""A score-function (REINFORCE) gradient for an order head: raise the decoder law's likelihood of the data.

    rollout = draw_orders(denoiser, batch, head, "learned:steps=3", samples=8, generator=g)
    loss = rollout.loss()            # backward: minus an unbiased estimate of grad E_order[log P_order(x)]

The `learned` decoder commits, at each step, the top-quota positions by the head's scores
(jointobj/decoding/policies.py), a choice with no gradient. While training, the order is drawn
instead from a Plackett-Luce law over the same scores: at step k the block S_k is the first quota_k
of a ranking drawn without replacement, P(r_1..r_q) = prod_t exp(s_{r_t}) / sum_{j still open} exp(s_j)
(Gumbel-top-q of the scores), the scores read at the teacher-forced state s_k (data on S_<k). The
reward of a drawn order is the data's decoder-law log-likelihood along it,
R = sum_k log p(x_{S_k} | s_k) (jointobj/decoding/decoder_law.py's `decoder_blocks` with the draw as its
choice), and

    grad E[R] = E[(R - b) grad log P(order)],   b = mean reward of the other draws of the same answer

(leave-one-out: b does not depend on the draw it multiplies, so the estimate stays unbiased; tested
against an exact enumeration of every order in tests/objectives/test_order_gradient.py). The head's
log-scale sets how sharply the draws follow the ranking; the decoder runs the ranking itself. The
denoiser is held fixed here (its forwards run without grad); training it for the learned order is the
decoder-order likelihood with `learned` in the orders (the head found on the model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from jointobj.decoding.decoder_law import DecoderOrder, decoder_blocks
from jointobj.diffusion.batch import Batch, check_batch
from jointobj.diffusion.randomness import gumbel_noise

__all__ = ["OrderRollout", "draw_block", "draw_orders", "plackett_luce_log_prob"]


def draw_block(scores: torch.Tensor, eligible: torch.Tensor, quota: torch.Tensor,
               generator: torch.Generator | None) -> torch.Tensor:
    """Plackett-Luce draw of each row's first quota positions: [a, n] scores, eligibility, [a] quota ->
    ranking [a, q] long (q = max quota; a row's slots past its quota are -1), by Gumbel-top-q."""
    noisy = scores.detach().double() + gumbel_noise(scores.shape, generator, scores.device)  # [a, n]
    noisy = noisy.masked_fill(~eligible, -torch.inf)
    q = int(quota.max())
    ranking = noisy.argsort(dim=1, descending=True)[:, :q]  # [a, q]
    slot = torch.arange(q, device=scores.device)  # [q]
    return ranking.masked_fill(slot >= quota[:, None], -1)


def plackett_luce_log_prob(scores: torch.Tensor, eligible: torch.Tensor, ranking: torch.Tensor) -> torch.Tensor:
    """log P(ranking's slots in that order) under Plackett-Luce over the eligible scores: [a] (grad flows to
    scores). ranking [a, q] long, -1 past a row's quota."""
    open_now = eligible.clone()  # [a, n]
    total = scores.new_zeros(scores.shape[0])  # [a]
    for t in range(ranking.shape[1]):
        pick = ranking[:, t]  # [a]
        taken = pick >= 0  # [a]
        at = pick.clamp(min=0)[:, None]  # [a, 1]
        normaliser = scores.masked_fill(~open_now, -torch.inf).logsumexp(1)  # [a]
        term = scores.gather(1, at).squeeze(1) - normaliser  # [a]
        total = total + torch.where(taken, term, torch.zeros_like(term))
        open_now = open_now.clone()
        open_now[taken, pick[taken]] = False
    return total


@dataclass
class OrderRollout:
    """Draws of orders for a batch: reward [r] float64 (data's log-likelihood along each draw), log_policy
    [r] (log P of each draw, with grad to the head), group [r] long (the answer each draw is of), samples."""

    reward: torch.Tensor
    log_policy: torch.Tensor
    group: torch.Tensor
    samples: int

    def advantage(self) -> torch.Tensor:
        """[r] reward minus the mean reward of the other draws of the same answer (leave-one-out)."""
        by_group = self.reward.view(-1, self.samples)  # [b, M] (draws of one answer are adjacent)
        others = (by_group.sum(1, keepdim=True) - by_group) / (self.samples - 1)  # [b, M]
        return (by_group - others).view(-1)

    def loss(self) -> torch.Tensor:
        """Scalar whose gradient is minus the estimate of grad E[R] per answer (minimise it)."""
        weight = self.advantage().to(self.log_policy.dtype)  # [r], no grad
        return -(weight * self.log_policy).sum() / len(self.reward)


def draw_orders(denoiser: Any, batch: Batch, head: torch.nn.Module, order: "str | DecoderOrder", *, samples: int = 8,
                generator: torch.Generator | None = None) -> OrderRollout:
    """`samples` Plackett-Luce orders per answer (>= 2, for the leave-one-out baseline) at the budget of
    `order` (a `learned` DecoderOrder or spec, e.g. "learned:steps=3"), the denoiser teacher-forced on
    the batch's answers. Cost: steps x forwards of b x samples rows, no grad through the denoiser."""
    order = DecoderOrder.parse(order)
    if order.policy_name != "learned":
        raise ValueError(f"draw_orders trains the order of the 'learned' decoder, got {order.policy_name!r}; write "
                         "e.g. 'learned:steps=3'")
    if samples < 2:
        raise ValueError(f"samples must be >= 2 (the baseline of a draw is the others' mean), got {samples}")
    scorable = check_batch(batch)  # [b, l]
    rows = torch.arange(scorable.shape[0], device=scorable.device).repeat_interleave(samples)  # [r]
    repeated = {key: value[rows] for key, value in batch.items() if isinstance(value, torch.Tensor)}
    pieces: list[tuple[torch.Tensor, torch.Tensor]] = []

    def choose(logits, eligible, quota, live):
        with torch.enable_grad():
            scores = head(logits, eligible)  # [a, n]
            ranking = draw_block(scores, eligible, quota, generator)  # [a, q]
            pieces.append((live, plackett_luce_log_prob(scores, eligible, ranking)))
        commit = torch.zeros_like(eligible)  # [a, n]
        taken = ranking >= 0
        commit[taken.nonzero()[:, 0], ranking[taken]] = True
        return commit

    _, reward = decoder_blocks(denoiser, repeated, scorable[rows], order, choose=choose)  # [r] float64
    log_policy = torch.zeros(len(rows), device=scorable.device)  # [r]
    for live, value in pieces:
        log_policy = log_policy.index_add(0, live, value.float())
    return OrderRollout(reward, log_policy, rows, samples)
