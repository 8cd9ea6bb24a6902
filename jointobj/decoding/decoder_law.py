"""The decoder's own law as a likelihood: log P_pi,K(x) of an answer under a policy-driven sampler.

    order = DecoderOrder.parse("confidence:steps=2")                 # policy, budget
    loglik = decoder_log_likelihood(denoiser, batch, [order])        # [b, 1] nats per answer

For a state-determined policy pi (confidence, margin, entropy, threshold, entropy_bounded, l2r, planned, learned:
scores read from the state's own distribution, ties to the lower position) and a step budget,
the hard-commit sampler (`UnmaskingSampler`, T = 1, one block) outputs x with probability

    P(x) = prod_k prod_{i in S_k} p(x_i | s_k),   s_k = x shown on S_1..S_{k-1}, [MASK] elsewhere,
    S_k  = pi.select(logits at s_k, still masked, quota_k)            (no gradient through the choice)

with p the softmax *without* [MASK] (the sampler never writes one) and quota_k the sampler's
(`step_quota`: ceil(open / steps left)). An answer fixes its trajectory, so this is exact and
sums to 1 over answers (tests/decoding/test_decoder_law.py checks both by enumeration and by the
sampler's frequencies). Teacher-forced on data x it is a K-block likelihood in the order the
decoder itself would take:

1. `decoder_blocks`: K sequential forwards without grad (the decoder's own steps, in eval mode
   as the decoder runs) find S_1..S_K; the same pass gives log P(x) when no gradient is wanted;
2. with grad on, the blocks are scored by the K-block machinery of jointobj/diffusion/likelihood.py
   (`score_blocks`, one row per block, chunked and optionally checkpointed), so the gradient is
   that of sum_k log p(x_{S_k} | s_k) with S fixed: K more forwards. Since s_k is exactly block k's
   row, the pass itself can be run with grad and be its own score (`decoder_scores`: K forwards in
   all, the choice still read from detached logits) where the training forward is the decoder's
   (`forward_as_decoded`: eval mode or no active dropout) and it holds no more activations than
   `score_blocks` would (`fuse_passes`); `decoder_log_likelihood` and the log-sum do so then.

`plan_order` picks the order a `planned` decoder should follow at a budget: the candidate whose law
gives the data the highest likelihood (orders that keep coupled positions in different steps).

Budget: `tokens_per_step` K gives ceil(n / K) steps, `steps` S gives min(S, n) (n the row's
scorable positions: its answer), as the sampler counts them. Adaptive policies (threshold,
entropy_bounded) take their quota as a floor and may finish in fewer steps; so do their blocks
here. Not covered: `random` (its order is drawn independently of the state: the law is then a
mixture over orders, not this product), semi-autoregressive `block_length`, temperature other
than 1, `stop_at_eos`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from jointobj.decoding.policies import POLICIES, UnmaskingPolicy
from jointobj.decoding.sampler import EXCLUDED_LOGIT, answer_budget, check_budget_options, eval_mode, step_quota
from jointobj.diffusion.batch import Batch, check_batch
from jointobj.diffusion.likelihood import check_loglik, score_blocks
from jointobj.model.architecture import logits_at
from jointobj.utils.ranks import chunks_on_every_rank, zero3_sharded

__all__ = ["BUDGET_OPTIONS", "DecoderOrder", "decoder_blocks", "decoder_log_likelihood", "decoder_scores",
           "forward_as_decoded", "fuse_passes", "parse_decoder_orders", "plan_order"]

BUDGET_OPTIONS = ("tokens_per_step", "steps")
NOT_STATE_DETERMINED = ("random",)


def _value(text: str) -> Any:
    """'2' -> 2, '0.7' -> 0.7, 'all' / 'none' -> None (a whole answer in one step)."""
    if text.lower() in ("all", "none"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


@dataclass(frozen=True)
class DecoderOrder:
    """A decoder whose law is a likelihood: a registered policy, its options and the step budget.

    Written `NAME[:option=value]...`, the decoder's own names: "confidence:tokens_per_step=2",
    "threshold:threshold=0.7:steps=3", "entropy_bounded:bound=0.3:steps=2". No budget: one token
    per step (the sampler's default)."""

    policy_name: str
    options: tuple[tuple[str, Any], ...] = ()
    tokens_per_step: int | None = 1
    steps: int | None = None
    policy: UnmaskingPolicy = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.policy_name in NOT_STATE_DETERMINED:
            raise ValueError(f"the {self.policy_name!r} decoder draws its order independently of the state, so its law "
                             "is a mixture over orders, not one K-block likelihood; use a fixed-order family (l2r, "
                             "r2l, random) with blocks=K, or a state-determined policy (confidence, margin, entropy, "
                             "threshold, entropy_bounded, l2r, planned)")
        check_budget_options(self.tokens_per_step, self.steps)
        object.__setattr__(self, "policy", POLICIES.get(self.policy_name)(**dict(self.options)))

    @classmethod
    def parse(cls, spec: "str | DecoderOrder") -> "DecoderOrder":
        if isinstance(spec, DecoderOrder):
            return spec
        name, *parts = [part.strip() for part in str(spec).split(":")]
        options, budget = {}, {}
        for part in parts:
            key, equals, text = part.partition("=")
            if not equals or not key:
                raise ValueError(f"decoder order {spec!r}: {part!r} is not option=value; write e.g. "
                                 "'confidence:tokens_per_step=2' or 'threshold:threshold=0.7:steps=3'")
            (budget if key in BUDGET_OPTIONS else options)[key] = _value(text)
        if "steps" in budget and "tokens_per_step" not in budget:
            budget["tokens_per_step"] = None  # steps replaces the default K = 1
        try:
            return cls(name, tuple(sorted(options.items())), **budget)
        except TypeError as error:
            raise ValueError(f"decoder order {spec!r}: {error}") from error

    @classmethod
    def of_decoder(cls, name: str, tokens_per_step: int | None, options: dict[str, Any]) -> "DecoderOrder | None":
        """The decoder `build_decoder(name, tokens_per_step, **options)` as a DecoderOrder, or None when its
        law is not this likelihood (not a state-determined policy, T != 1, semi-AR blocks, stop_at_eos)."""
        if name not in POLICIES or name in NOT_STATE_DETERMINED:
            return None
        options = dict(options)
        if options.pop("temperature", 1.0) != 1.0 or options.pop("block_length", None) is not None \
                or options.pop("stop_at_eos", False):
            return None
        steps = options.pop("steps", None)
        return cls(name, tuple(sorted(options.items())), None if steps is not None else tokens_per_step, steps)

    def __str__(self) -> str:
        parts = [self.policy_name, *(f"{k}={v}" for k, v in self.options)]
        if self.steps is not None:
            parts.append(f"steps={self.steps}")
        elif self.tokens_per_step != 1:
            parts.append(f"tokens_per_step={'all' if self.tokens_per_step is None else self.tokens_per_step}")
        return ":".join(parts)

    @property
    def decoder_options(self) -> dict[str, Any]:
        """What `build_decoder(self.policy_name, self.tokens_per_step, **decoder_options)` takes: the sampler
        whose law this is (temperature 1)."""
        return {**dict(self.options), **({} if self.steps is None else {"steps": self.steps})}

    def budget(self, lengths: torch.Tensor) -> torch.Tensor:
        """[b] answer positions -> [b] steps the sampler has for them."""
        return answer_budget(lengths, self.tokens_per_step, self.steps)


def parse_decoder_orders(specs: "str | Sequence[str | DecoderOrder]") -> list[DecoderOrder]:
    """'confidence:steps=2,l2r:steps=3' or a list of specs -> [DecoderOrder]."""
    if isinstance(specs, str):
        specs = [spec for spec in specs.split(",") if spec.strip()]
    return [DecoderOrder.parse(spec) for spec in specs]


Choose = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def decoder_blocks(denoiser: nn.Module, batch: Batch, scorable: torch.Tensor, order: DecoderOrder, *,
                   choose: Choose | None = None, sync_ranks: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced decoder trajectory: (block [b, l] long, the step at which the decoder commits each
    scorable position, -1 elsewhere; log P(x) [b] float64, softmax without [MASK] as the sampler draws).

    The sampler's loop with the data's tokens in place of its draws: one forward per step for the
    rows still open, the policy's `select` on the logits of the state (mask column excluded), the
    quota from `step_quota`. Rows that finish early (adaptive policies) drop out, as in the sampler.
    `choose(logits [a, n, V], eligible [a, n], quota [a], live [a] their rows) -> [a, n] bool` replaces the
    policy's select (a stochastic order drawn while training an order head: jointobj/objectives/order_gradient.py);
    log P is then that of the data along the drawn order.

    sync_ranks (None: when the weights are ZeRO-3 shards; see jointobj.utils.ranks.run_chunks): the
    number of forwards depends on the data (budgets of other answer lengths, adaptive policies that
    finish early), and under ZeRO-3 every forward is a collective weight gather, so with torch.distributed
    up the ranks agree (MAX) before each step whether any of them is still open; a rank that is done runs a
    padding forward on its first row, whose output is not read, until all are."""
    with eval_mode(denoiser):
        block, log_prob, _ = _teacher_forced(denoiser, batch, scorable, order, sync_ranks, scored=False, choose=choose)
    return block, log_prob


def decoder_scores(denoiser: nn.Module, batch: Batch, scorable: torch.Tensor, order: DecoderOrder, *,
                   sync_ranks: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`decoder_blocks`' pass run once with grad: (block [b, l]; log P(x) [b] float32 with its gradient).

    The teacher-forced state s_k is the input of block k's row in `score_blocks`, so the pass's own
    forwards can be scored: K forwards with grad instead of K without and K (or one of K*b rows) with.
    The choice of positions still carries no gradient (it reads detached logits). The forwards run in
    the denoiser's own mode, so this is the decoder's law only where that mode's forward is the
    decoder's eval-mode one: check `forward_as_decoded` first. Padding forwards (rank sync) enter
    the result with weight 0, so their backward runs on every rank too."""
    block, _, score = _teacher_forced(denoiser, batch, scorable, order, sync_ranks, scored=True)
    return block, score


DROPOUT_WORDS = ("dropout", "pdrop", "drop_prob", "drop_rate")


def forward_as_decoded(denoiser: nn.Module) -> bool:
    """Whether the denoiser's forward in its current mode is the eval-mode forward the decoder runs: it
    is in eval mode, or nothing in it drops out (no dropout module with p > 0, no positive rate named
    like a dropout in a module's config). Unsure means no."""
    if not getattr(denoiser, "training", False):
        return True
    for module in denoiser.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.training and module.p > 0:
            return False
        config = getattr(module, "config", None)
        for key, value in (vars(config).items() if config is not None and hasattr(config, "__dict__") else ()):
            if any(word in key.lower() for word in DROPOUT_WORDS) and isinstance(value, (int, float)) \
                    and not isinstance(value, bool) and value > 0:
                return False
    return True


def fuse_passes(denoiser: nn.Module, scorable: torch.Tensor, orders: Sequence[DecoderOrder], *, max_rows: int | None,
                checkpoint: bool, other_rows: int = 0, sync_ranks: bool | None = None) -> bool:
    """Whether to score decoder orders with `decoder_scores` (grad on, the forward as decoded) rather than
    `decoder_blocks` + `score_blocks`, at no more memory: the fused pass holds the activations of all its
    rows (at most sum_b K_b per order) until backward, as `score_blocks` does without checkpointing or
    when its rows (with `other_rows` scored beside them) fit one chunk of `max_rows` (default: the batch size).
    With rank sync (as in `decoder_blocks`) the ranks agree: the two paths run different collectives."""
    if not torch.is_grad_enabled() or not forward_as_decoded(denoiser):
        return False  # the same on every rank (grad mode and the model are)
    rows = sum(int(order.budget(scorable.sum(-1)).sum()) for order in orders) + other_rows
    fuse = not checkpoint or rows <= (scorable.shape[0] if max_rows is None else max_rows)
    sync = zero3_sharded(denoiser) if sync_ranks is None else sync_ranks
    return not chunks_on_every_rank(int(not fuse), scorable.device, sync)  # fused on every rank, or on none


def _teacher_forced(denoiser: nn.Module, batch: Batch, scorable: torch.Tensor, order: DecoderOrder,
                    sync_ranks: bool | None, scored: bool,
                    choose: Choose | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The decoder's teacher-forced loop (see `decoder_blocks`): (block [b, l], log P(x) [b] float64 detached,
    with `scored` the same log P(x) [b] float32 through the forwards' graph, else None)."""
    input_ids = batch["input_ids"]  # [b, l]
    attention = batch.get("attention_mask")
    mask_id = int(denoiser.mask_token_id)
    lengths = scorable.sum(-1)  # [b]
    budget = order.budget(lengths)  # [b]
    # The policy sees the answer as the sampler does: answer position j of row b at column j ([b, n] coordinates)
    column = torch.where(scorable, scorable.long().cumsum(-1) - 1, -1)  # [b, l] answer column of each position
    width = int(lengths.max()) if len(lengths) else 0
    block = torch.full_like(input_ids, -1)  # [b, l]
    log_prob = torch.zeros(input_ids.shape[0], dtype=torch.float64, device=input_ids.device)  # [b]
    step = 0
    policy = order.policy.for_denoiser(denoiser)
    choose = choose or (lambda logits, eligible, quota, live: policy.select(logits, eligible, quota))
    sync = zero3_sharded(denoiser) if sync_ranks is None else sync_ranks
    score = torch.zeros(input_ids.shape[0], device=input_ids.device) if scored else None  # [b] float32
    mask_column = torch.tensor([mask_id], device=input_ids.device)
    while True:
        open_positions = scorable & (block < 0)  # [b, l]
        live = open_positions.any(1).nonzero().squeeze(1)  # [a]
        if not chunks_on_every_rank(int(len(live) > 0), input_ids.device, sync):
            break  # every rank is done (without a group: this one)
        if len(live) == 0:  # another rank still decodes: the same collectives, nothing read
            padding = logits_at(denoiser, scorable[:1], input_ids=input_ids[:1],
                                attention_mask=None if attention is None else attention[:1])
            if scored:  # weight 0: its backward runs (ZeRO-3 gathers there too), nothing changes
                score = score + 0.0 * padding.float().sum()
            continue
        is_open = open_positions[live]  # [a, l]
        noisy = input_ids[live].masked_fill(is_open, mask_id)  # [a, l] the state s_k
        picked = logits_at(denoiser, is_open, input_ids=noisy,
                           attention_mask=None if attention is None else attention[live])  # [t, V]
        data = input_ids[live][is_open]  # [t]
        if scored:  # softmax without [MASK], as score_blocks scores the decoder's orders
            kept = picked.float().index_fill(-1, mask_column, -torch.inf)  # [t, V]
            scored_token = kept.gather(-1, data[:, None]).squeeze(-1) - kept.logsumexp(-1)  # [t]
        picked = picked.detach().float().index_fill(-1, mask_column, EXCLUDED_LOGIT)
        row, _ = is_open.nonzero(as_tuple=True)  # [t]
        at = column[live][is_open]  # [t] answer column of each open position
        logits = picked.new_full((len(live), width, picked.shape[-1]), EXCLUDED_LOGIT)  # [a, n, V]
        logits[row, at] = picked  # closed columns are never chosen: their logits are not read
        eligible = torch.zeros(len(live), width, dtype=torch.bool, device=input_ids.device)  # [a, n]
        eligible[row, at] = True
        quota = step_quota(eligible.sum(1), budget[live] - step)  # [a]
        commit = choose(logits, eligible, quota, live)[row, at]  # [t] chosen among the open positions
        token = picked.double().log_softmax(-1).gather(-1, data[:, None]).squeeze(-1)  # [t]
        log_prob.index_add_(0, live[row], token.masked_fill(~commit, 0.0))
        if scored:
            score = score.index_add(0, live[row], scored_token.masked_fill(~commit, 0.0))
        chosen = torch.zeros_like(is_open)  # [a, l]
        chosen[is_open] = commit
        block[live] = torch.where(chosen, step, block[live])
        step += 1
    return block, log_prob, score


def decoder_log_likelihood(denoiser: nn.Module, batch: Batch, orders: Sequence[str | DecoderOrder], *,
                           max_rows: int | None = None, checkpoint: bool = False,
                           scorable: torch.Tensor | None = None, sync_ranks: bool | None = None) -> torch.Tensor:
    """log P_decoder(answer | prompt) for every row and decoder order: [b, D] float32 (nats per answer).

    Without grad (torch.no_grad), the value of the decoder's own pass; with grad, that pass run with grad
    (`decoder_scores`, K forwards) where `fuse_passes` allows it, else the same blocks re-scored by
    `score_blocks` (K forwards more, chunked by `max_rows`, `checkpoint` as in the log-sum).
    sync_ranks: as in `decoder_blocks` and `score_blocks` (every rank must then call this as often)."""
    scorable = check_batch(batch) if scorable is None else scorable  # [b, l]
    orders = [DecoderOrder.parse(order) for order in orders]
    if fuse_passes(denoiser, scorable, orders, max_rows=max_rows, checkpoint=checkpoint, sync_ranks=sync_ranks):
        loglik = torch.stack([decoder_scores(denoiser, batch, scorable, order, sync_ranks=sync_ranks)[1]
                              for order in orders], 1)  # [b, D]
        check_loglik(loglik, batch["input_ids"])
        return loglik
    passes = [decoder_blocks(denoiser, batch, scorable, order, sync_ranks=sync_ranks) for order in orders]
    if not torch.is_grad_enabled():
        return torch.stack([value for _, value in passes], 1).float()  # [b, D]
    block = torch.stack([b for b, _ in passes], 1)  # [b, D, l]
    exclude = torch.ones(block.shape[:2], dtype=torch.bool, device=block.device)  # [b, D]
    return score_blocks(denoiser, batch, block, exclude_mask=exclude, max_rows=max_rows, checkpoint=checkpoint,
                        sync_ranks=sync_ranks)


@torch.no_grad()
def plan_order(denoiser: nn.Module, batch: Batch, *, tokens_per_step: int | None = None, steps: int | None = None,
               candidates: int = 64, generator: torch.Generator | None = None) -> tuple[DecoderOrder, list[dict]]:
    """Plan the order a fixed-order decoder should follow at a budget: among l2r, r2l and `candidates`
    random permutations of the answer's positions, the one whose decoder law gives the batch's answers
    the highest likelihood (the log-sum posterior's favourite at that budget: an order whose steps
    keep coupled positions apart puts less mass off the data, so the data's NLL is lower there).

    The rows must share their answer length n. Returns (the `planned` DecoderOrder, one row per
    candidate: order, mean log-likelihood per answer). Cost: (candidates + 2) x K forwards of the batch."""
    scorable = check_batch(batch)  # [b, l]
    lengths = scorable.sum(-1)
    n = int(lengths[0])
    if not (lengths == n).all():
        raise ValueError(f"plan_order needs answers of one length; got lengths {sorted(set(lengths.tolist()))}")
    orders = [list(range(n)), list(range(n))[::-1]]
    orders += [torch.randperm(n, generator=generator).tolist() for _ in range(candidates)]
    budget = {"tokens_per_step": None, "steps": steps} if steps is not None else {"tokens_per_step": tokens_per_step}
    rows = []
    for positions in orders:
        order = DecoderOrder("planned", (("order", "-".join(map(str, positions))),), **budget)
        loglik = decoder_log_likelihood(denoiser, batch, [order], scorable=scorable)[:, 0]  # [b]
        rows.append({"order": order, "loglik": float(loglik.double().mean())})
    best = max(rows, key=lambda row: row["loglik"])
    return best["order"], [{"order": str(row["order"]), "loglik": row["loglik"]} for row in rows]
