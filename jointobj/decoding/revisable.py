"""Revisable commits: commit generously, re-check committed tokens, return the doubtful ones to [MASK].

    from jointobj.decoding import build_decoder
    decoder = build_decoder("revisable", threshold=0.3, doubt=0.1, max_revisions=2)
    out = decoder.sample(denoiser, prompt_ids, gen_length=8, generator=torch.Generator().manual_seed(0))

After ReMDM (remasking) and WINO (wide in, narrow out). Each step runs one forward with up to
two rows per sample:

- the *commit row* (the current answer, open positions masked) commits every open position of
  the current block whose confidence max_v softmax(logits)_v exceeds `threshold` (a low one: many
  tokens at once), and at least the `tokens_per_step` most confident ones; the tokens are drawn
  from softmax(logits / T) (Gumbel-max, float64) as the hard sampler draws them;
- the *check row* re-reads committed tokens that are not yet confirmed: a random half of them
  (at least one) is masked in that row, so each is scored with itself hidden and the other
  committed tokens visible (`check_rows` = R >= 2: the unconfirmed tokens are dealt into R
  groups, one row hides each group, and all of them are checked in the step). A checked
  token whose probability there (temperature 1, [MASK] excluded) is below `doubt` goes back
  to [MASK]; the others are confirmed and never checked again. A position is returned at
  most `max_revisions` times; after that its token is final as soon as it is committed.

A sample is done when no position of its answer is open and none is unconfirmed. Both rows
of a step run in one batched forward: one sequential step, two rows (one when the sample has
nothing to check or nothing open; up to 1 + R with R check rows). `steps`, `row_steps` and
`rows_per_sample` count exactly that, so the decoder is compared with the others at equal
forwards and equal rows. Confirming the last tokens takes steps of its own, so at equal
threshold it runs more steps than the threshold decoder.

What it guarantees: nothing about the joint. A check sees only half of the unconfirmed tokens
hidden at a time and confirms a token against whatever is visible at that moment, later
commits can contradict a confirmed token, and the commit row draws from marginals that may
condition on tokens the check row is removing in the same step. Its output law is neither the
model's joint nor any order's autoregressive law, and it has no tractable probability:
`log_prob` is NaN (so sampling-importance-resampling refuses it). Measure it.

`block_length` B: only the first block with open or unconfirmed positions commits and checks.
"""

from __future__ import annotations

import math

import torch

from jointobj.decoding.layout import AnswerLayout
from jointobj.decoding.policies import ConfidenceThreshold
from jointobj.decoding.registry import DECODERS
from jointobj.decoding.sampler import (
    EXCLUDED_LOGIT,
    CommitLedger,
    SampleOutput,
    check_temperature,
    eval_mode,
    finish_sample,
    gumbel_max,
    layout_request,
    resolve_eos,
    uniform,
)
from jointobj.utils.checks import check_whole_number

__all__ = ["RevisableDecoder"]


class RevisableDecoder:
    """Commit generously, re-check, remask the doubtful (module docstring).

    tokens_per_step  K >= 1: the fewest positions the commit row commits per step (None: the whole block)
    threshold        commit every open position whose confidence exceeds it, in (0, 1]
    doubt            return a checked token to [MASK] when its probability with itself masked is below it,
                     in [0, 1] (0: never, which is the threshold decoder with a confirmation pass)
    max_revisions    how many times one position may be returned to [MASK] (0: never)
    check_rows       R >= 1 check rows per sample and step: 1 checks half the unconfirmed tokens, R >= 2 all
                     of them, split into R groups each hidden in its own row (each checked against the rest)
    temperature      T >= 0 of committed tokens (0 = greedy)
    block_length     semi-autoregressive blocks (None: one block)
    """

    name = "revisable"

    def __init__(self, tokens_per_step: int | None = 1, *, threshold: float = 0.3, doubt: float = 0.1,
                 max_revisions: int = 2, check_rows: int = 1, temperature: float = 1.0,
                 block_length: int | None = None):
        check_whole_number("tokens_per_step", tokens_per_step, "a whole block per step")
        check_whole_number("block_length", block_length, "one block")
        check_whole_number("check_rows", check_rows)
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must lie in (0, 1], got {threshold}; a low one (0.3) commits generously")
        if not 0.0 <= doubt <= 1.0:
            raise ValueError(f"doubt must lie in [0, 1] (0 never remasks), got {doubt}")
        check_whole_number("max_revisions", max_revisions, minimum=0)
        check_temperature(temperature)
        self.tokens_per_step = None if tokens_per_step is None else int(tokens_per_step)
        self.threshold, self.doubt = float(threshold), float(doubt)
        self.max_revisions = max_revisions
        self.check_rows = int(check_rows)
        self.temperature = float(temperature)
        self.block_length = None if block_length is None else int(block_length)
        self._policy = ConfidenceThreshold(self.threshold)

    def __repr__(self) -> str:
        return (f"RevisableDecoder(tokens_per_step={self.tokens_per_step}, threshold={self.threshold}, "
                f"doubt={self.doubt}, max_revisions={self.max_revisions}, check_rows={self.check_rows}, "
                f"temperature={self.temperature}, "
                f"block_length={self.block_length})")

    def _check_groups(self, unconfirmed: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """[a, L] unconfirmed -> [a, L] long: the check row that hides each unconfirmed token (-1: none this step).
        Tokens are dealt at random into max(R, 2) groups of near-equal size; row r hides group r, so with one row
        half of them (at least one) are checked, with R >= 2 all of them."""
        keys = uniform(unconfirmed.shape, generator, unconfirmed.device).masked_fill(~unconfirmed, math.inf)  # [a, L]
        group = keys.argsort(1).argsort(1) % max(self.check_rows, 2)  # [a, L]
        return torch.where(unconfirmed & (group < self.check_rows), group, -1)

    @torch.no_grad()
    def sample(self, denoiser, prompt_ids: torch.Tensor, gen_length: int, generator: torch.Generator | None = None,
               *, return_trace: bool = False, prompt_attention_mask: torch.Tensor | None = None,
               eos_token_id: int | None = None) -> SampleOutput:
        """Generate `gen_length` tokens after each prompt (prompt forms and EOS as jointobj/decoding/sampler.py
        says: prompts of different lengths, answers trimmed at EOS in `answer_ids`)."""
        layout: AnswerLayout = layout_request(denoiser, prompt_ids, gen_length, prompt_attention_mask)
        eos = resolve_eos(denoiser, eos_token_id)
        mask_id, device = int(denoiser.mask_token_id), layout.device
        b, length = layout.batch_size, layout.gen_length
        gen = layout.start(mask_id)  # [b, L]
        mask_index = torch.tensor([mask_id], device=device)
        block = self.block_length or length
        block_id = torch.arange(length, device=device) // block  # [L]
        blocks = int(block_id[-1]) + 1

        ledger = CommitLedger.start(b, length, device, return_trace)
        confirmed = torch.zeros(b, length, dtype=torch.bool, device=device)  # [b, L]
        revisions = torch.zeros(b, length, dtype=torch.long, device=device)  # [b, L]
        steps = rows = 0

        with eval_mode(denoiser):
            while True:
                open_ = gen == mask_id  # [b, L]
                pending = open_ | ~confirmed  # [b, L] positions not final yet
                block_now = torch.where(pending, block_id, blocks).amin(1)  # [b]
                in_block = block_id == block_now[:, None]  # [b, L]
                eligible = open_ & in_block  # [b, L]
                unconfirmed = ~open_ & ~confirmed & in_block  # [b, L]
                committing = eligible.any(1).nonzero().squeeze(1)  # [c]
                checking = unconfirmed.any(1).nonzero().squeeze(1)  # [k]
                if len(committing) == 0 and len(checking) == 0:
                    break
                group = self._check_groups(unconfirmed[checking], generator)  # [k, L]
                check_rows = [(group == r).any(1).nonzero().squeeze(1) for r in range(self.check_rows)]  # [k_r] each
                check_owner = torch.cat(check_rows)  # [K] index into `checking`
                check_hides = torch.cat([group[rows_r] == r for r, rows_r in enumerate(check_rows)])  # [K, L]
                answers = torch.cat([gen[committing], gen[checking][check_owner].masked_fill(check_hides, mask_id)])
                owner = torch.cat([committing, checking[check_owner]])  # [c+K] the sample of each row
                logits = layout.answer_logits(denoiser, owner, input_ids=layout.compose(answers, owner))
                logits = logits.index_fill(-1, mask_index, EXCLUDED_LOGIT)  # [c+K, L, V]
                commit_logits, check_logits = logits[: len(committing)], logits[len(committing) :]

                # check rows: each hidden token's probability with itself masked (each token hidden in one row)
                own = check_logits.softmax(-1).gather(2, gen[checking][check_owner][..., None]).squeeze(2)  # [K, L]
                probability = torch.zeros(len(checking), length, dtype=own.dtype, device=device)  # [k, L]
                probability.index_put_((check_owner,), torch.where(check_hides, own, 0.0), accumulate=True)
                hidden = group >= 0  # [k, L]
                doubtful = hidden & (probability < self.doubt) & (revisions[checking] < self.max_revisions)
                checked = gen[checking].masked_fill(doubtful, mask_id)
                gen[checking] = checked
                revisions[checking] += doubtful.long()
                confirmed[checking] |= hidden & ~doubtful

                # commit row: generous threshold, at least K (the block's rest when K is None)
                allowed = eligible[committing]  # [c, L]
                floor = allowed.sum(1).clamp(max=self.tokens_per_step or length)  # [c]
                commit = self._policy.select(commit_logits, allowed, floor)  # [c, L]
                tokens, token_log_q = gumbel_max(commit_logits[commit], self.temperature, generator)  # [n], [n]
                final = revisions[committing] >= self.max_revisions  # [c, L] no revision left: final at once
                took_part = torch.zeros(b, dtype=torch.bool, device=device)
                took_part[owner] = True
                if ledger.commit_step is not None:
                    trace = ledger.commit_step[committing]
                    trace[commit] = ledger.row_steps[committing][commit.nonzero()[:, 0]]
                    ledger.commit_step[committing] = trace
                state = gen[committing]
                state[commit] = tokens
                gen[committing] = state
                confirmed[committing] |= commit & final
                ledger.row_steps += took_part.long()
                steps, rows = steps + 1, rows + len(owner)
        ledger.log_prob.fill_(math.nan)  # revisions leave no tractable probability
        return finish_sample(layout, gen, ledger, steps, rows, eos)


DECODERS.register("revisable")(RevisableDecoder)
