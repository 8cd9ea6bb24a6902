"""Log-sum over orders: the likelihood of a mixture of generation orders.

    L = sum_b -log sum_m w_m exp(l_{o_m}(x_b))  /  #scorable tokens

with orders o_1..o_M drawn per sequence by an `OrderProposal` (default: l2r, r2l and two
random orders, w_m = 1/M) and l_o the K-block likelihood of `jointobj.diffusion.likelihood`. The
normaliser is TokenCELoss's, so the two are on one scale. Its gradient is
-sum_m r_m grad l_{o_m} with the posterior r = softmax(log w + l): the order the model already
does best gets most of it.

- mode="exact": autograd through logsumexp; each chunk of block forwards but the last is
  checkpointed, so saved activations do not grow with M or K (one extra forward per chunk but
  the last in backward; none when the rows fit one chunk of `max_rows`).
- mode="sampled": l for all orders without grad, then one order per sequence drawn from r is
  re-run with grad. The loss value is still the exact one; its gradient -grad l_{o*} is an
  unbiased estimate of the exact gradient at about 1/M of the backward cost.

Decoder-driven orders. An entry of `orders` written as a decoder ("confidence:tokens_per_step=2",
"threshold:threshold=0.7:steps=3", "entropy_bounded:bound=0.3:steps=2"; a policy name alone is one
token per step) is the order that decoder itself takes on the data at its budget
(jointobj/decoding/decoder_law.py): its blocks come from the policy at each teacher-forced state
(K forwards without grad), its tokens are scored without [MASK], and l_o is then exactly
log P_decoder(x). In exact mode, without self-conditioning and with no active dropout, that pass
runs with grad and is its own score (`decoder_scores`: K forwards per decoder order, not 2K) where
its activations fit what the block forwards would hold anyway (`fuse_passes`: checkpoint off, or
every row within one chunk of `max_rows`, as with the main job's 1024). Fixed families (l2r, r2l,
random) keep `blocks` and the whole-vocabulary softmax; the two scales differ by sum log(1 -
p([MASK])), about 0 for a trained model. With decoder orders the order set is fixed and every weight
is 1/M (no `mixture`, no `prior`).

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

import math
from typing import Mapping, Sequence

import torch
from torch import nn

from jointobj.decoding.decoder_law import DecoderOrder, decoder_blocks, decoder_scores, fuse_passes
from jointobj.decoding.policies import POLICIES
from jointobj.diffusion.batch import Batch, check_batch
from jointobj.diffusion.likelihood import check_loglik, score_blocks
from jointobj.diffusion.orders import ORDERS, OrderProposal, Orders, block_index, check_orders, num_blocks
from jointobj.diffusion.randomness import multinomial
from jointobj.objectives.base import LOSSES, LossOutput, Objective, check_finite
from jointobj.objectives.self_condition import SelfConditioning
from jointobj.utils.checks import ALL, check_blocks, check_whole_number

MODES = ("exact", "sampled")


def logsum_nll(log_weights: torch.Tensor, loglik: torch.Tensor) -> torch.Tensor:
    """-log sum_m w_m exp(l_m) per sequence: [b, M], [b, M] -> [b]."""
    return -torch.logsumexp(log_weights + loglik, dim=-1)


def family_metrics(orders: Orders | None, loglik: torch.Tensor, posterior: torch.Tensor,
                   decoder_orders: Sequence[DecoderOrder] = (), lengths: torch.Tensor | None = None
                   ) -> dict[str, torch.Tensor]:
    """Detached per-family scalars: posterior mass (batch mean) and log-likelihood per token.

    A family with no order in this batch (possible under a mixture proposal) has posterior
    mass 0 and no `loglik_per_token_<family>` entry at all (a NaN would turn the trainer's
    averaged log line into NaN). Decoder orders (the last columns) are families of their own,
    named by their spec.
    """
    lengths = orders.lengths if lengths is None else lengths  # [b]
    per_token = loglik.detach() / lengths[:, None]  # [b, M]
    metrics = {}
    fixed = 0 if orders is None else orders.num_orders
    if orders is not None:
        for f, name in enumerate(orders.names):
            mine = orders.family == f  # [b, Mf]
            metrics[f"posterior_{name}"] = (posterior[:, :fixed] * mine).sum(-1).mean()
            if mine.any():
                metrics[f"loglik_per_token_{name}"] = per_token[:, :fixed][mine].mean()
    for d, order in enumerate(decoder_orders):
        metrics[f"posterior_{order}"] = posterior[:, fixed + d].mean()
        metrics[f"loglik_per_token_{order}"] = per_token[:, fixed + d].mean()
    metrics["effective_orders"] = (1.0 / (posterior**2).sum(-1)).mean()  # 1 when r is one-hot, M when flat
    return metrics


def split_orders(orders: Sequence[str] | None) -> tuple[list[str], list[DecoderOrder]]:
    """An order list -> (fixed families, decoder orders): an entry with options (':') or a decoding
    policy's name that is no fixed family is a decoder order; "l2r" alone stays the fixed family."""
    if orders is None:
        return [], []
    if isinstance(orders, str) or len(orders) < 1:
        raise ValueError(f"orders must be a non-empty list of order families (M >= 1), e.g. ['l2r', 'r2l', "
                         f"'random'] or ['confidence:tokens_per_step=2', 'l2r'], got {orders!r}")
    fixed, decoders = [], []
    for entry in orders:
        if isinstance(entry, DecoderOrder) or ":" in entry or entry in POLICIES and entry not in ORDERS:
            decoders.append(DecoderOrder.parse(entry))
        elif entry in ORDERS:
            fixed.append(entry)
        else:
            raise ValueError(f"unknown order {entry!r}; known: {', '.join(ORDERS.names())} (fixed families) or a "
                             f"decoder, {', '.join(POLICIES.names())}, written as 'confidence:tokens_per_step=2'")
    return fixed, decoders


def order_log_weights(orders: Orders | None, num_decoder_orders: int, block: torch.Tensor) -> torch.Tensor:
    """[b, M] log w: the proposal's weights for the fixed orders, and with decoder orders (a fixed list
    of M slots) log(1/M) for every slot."""
    if num_decoder_orders == 0:
        return orders.log_weights
    return torch.full(block.shape[:2], -math.log(block.shape[1]), device=block.device)


@LOSSES.register("logsum")
class LogSumOrdersLoss(Objective):
    """`loss_fn(denoiser, batch, generator=None, orders=None) -> LossOutput`.

    orders: fixed family list (M = its length), decoder orders among them ("confidence:steps=2"; module
    doc), or pass `mixture={family: q}` and `num_orders=M`.
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
        fixed, self.decoder_orders = split_orders(orders if mixture is None else None)
        if self.decoder_orders and (mixture is not None or prior is not None):
            raise ValueError(f"decoder orders {[str(o) for o in self.decoder_orders]} go in a fixed order list with "
                             "weights 1/M; drop `mixture` / `prior`")
        self.proposal = None if not fixed and mixture is None else OrderProposal(
            fixed if mixture is None else None, mixture=mixture, num_orders=num_orders, prior=prior)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.blocks, self.mode = check_blocks(blocks), mode
        self.max_rows = check_whole_number("max_rows (rows per forward)", max_rows, "the batch size")
        self.checkpoint = (mode == "exact") if checkpoint is None else bool(checkpoint)
        self.self_condition = SelfConditioning(self_condition_prob, seed=seed)

    @property
    def min_scorable_tokens(self) -> int:
        """The scorable tokens every row needs: K of the fixed orders (each of the K blocks holds one or more)."""
        return 1 if self.blocks == ALL or self.proposal is None else self.blocks

    def checkpoint_block_forwards(self) -> bool:
        self.checkpoint = True
        return True

    def extra_repr(self) -> str:
        decoders = f", decoder_orders={[str(o) for o in self.decoder_orders]}" if self.decoder_orders else ""
        return f"{self.proposal}{decoders}, blocks={self.blocks!r}, mode={self.mode!r}, max_rows={self.max_rows}"

    def _blocks(self, denoiser: nn.Module, batch: Batch, scorable: torch.Tensor,
                orders: Orders | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(block [b, M, l] of every order, fixed ones then decoder ones; exclude_mask [b, M]: the
        decoder orders, scored without [MASK])."""
        fixed = None if orders is None else block_index(orders.rank, scorable.sum(-1), self.blocks)  # [b, Mf, l]
        return self._stacked(fixed, [decoder_blocks(denoiser, batch, scorable, order)[0]
                                     for order in self.decoder_orders])

    @staticmethod
    def _stacked(fixed: torch.Tensor | None, decoded: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The fixed orders' blocks [b, Mf, l] (or None) and each decoder order's [b, l] -> (block [b, M, l],
        exclude_mask [b, M]: True on the decoder orders)."""
        block = torch.cat(([] if fixed is None else [fixed]) + [b[:, None] for b in decoded], 1)  # [b, M, l]
        exclude = torch.zeros(block.shape[:2], dtype=torch.bool, device=block.device)  # [b, M]
        exclude[:, block.shape[1] - len(decoded):] = True
        return block, exclude

    def _fused(self, model: nn.Module, denoiser: nn.Module, batch: Batch, scorable: torch.Tensor,
               orders: Orders | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """Exact mode, decoder orders, no self-conditioning this step: their passes run with grad and are
        their own scores (`decoder_scores`: K forwards per order instead of 2K, or K and one of K*b rows),
        where `fuse_passes` allows it at no more memory. (block [b, M, l], exclude [b, M], loglik [b, M]) or None."""
        if self.mode != "exact" or not self.decoder_orders or model is not denoiser:
            return None
        fixed = None if orders is None else block_index(orders.rank, scorable.sum(-1), self.blocks)  # [b, Mf, l]
        other_rows = 0 if fixed is None else int((fixed.amax(-1) + 1).sum())
        if not fuse_passes(denoiser, scorable, self.decoder_orders, max_rows=self.max_rows,
                           checkpoint=self.checkpoint, other_rows=other_rows):
            return None
        passes = [decoder_scores(denoiser, batch, scorable, order) for order in self.decoder_orders]
        block, exclude = self._stacked(fixed, [b for b, _ in passes])  # [b, M, l], [b, M]
        decoded = torch.stack([score for _, score in passes], 1)  # [b, D]
        if fixed is not None:
            decoded = torch.cat([self._loglik(denoiser, batch, fixed, exclude[:, : fixed.shape[1]]), decoded], 1)
        check_loglik(decoded, batch["input_ids"])
        return block, exclude, decoded

    def _loglik(self, denoiser: nn.Module, batch: Batch, block: torch.Tensor, exclude: torch.Tensor) -> torch.Tensor:
        return score_blocks(denoiser, batch, block, exclude_mask=exclude, max_rows=self.max_rows,
                            checkpoint=self.checkpoint)  # [b, M]; batch and orders were checked in forward

    def forward(self, denoiser: nn.Module, batch: Batch, generator: torch.Generator | None = None,
                orders: Orders | None = None) -> LossOutput:
        """`orders` overrides the proposal (e.g. to score a fixed set); else they are drawn with `generator`."""
        scorable = check_batch(batch)  # [b, l]
        if self.proposal is not None:
            num_blocks(self.blocks, scorable.sum(-1))  # fail before any forward if K > n for some row
            if orders is None:
                orders = self.proposal.sample(scorable, generator)  # permutations by construction
            else:
                check_orders(orders.rank, scorable)
        model = self.self_condition.wrap(denoiser, generator)  # the same choice for every forward of the step
        fused = self._fused(model, denoiser, batch, scorable, orders)  # (block, exclude, loglik) or None
        block, exclude = self._blocks(denoiser, batch, scorable, orders) if fused is None else fused[:2]
        log_weights = order_log_weights(orders, len(self.decoder_orders), block)  # [b, M]
        num_tokens = scorable.sum()
        if self.mode == "exact":
            loglik = self._loglik(model, batch, block, exclude) if fused is None else fused[2]  # [b, M]
            nll = logsum_nll(log_weights, loglik)  # [b]
            loss = nll.sum() / num_tokens
        else:
            with torch.no_grad():
                loglik = self._loglik(model, batch, block, exclude)  # [b, M]
            nll = logsum_nll(log_weights, loglik)  # [b]
            posterior = torch.softmax(log_weights + loglik, dim=-1)  # [b, M]
            pick = multinomial(posterior, 1, generator).squeeze(-1)  # [b]
            rows = torch.arange(len(pick), device=pick.device)
            drawn = self._loglik(model, batch, block[rows, pick][:, None], exclude[rows, pick][:, None])  # [b, 1]
            surrogate = -drawn.sum() / num_tokens  # its gradient: -grad l_{o*}
            loss = nll.sum() / num_tokens + (surrogate - surrogate.detach())  # value: exact; gradient: sampled
        check_finite(loss, "logsum loss", batch["input_ids"])
        with torch.no_grad():
            posterior = torch.softmax(log_weights + loglik, dim=-1)  # [b, M]
            metrics = family_metrics(orders, loglik, posterior, self.decoder_orders, scorable.sum(-1))
        metrics.update(self.self_condition.metrics(model))
        return LossOutput(loss, metrics)
