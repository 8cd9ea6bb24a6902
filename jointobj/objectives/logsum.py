"""Log-sum over orders: the likelihood of a mixture of generation orders.

    L = sum_b -log sum_m w_m exp(l_{o_m}(x_b))  /  #scorable tokens

with orders o_1..o_M drawn per sequence by an `OrderProposal` (default: l2r, r2l and two
random orders, w_m = 1/M) and l_o the K-block likelihood of `jointobj.diffusion.likelihood`. The
normaliser is TokenCELoss's, so the two are on one scale. Its gradient is
-sum_m r_m grad l_{o_m} with the posterior r = softmax(log w + l): the order the model already
does best gets most of it.

- mode="exact": autograd through logsumexp; each chunk of block forwards is checkpointed, so
  saved activations do not grow with M or K (one extra forward per chunk in backward).
- mode="sampled": l for all orders without grad, then one order per sequence drawn from r is
  re-run with grad. The loss value is still the exact one; its gradient -grad l_{o*} is an
  unbiased estimate of the exact gradient at about 1/M of the backward cost.

`self_condition_prob = p > 0`: with probability p per step every block forward reads the
model's own detached predictions for its masked positions as soft states (an extra forward
without grad per block row; see `jointobj.objectives.self_condition`). The states depend only on
the visible tokens, so l_o stays a normalised likelihood.

Naive reference: `naive_logsum_loss` in tests/test_logsum.py (per-order log-likelihoods by
`order_log_likelihood`, then a plain logsumexp) holds the loss and its gradient; the l_o it
reads has its own in tests/test_likelihood.py (`naive_l2r_chain_rule`, normalisation by
enumeration). Reading order: this file, then jointobj/diffusion/likelihood.py.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from jointobj.diffusion.batch import Batch, check_batch
from jointobj.diffusion.likelihood import score_orders
from jointobj.diffusion.orders import OrderProposal, Orders, check_orders, num_blocks
from jointobj.diffusion.randomness import multinomial
from jointobj.objectives.base import LOSSES, LossOutput, Objective, check_finite
from jointobj.objectives.self_condition import SelfConditioning
from jointobj.utils.checks import ALL, check_blocks, check_whole_number

MODES = ("exact", "sampled")


def logsum_nll(log_weights: torch.Tensor, loglik: torch.Tensor) -> torch.Tensor:
    """-log sum_m w_m exp(l_m) per sequence: [b, M], [b, M] -> [b]."""
    return -torch.logsumexp(log_weights + loglik, dim=-1)


def family_metrics(orders: Orders, loglik: torch.Tensor, posterior: torch.Tensor) -> dict[str, torch.Tensor]:
    """Detached per-family scalars: posterior mass (batch mean) and log-likelihood per token.

    A family with no order in this batch (possible under a mixture proposal) has posterior
    mass 0 and no `loglik_per_token_<family>` entry at all (a NaN would turn the trainer's
    averaged log line into NaN).
    """
    per_token = loglik.detach() / orders.lengths[:, None]  # [b, M]
    metrics = {}
    for f, name in enumerate(orders.names):
        mine = orders.family == f  # [b, M]
        metrics[f"posterior_{name}"] = (posterior * mine).sum(-1).mean()
        if mine.any():
            metrics[f"loglik_per_token_{name}"] = per_token[mine].mean()
    metrics["effective_orders"] = (1.0 / (posterior**2).sum(-1)).mean()  # 1 when r is one-hot, M when flat
    return metrics


@LOSSES.register("logsum")
class LogSumOrdersLoss(Objective):
    """`loss_fn(denoiser, batch, generator=None, orders=None) -> LossOutput`.

    orders: fixed family list (M = its length), or pass `mixture={family: q}` and `num_orders=M`.
    prior: family -> weight (default: the proposal, i.e. w_m = 1/M). blocks: K per order (a whole
    number, 1 <= K <= every row's scorable count) or "all" (K = n, exact any-order autoregressive).
    mode: "exact" or "sampled". max_rows: rows per forward (default: the batch size).
    checkpoint: checkpoint the grad forwards (default: True in exact mode, False in sampled mode,
    whose grad pass holds b*K rows of activations; turn it on there to bound memory too).
    self_condition_prob: probability per step of self-conditioned block forwards (0 = off).
    seed: seed of the generator that makes that choice, the same on every rank (the trainer passes --seed).
    """

    def __init__(
        self,
        orders: Sequence[str] | None = ("l2r", "r2l", "random", "random"),
        *,
        mixture: Mapping[str, float] | None = None,
        num_orders: int | None = None,
        prior: Mapping[str, float] | None = None,
        blocks: int | str = "all",
        mode: str = "exact",
        max_rows: int | None = None,
        checkpoint: bool | None = None,
        self_condition_prob: float = 0.0,
        seed: int = 0,
    ):
        super().__init__()
        self.proposal = OrderProposal(None if mixture is not None else orders, mixture=mixture,
                                      num_orders=num_orders, prior=prior)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.blocks, self.mode = check_blocks(blocks), mode
        self.max_rows = check_whole_number("max_rows (rows per forward)", max_rows, "the batch size")
        self.checkpoint = (mode == "exact") if checkpoint is None else bool(checkpoint)
        self.self_condition = SelfConditioning(self_condition_prob, seed=seed)

    @property
    def min_scorable_tokens(self) -> int:
        """The scorable tokens every row needs: K (each of the K blocks holds one or more)."""
        return 1 if self.blocks == ALL else self.blocks

    def checkpoint_block_forwards(self) -> bool:
        self.checkpoint = True
        return True

    def extra_repr(self) -> str:
        return f"{self.proposal}, blocks={self.blocks!r}, mode={self.mode!r}, max_rows={self.max_rows}"

    def _loglik(self, denoiser: nn.Module, batch: Batch, scorable: torch.Tensor, orders: Orders) -> torch.Tensor:
        return score_orders(denoiser, batch, scorable, orders, self.blocks, max_rows=self.max_rows,
                            checkpoint=self.checkpoint)  # [b, M]; batch and orders were checked in forward

    def forward(self, denoiser: nn.Module, batch: Batch, generator: torch.Generator | None = None,
                orders: Orders | None = None) -> LossOutput:
        """`orders` overrides the proposal (e.g. to score a fixed set); else they are drawn with `generator`."""
        scorable = check_batch(batch)  # [b, l]
        num_blocks(self.blocks, scorable.sum(-1))  # fail before any forward if K > n for some row
        if orders is None:
            orders = self.proposal.sample(scorable, generator)  # permutations by construction
        else:
            check_orders(orders.rank, scorable)
        num_tokens = scorable.sum()
        model = self.self_condition.wrap(denoiser, generator)  # the same choice for every forward of the step
        if self.mode == "exact":
            loglik = self._loglik(model, batch, scorable, orders)  # [b, M]
            nll = logsum_nll(orders.log_weights, loglik)  # [b]
            loss = nll.sum() / num_tokens
        else:
            with torch.no_grad():
                loglik = self._loglik(model, batch, scorable, orders)  # [b, M]
            nll = logsum_nll(orders.log_weights, loglik)  # [b]
            posterior = torch.softmax(orders.log_weights + loglik, dim=-1)  # [b, M]
            pick = multinomial(posterior, 1, generator).squeeze(-1)  # [b]
            drawn = self._loglik(model, batch, scorable, orders.select(pick))  # [b, 1], with grad
            surrogate = -drawn.sum() / num_tokens  # its gradient: -grad l_{o*}
            loss = nll.sum() / num_tokens + (surrogate - surrogate.detach())  # value: exact; gradient: sampled
        check_finite(loss, "logsum loss", batch["input_ids"])
        with torch.no_grad():
            posterior = torch.softmax(orders.log_weights + loglik, dim=-1)  # [b, M]
            metrics = family_metrics(orders, loglik, posterior)
        metrics.update(self.self_condition.metrics(model))
        return LossOutput(loss, metrics)
