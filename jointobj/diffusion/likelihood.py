"""The any-order K-block log-likelihood l_o(x): the one place jointobj computes it.

    l_o(x) = sum_k sum_{i in B_k} log p(x_i | x_{B_<k} visible, the rest of the scorable positions masked)

One forward per (row, order, block); all b*M*K forwards of a batch form one big batch, run
in chunks of at most `max_rows` rows so memory stays bounded. Prompt tokens are always
visible, padding is left as it is (and the attention mask repeated), and only the positions
of block k are read from the forward of block k. K = n (blocks="all") is the exact
any-order autoregressive likelihood; smaller K is the likelihood of the K-step parallel
sampler that follows the order: the blocks are cut as `UnmaskingSampler` commits
(`jointobj.diffusion.orders.block_index`: the first n mod K blocks one position longer). Either way
sum_x exp(l_o(x)) = 1.

    loglik = order_log_likelihood(denoiser, batch, orders, blocks=4, max_rows=64)   # [b, M]

Normalisation. p(x_i | ...) is the softmax over the *whole* vocabulary, [MASK] included:
the model's conditional as TokenCELoss trains it, so the ELBO, the log-sum loss and the
energies share one scale, and the log-sum gradient also pushes mass off [MASK] (which the
data never holds). The sampler (`SampleOutput.log_prob`) instead renormalises over the
vocabulary without [MASK], since it never writes one; per scored token the two differ by
-log(1 - p([MASK])), which is 0 for a model that puts no mass on [MASK] (a trained one puts
almost none). Then, with l2r orders and K = ceil(n / tokens_per_step), l_o of a sample
equals the l2r sampler's log_prob at temperature 1 (tests/test_likelihood.py checks it).

Naive reference: `naive_l2r_chain_rule` in tests/test_likelihood.py, one forward per position
(K = n, l2r); the same file checks sum_x exp(l_o(x)) = 1 by enumeration, and that the chunk
size, padding and the logits of visible positions change nothing.

Chunks, ranks and checkpointing are `jointobj.utils.ranks.run_chunks`'s business (under ZeRO-3 the
ranks agree the chunk count; a rank with fewer chunks runs padding chunks of weight 0).

The loss (losses/logsum.py), the energies and the evaluators all call this function.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

from jointobj.diffusion.batch import Batch, check_batch
from jointobj.diffusion.orders import Orders, block_index, check_orders, num_blocks
from jointobj.model.architecture import logits_at
from jointobj.utils.ranks import run_chunks


@dataclass
class BlockPlan:
    """The forwards that score a batch under M orders: one row per (batch row, order, block).

    block        [b, M, l] long   block of each position, -1 off the scorable positions
    batch_row    [R] long         R = M * sum_b K_b rows, ordered by (batch row, order, block)
    order        [R] long
    step         [R] long         the block k this row scores
    exclude_mask [b, M] bool | None  orders scored as the sampler draws: softmax without [MASK]

    Rows are kept as index triples and built per chunk (`inputs`), so b*M*K copies of the
    sequence never sit in memory together.
    """

    block: torch.Tensor
    batch_row: torch.Tensor
    order: torch.Tensor
    step: torch.Tensor
    exclude_mask: torch.Tensor | None = None  # [b, M] bool: renormalise that order's tokens without [MASK]

    @property
    def num_rows(self) -> int:
        return len(self.step)

    def inputs(self, input_ids: torch.Tensor, mask_token_id: int, rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids [b, l] -> (noisy ids [r, l], targets [r, l] bool) for plan rows `rows`.

        Block k's row shows blocks < k, masks blocks >= k and scores block k; positions
        off the scorable set (block -1) are never masked nor scored.
        """
        b, m, k = self.batch_row[rows], self.order[rows], self.step[rows]  # [r] each
        position_block = self.block[b, m]  # [r, l]
        masked = position_block >= k[:, None]  # [r, l]
        targets = position_block == k[:, None]  # [r, l]
        noisy = torch.where(masked, mask_token_id, input_ids[b])  # [r, l]
        return noisy, targets


def plan_blocks(orders: Orders, blocks: int | str, lengths: torch.Tensor | None = None) -> BlockPlan:
    """Cut every order into its K_b blocks and list the forwards (see BlockPlan).

    lengths [b]: scorable positions per row (default: counted from the orders' ranks).
    """
    lengths = orders.lengths if lengths is None else lengths  # [b]
    num_blocks(blocks, lengths)  # K <= n_b for every row, or a clear error
    return plan_from_blocks(block_index(orders.rank, lengths, blocks))


def plan_from_blocks(block: torch.Tensor, exclude_mask: torch.Tensor | None = None) -> BlockPlan:
    """The forwards of orders given by their blocks: block [b, M, l] long, 0 .. K_bm - 1 on row b's
    scorable positions (every block non-empty), -1 elsewhere. K may differ between rows and orders
    (a decoder's own blocks, jointobj/decoding/decoder_law.py, or `block_index` of ranks)."""
    batch, num_orders = block.shape[:2]
    counts = (block.amax(-1) + 1).flatten()  # [b*M] K of each (row, order)
    group = torch.arange(batch * num_orders, device=counts.device).repeat_interleave(counts)  # [R]
    starts = counts.cumsum(0) - counts  # [b*M]
    step = torch.arange(len(group), device=counts.device) - starts[group]  # [R]
    return BlockPlan(block, group // num_orders, group % num_orders, step, exclude_mask)


def _score_chunk(denoiser: nn.Module, plan: BlockPlan, input_ids: torch.Tensor, attention: torch.Tensor | None,
                 rows: slice, anchor: torch.Tensor | None = None) -> torch.Tensor:
    """Sum of log p(x_i | the row's noisy input) over each plan row's targets: [r].

    The rows' inputs are built here, not passed in, so a checkpoint of this call keeps only
    `rows` alive between forward and backward, never the chunk's [r, l] inputs. `anchor`: a
    scalar that requires grad, for reentrant checkpointing (see `jointobj.utils.ranks.run_chunks`); not used.
    """
    noisy, targets = plan.inputs(input_ids, denoiser.mask_token_id, rows)  # [r, l] each
    owner = plan.batch_row[rows]  # [r]
    picked = logits_at(denoiser, targets, input_ids=noisy,
                       attention_mask=None if attention is None else attention[owner])  # [t, V], t = r * l / K
    row, position = targets.nonzero(as_tuple=True)  # [t] each, the row-major order of `picked`
    clean = input_ids[owner[row], position]  # [t]
    if plan.exclude_mask is not None:  # those orders' tokens renormalised without [MASK], as the sampler draws
        excluded = plan.exclude_mask[owner, plan.order[rows]][row]  # [t]
        mask_column = torch.full_like(picked[:, :1], denoiser.mask_token_id, dtype=torch.long)  # [t, 1]
        kept = picked.gather(-1, mask_column).masked_fill(excluded[:, None], -torch.inf)  # [t, 1]
        picked = picked.scatter(-1, mask_column, kept)  # [t, V] (out of place: keeps the graph)
    token = picked.gather(-1, clean[:, None]).squeeze(-1) - picked.logsumexp(dim=-1)  # [t]
    return torch.zeros(len(owner), dtype=token.dtype, device=token.device).index_add(0, row, token)  # [r]


def order_log_likelihood(
    denoiser: nn.Module,
    batch: Batch,
    orders: Orders,
    blocks: int | str = "all",
    *,
    max_rows: int | None = None,
    checkpoint: bool = False,
    sync_ranks: bool | None = None,
) -> torch.Tensor:
    """l_o(x) for every row and order: [b, M] float32 (nats per sequence).

    batch: input_ids / attention_mask / prompt_mask [b, l]; orders: rank [b, M, l] over the
    batch's scorable positions; blocks: K (1 <= K <= n_b for every row) or "all" (K = n_b).
    max_rows: rows per forward (default: the batch size, i.e. the size of an ordinary step).
    checkpoint: wrap each chunk in activation checkpointing, so that under autograd the saved
    activations are one chunk's, whatever M and K. Gradients flow when grad mode is on;
    call it under `torch.no_grad()` to score only.
    sync_ranks: with torch.distributed up and more than one rank, run as many forwards as the
    rank with the most (see jointobj.utils.ranks.run_chunks). None (default): only when the weights are ZeRO-3
    shards. True forces it (every rank must then call this as often), False turns it off.

    Checks the batch and the orders, then calls `score_orders`.
    """
    scorable = check_batch(batch)  # [b, l]
    check_orders(orders.rank, scorable)
    return score_orders(denoiser, batch, scorable, orders, blocks, max_rows=max_rows, checkpoint=checkpoint,
                        sync_ranks=sync_ranks)


def score_orders(
    denoiser: nn.Module,
    batch: Batch,
    scorable: torch.Tensor,
    orders: Orders,
    blocks: int | str = "all",
    *,
    max_rows: int | None = None,
    checkpoint: bool = False,
    sync_ranks: bool | None = None,
) -> torch.Tensor:
    """`order_log_likelihood` without its checks, for callers that ran them once already.

    scorable [b, l] is `check_batch(batch)`, and `orders` are permutations of it (drawn by
    OrderProposal, or passed through `check_orders`). Returns l_o(x) [b, M].
    """
    plan = plan_blocks(orders, blocks, scorable.sum(-1))
    return score_plan(denoiser, batch, plan, max_rows=max_rows, checkpoint=checkpoint, sync_ranks=sync_ranks)


def score_blocks(
    denoiser: nn.Module,
    batch: Batch,
    block: torch.Tensor,
    *,
    exclude_mask: torch.Tensor | None = None,
    max_rows: int | None = None,
    checkpoint: bool = False,
    sync_ranks: bool | None = None,
) -> torch.Tensor:
    """The K-block likelihood of orders given by their blocks (`plan_from_blocks`): [b, M].

    block [b, M, l]: block of each scorable position (-1 elsewhere); exclude_mask [b, M] bool: score
    that order's tokens with softmax without [MASK] (the sampler's law) instead of the whole vocabulary."""
    return score_plan(denoiser, batch, plan_from_blocks(block, exclude_mask), max_rows=max_rows,
                      checkpoint=checkpoint, sync_ranks=sync_ranks)


def score_plan(denoiser: nn.Module, batch: Batch, plan: BlockPlan, *, max_rows: int | None = None,
               checkpoint: bool = False, sync_ranks: bool | None = None) -> torch.Tensor:
    """Run a plan's forwards in chunks and sum each (row, order)'s blocks: [b, M]."""
    input_ids = batch["input_ids"]  # [b, l]
    attention = batch.get("attention_mask")
    batch_size, num_orders = plan.block.shape[:2]
    score_rows = functools.partial(_score_chunk, denoiser, plan, input_ids, attention)  # (rows, anchor) -> [r]
    flat = run_chunks(score_rows, plan.num_rows, input_ids.shape[0] if max_rows is None else max_rows,
                      model=denoiser, device=input_ids.device, checkpoint=checkpoint, sync_ranks=sync_ranks)  # [R]
    group = plan.batch_row * num_orders + plan.order  # [R]
    total = torch.zeros(batch_size * num_orders, dtype=flat.dtype, device=flat.device)
    loglik = rearrange(total.index_add(0, group, flat), "(b m) -> b m", m=num_orders)  # [b, M]
    check_loglik(loglik, input_ids)
    return loglik


def check_loglik(loglik: torch.Tensor, input_ids: torch.Tensor) -> None:
    """Stop on a non-finite log-likelihood [b, M], naming the batch rows that produced it."""
    bad = ~torch.isfinite(loglik.detach()).all(dim=-1)  # [b]
    if bad.any():
        rows = bad.nonzero().flatten().tolist()
        raise FloatingPointError(
            f"order log-likelihood is not finite for batch rows {rows} (values {loglik[rows[0]].detach().tolist()}; "
            f"row {rows[0]} is {input_ids[rows[0]].tolist()[:32]}); the model produced non-finite logits: "
            "lower the learning rate, enable gradient clipping, or check the weights for NaN"
        )
