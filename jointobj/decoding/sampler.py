"""The hard-commit parallel sampler: generate `gen_length` tokens after a prompt, and the
scaffolding every decoder shares.

    from jointobj.decoding import UnmaskingSampler, ConfidenceTopK
    sampler = UnmaskingSampler(ConfidenceTopK(), tokens_per_step=2, temperature=1.0)
    out = sampler.sample(denoiser, prompt_ids, gen_length=8, generator=torch.Generator().manual_seed(0))
    out.gen_ids        # [b, 8] each row's answer
    out.steps          # 4 sequential forwards

The answer starts fully masked. Each step runs one denoiser forward for the whole batch,
the policy picks which masked positions to commit, and those positions get a token drawn
from softmax(logits / T) (Gumbel-max in float64; T = 0 is argmax). A committed token is
never changed again (no remasking).

Step budget. With `tokens_per_step = K` each block of B positions (the whole answer when
`block_length` is None) gets ceil(B / K) steps; with `steps = S` instead, each block gets S
steps (1 <= S <= B, anything else is refused; a shorter last block gets min(S, its size)).
At a step with n masked positions left in the block and s steps left, the quota is
ceil(n / s), LLaDA's even spread of uneven quotas (B = 32, S = 5: 7, 7, 6, 6, 6), so the
answer takes exactly the budgeted forwards under top-k policies. Adaptive policies
(threshold, entropy-bounded) may commit more than the quota and finish early; the quota is
their floor, so the budget caps their steps, and `tokens_per_step` on the output is the
*measured* rate. K = None means all of a block in one step.

Log-probability of a sample (`SampleOutput.log_prob`, for sampling-importance-resampling):
the sum over committed tokens of log softmax(logits / T) at the step that committed them
(the mask token excluded, as the sampler excludes it). For the deterministic policies (l2r,
confidence, margin, entropy, threshold, entropy-bounded) this is exactly log q(answer |
prompt): each step's commit set is a function of the tokens visible at that step (scores
use the step's probabilities, never its sampled tokens; ties go to the lower position), so
an answer fixes its whole trajectory and no other trace can produce it. For `random` the
commit order is drawn independently of the tokens, and the value is log q(answer | prompt,
order drawn) -- SIR weights built on it are valid on the (answer, order) space. With T = 0 the sampler
is deterministic and log_prob is 0.

Rows that finish early (adaptive policies) drop out of later forwards; `row_steps` counts
the forwards each sample took part in (its own sequential latency) and `rows_per_sample`
the forward rows spent per sample.

Every decoder's contract (what a new decoder follows):

    sample(denoiser, prompt_ids, gen_length, generator=None, *, return_trace=False,
           prompt_attention_mask=None, eos_token_id=None) -> SampleOutput

- Prompts of different lengths: `prompt_ids` [b, lp] with `prompt_attention_mask` [b, lp]
  (left- or right-padded), or a list of 1-D tensors. `layout_request` checks them and
  returns an `AnswerLayout` (jointobj/decoding/layout.py): the decoder keeps only the
  answers gen [b, L] as its state, builds each forward's input with `layout.compose(gen[live],
  live)` and reads logits [a, L, V] of the answer positions with `layout.answer_logits(denoiser,
  live, input_ids=x)`. Each row then sits at its own positions (prompt, answer, padding after),
  so on a model that honours attention masks every row gets exactly what it gets alone, and
  a mask-blind model runs one forward per prompt length (one sequential step). `finish_sample`
  returns the SampleOutput; `out.gen_ids` is each row's answer, `out.prompt_lengths` the
  prompts' lengths (None when all are `prompt_length` long), `out.attention_mask` the real tokens.
- EOS: `eos_token_id` None means the denoiser's own (`denoiser.eos_token_id`, None when it
  has none). By default decoding does not change with it: every position is generated
  (`UnmaskingSampler(stop_at_eos=True)` stops a row once its answer is settled), and
  `out.answer_ids` gives the answers trimmed at the first EOS (every position after it set to
  EOS, the form an EOS-padded data set stores), `out.answer_lengths` the tokens before it,
  `out.texts(tokenizer)` the text before it.
  Text and validity are read from the trimmed answers. Cost: `tokens_per_step` counts every
  generated position, the EOS tail included (the decoder spent its steps on them; with
  `stop_at_eos` a filled tail cost nothing, so read the next one); `answer_tokens_per_step`
  counts only the answer and its first EOS.
- `steps` / `tokens_per_step` / `block_length`: `block_budget` gives each block's steps and
  `check_steps` refuses a step count outside 1..block length; quota ceil(n / s) as above.
- Noise from `gumbel_max` / `uniform` (float64, on the generator's device); the loop inside
  `eval_mode(denoiser)`; commits through a `CommitLedger` over gen (prompt_length 0).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from jointobj.decoding.layout import AnswerLayout, normalise_prompts
from jointobj.decoding.policies import UnmaskingPolicy
from jointobj.diffusion.randomness import gumbel_max, gumbel_noise, uniform  # noqa: F401 (re-exported: decoders' noise)
from jointobj.utils.checks import check_whole_number

__all__ = ["EXCLUDED_LOGIT", "SampleOutput", "UnmaskingSampler", "block_budget", "check_request", "check_steps",
           "check_temperature", "eval_mode", "finish_sample", "gumbel_max", "gumbel_noise", "layout_request",
           "resolve_eos", "start_answer", "step_quota", "steps_for", "trim_at_eos", "uniform"]

# Logit given to the mask token: finite so entropies stay finite, exp() of it is exactly 0.
EXCLUDED_LOGIT = -1e9


def trim_at_eos(gen_ids: torch.Tensor, eos_token_id: int | None) -> torch.Tensor:
    """answers [b, L] -> [b, L]: every position after a row's first EOS set to EOS (the form an
    EOS-padded data set stores); unchanged when eos_token_id is None."""
    if eos_token_id is None:
        return gen_ids
    seen = (gen_ids == eos_token_id).long().cumsum(1) > 0  # [b, L] at or after the first EOS
    return gen_ids.masked_fill(seen, eos_token_id)


@dataclass
class SampleOutput:
    """What every decoder returns.

    ids             [b, P + L] long    each row: prompt, answer, then padding (when prompts differ)
    prompt_length   P                  the longest prompt (every prompt's length when they are equal)
    steps           sequential denoiser forwards the batch ran (nfe)
    row_steps       [b] long           forwards each sample took part in
    rows_per_sample forward rows per sample (compute)
    log_prob        [b] float64        log-probability of the sample under the sampler (see module doc)
    commit_step     [b, L] long | None step (0-based, per sample) at which each generated position
                                       was committed; only when asked for (`return_trace=True`)
    prompt_lengths  [b] long | None    each row's prompt length; None: all are `prompt_length`
    eos_token_id    int | None         the EOS the answers are trimmed at (`answer_ids`)
    """

    ids: torch.Tensor
    prompt_length: int
    steps: int
    row_steps: torch.Tensor
    rows_per_sample: float
    log_prob: torch.Tensor
    commit_step: torch.Tensor | None = None
    prompt_lengths: torch.Tensor | None = None
    eos_token_id: int | None = None

    @property
    def gen_length(self) -> int:
        return self.ids.shape[1] - self.prompt_length

    @property
    def gen_ids(self) -> torch.Tensor:
        """[b, L] each row's generated tokens (untrimmed)."""
        if self.prompt_lengths is None:
            return self.ids[:, self.prompt_length :]  # [b, L]
        columns = self.prompt_lengths[:, None] + torch.arange(self.gen_length, device=self.ids.device)  # [b, L]
        return self.ids.gather(1, columns)  # [b, L]

    @property
    def attention_mask(self) -> torch.Tensor:
        """[b, P + L] long: 1 on each row's prompt and answer, 0 on padding."""
        if self.prompt_lengths is None:
            return torch.ones_like(self.ids)
        real = self.prompt_lengths[:, None] + self.gen_length  # [b, 1]
        return (torch.arange(self.ids.shape[1], device=self.ids.device) < real).long()  # [b, P+L]

    @property
    def answer_ids(self) -> torch.Tensor:
        """[b, L] the answers trimmed at the first EOS (`trim_at_eos`): what text and validity read."""
        return trim_at_eos(self.gen_ids, self.eos_token_id)

    @property
    def answer_lengths(self) -> torch.Tensor:
        """[b] long: tokens before the first EOS (L when there is none)."""
        if self.eos_token_id is None:
            return torch.full((self.ids.shape[0],), self.gen_length, dtype=torch.long, device=self.ids.device)
        return (self.answer_ids != self.eos_token_id).sum(1)

    def texts(self, tokenizer: Any, **decode_options: Any) -> list[str]:
        """Each answer's text, cut at the first EOS (neither it nor what follows is decoded)."""
        lengths = self.answer_lengths.tolist()
        return [tokenizer.decode(row[:n].tolist(), **decode_options) for row, n in zip(self.gen_ids.cpu(), lengths)]

    @property
    def nfe(self) -> int:
        return self.steps

    @property
    def steps_per_sample(self) -> float:
        return float(self.row_steps.double().mean())

    @property
    def tokens_per_step(self) -> float:
        """Measured: generated tokens / sequential steps, averaged over samples' steps. Every
        generated position counts, the EOS tail included."""
        return self.gen_length / self.steps_per_sample

    @property
    def answer_tokens_per_step(self) -> float:
        """Answer tokens (up to and including the first EOS) / sequential steps, averaged as above."""
        tokens = (self.answer_lengths + (self.answer_lengths < self.gen_length).long()).double().mean()
        return float(tokens) / self.steps_per_sample


# ---------------------------------------------------------------- the generation loop's scaffolding


@contextlib.contextmanager
def eval_mode(denoiser: Any) -> Iterator[None]:
    """Decode with dropout off: the denoiser in eval mode inside the block, its own mode restored
    after (also on error). Every decoding loop, and every energy it calls, runs inside one."""
    was_training = getattr(denoiser, "training", False)
    if was_training:
        denoiser.eval()
    try:
        yield
    finally:
        if was_training:
            denoiser.train()


def check_temperature(temperature: Any) -> None:
    """A sampling temperature: finite and >= 0 (0 = greedy). An infinite one would divide the [MASK]
    exclusion logit away and let [MASK] be drawn."""
    if not (isinstance(temperature, (int, float)) and 0 <= temperature < float("inf")):
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")


def check_request(denoiser: Any, prompt_ids: Any, gen_length: int,
                  prompt_attention_mask: torch.Tensor | None = None) -> None:
    """What every decoder checks before its first forward: prompts as a [batch, prompt_length]
    tensor (with `prompt_attention_mask` when rows differ in length) or a list of 1-D tensors,
    a whole gen_length >= 1, and the longest prompt + answer within the model's positions."""
    _, lengths = normalise_prompts(prompt_ids, prompt_attention_mask)
    check_whole_number("gen_length", gen_length)
    limit = getattr(denoiser, "max_positions", None)
    longest = int(lengths.max()) if len(lengths) else 0
    total = longest + gen_length
    if isinstance(limit, int) and total > limit:
        raise ValueError(f"prompt ({longest}) + gen_length ({gen_length}) = {total} tokens, longer than "
                         f"the model's {limit} positions; shorten the prompt or generate fewer tokens")


def layout_request(denoiser: Any, prompt_ids: Any, gen_length: int,
                   prompt_attention_mask: torch.Tensor | None = None) -> AnswerLayout:
    """`check_request`, then the batch laid out for decoding (jointobj/decoding/layout.py)."""
    check_request(denoiser, prompt_ids, gen_length, prompt_attention_mask)
    return AnswerLayout.build(denoiser, prompt_ids, gen_length, prompt_attention_mask)


def resolve_eos(denoiser: Any, eos_token_id: int | None) -> int | None:
    """The EOS id a decoder trims at: `eos_token_id`, else the denoiser's (None when it has none)."""
    eos = getattr(denoiser, "eos_token_id", None) if eos_token_id is None else eos_token_id
    if eos is None:
        return None
    vocab = getattr(denoiser, "vocab_size", None)
    if isinstance(eos, bool) or not isinstance(eos, int) or eos < 0 or (isinstance(vocab, int) and eos >= vocab):
        raise ValueError(f"eos_token_id must be a token id in 0..{vocab - 1 if isinstance(vocab, int) else 'V-1'}, "
                         f"got {eos!r}")
    if eos == getattr(denoiser, "mask_token_id", None):
        raise ValueError(f"eos_token_id {eos} is the mask token id; pass the tokenizer's EOS id")
    return int(eos)


def start_answer(denoiser: Any, prompt_ids: torch.Tensor, gen_length: int) -> torch.Tensor:
    """[b, lp] prompts of one length -> [b, lp + L] long on the denoiser's device: the prompt, then L
    masks. (Prompts of different lengths: `layout_request`.)"""
    device = getattr(denoiser, "device", prompt_ids.device)
    b = prompt_ids.shape[0]
    masks = torch.full((b, int(gen_length)), int(denoiser.mask_token_id), dtype=torch.long, device=device)
    return torch.cat([prompt_ids.to(device).long(), masks], 1)  # [b, lp+L]


def _ceil_div(a: torch.Tensor, b: torch.Tensor | int) -> torch.Tensor:
    return -torch.div(-a, b, rounding_mode="floor")


def step_quota(left: torch.Tensor, steps_left: torch.Tensor) -> torch.Tensor:
    """The quota of a step: [a] open positions, [a] steps left in their block -> [a] ceil(left / steps
    left), at least one step left counted (LLaDA's even spread; adaptive policies' floor). Every decoder
    that follows a step budget, and the decoder-order likelihood (decoder_law.py), take it from here."""
    return _ceil_div(left, steps_left.clamp(min=1))  # [a]


def answer_budget(lengths: torch.Tensor, tokens_per_step: int | None, steps: int | None = None) -> torch.Tensor:
    """[n] positions of each block (or answer) -> [n] its steps: min(S, B) with `steps` = S, else
    ceil(B / K), one step with K = None."""
    if steps is not None:
        return lengths.clamp(max=steps)
    return lengths.clamp(max=1) if tokens_per_step is None else _ceil_div(lengths, tokens_per_step)


def check_steps(steps: int | None, gen_length: int, block_length: int | None = None) -> None:
    """`steps` per block must lie in 1..B, B the block's positions (the answer's without blocks)."""
    if steps is None:
        return
    check_whole_number("steps", steps, "a budget from tokens_per_step")
    size = min(block_length or gen_length, gen_length)
    if steps > size:
        where = f"a block of {size} positions" if block_length else f"an answer of {size} positions"
        raise ValueError(f"steps={steps} per block is more than {where}; use 1..{size} "
                         f"(steps={size} commits one token per step)")


def block_budget(gen_length: int, tokens_per_step: int | None, block_length: int | None = None,
                 device: torch.device | str | None = None,
                 steps: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The step budget: (block_id [L] long, the block of each generated position; budget [nb] long,
    steps for block j of B_j positions: ceil(B_j / K), or min(S, B_j) with `steps` = S, which wins
    over K). K = None: one step per block; block_length None: one block."""
    check_steps(steps, gen_length, block_length)
    block = block_length or gen_length
    block_id = torch.arange(gen_length, device=device) // block  # [L]
    sizes = torch.bincount(block_id)  # [nb]
    return block_id, answer_budget(sizes, tokens_per_step or block, steps)  # [L], [nb]


def steps_for(gen_length: int, tokens_per_step: int | None, block_length: int | None = None,
              steps: int | None = None) -> int:
    """Forwards a top-k policy takes: sum over blocks of ceil(block / K) (or of min(S, block))."""
    return int(block_budget(gen_length, tokens_per_step, block_length, steps=steps)[1].sum())


def check_budget_options(tokens_per_step: int | None, steps: int | None) -> None:
    """`steps` replaces `tokens_per_step`: both set (K other than its default 1) is refused."""
    check_whole_number("tokens_per_step", tokens_per_step, "all at once")
    check_whole_number("steps", steps, "a budget from tokens_per_step")
    if steps is not None and tokens_per_step not in (None, 1):
        raise ValueError(f"give tokens_per_step ({tokens_per_step}) or steps per block ({steps}), not both")


@dataclass
class CommitLedger:
    """What every decoder records as it commits tokens: each row's log q of its committed tokens,
    the forwards each row took part in, and (on request) the step that committed each position."""

    log_prob: torch.Tensor  # [b] float64
    row_steps: torch.Tensor  # [b] long
    commit_step: torch.Tensor | None  # [b, L] long, -1 until committed

    @classmethod
    def start(cls, b: int, length: int, device: torch.device, trace: bool) -> "CommitLedger":
        return cls(torch.zeros(b, dtype=torch.float64, device=device), torch.zeros(b, dtype=torch.long, device=device),
                   torch.full((b, length), -1, dtype=torch.long, device=device) if trace else None)

    def record(self, ids: torch.Tensor, prompt_length: int, live: torch.Tensor | None, commit: torch.Tensor,
               tokens: torch.Tensor, token_log_q: torch.Tensor) -> None:
        """Write this step's committed `tokens` into `ids` and account for them.

        live [a] are the rows that ran this step (None: all of them), commit [a, L] bool the
        positions committed among them, tokens / token_log_q [n] one entry per committed position.
        """
        row_of = commit.nonzero()[:, 0]  # [n] row (within the live rows) of each committed token
        if live is None:
            ids[:, prompt_length:][commit] = tokens
            self.log_prob.index_add_(0, row_of, token_log_q)
            if self.commit_step is not None:
                self.commit_step[commit] = self.row_steps[row_of]
            self.row_steps += 1
            return
        gen = ids[live, prompt_length:]  # [a, L] (a copy)
        gen[commit] = tokens
        ids[live, prompt_length:] = gen
        self.log_prob.index_add_(0, live[row_of], token_log_q)
        if self.commit_step is not None:
            trace = self.commit_step[live]  # [a, L]
            trace[commit] = self.row_steps[live][row_of]
            self.commit_step[live] = trace
        self.row_steps[live] += 1


def finish_sample(layout: AnswerLayout, gen: torch.Tensor, ledger: CommitLedger, steps: int, rows: float,
                  eos_token_id: int | None) -> SampleOutput:
    """The SampleOutput of answers gen [b, L] decoded in `layout`, as `ledger` recorded them."""
    return SampleOutput(ids=layout.compose(gen), prompt_length=layout.prompt_width, steps=steps,
                        row_steps=ledger.row_steps, rows_per_sample=rows / layout.batch_size,
                        log_prob=ledger.log_prob, commit_step=ledger.commit_step,
                        prompt_lengths=None if layout.uniform else layout.prompt_lengths, eos_token_id=eos_token_id)


def fill_settled_answers(gen: torch.Tensor, mask_token_id: int, eos_token_id: int) -> torch.Tensor:
    """answers [b, L] -> [b, L]: in rows whose answer is settled (an EOS committed, every position
    before it committed), the positions still masked set to EOS."""
    masked = gen == mask_token_id  # [b, L]
    seen_eos = (gen == eos_token_id).long().cumsum(1) > 0  # [b, L] at or after the first EOS
    settled = seen_eos.any(1) & ~(masked & ~seen_eos).any(1)  # [b] no mask before the first EOS
    return gen.masked_fill(masked & settled[:, None], eos_token_id)


class UnmaskingSampler:
    """Hard-commit parallel decoder: a policy, a step budget, a temperature, blocks.

    policy          an UnmaskingPolicy (which positions to commit)
    tokens_per_step K >= 1, or None for a whole block per step
    temperature     T >= 0 (0 = greedy)
    block_length    semi-autoregressive blocks: positions of block j+1 are not eligible
                    until block j is complete (None: one block)
    name            what tables call it (default: the policy's registry name)
    steps           S sequential steps per block instead of K (1 <= S <= block length)
    stop_at_eos     a row stops once its answer is settled: an EOS committed and every position
                    before it committed; its open positions are filled with EOS, undrawn (commit_step
                    -1, nothing added to log_prob). The trimmed answers (`answer_ids`) have the same
                    law as without stopping (the stop is a stopping time and no later commit can change
                    a settled answer); `log_prob` is then the drawn tokens' log q, which is log
                    q(trimmed answer) only for l2r at one token per step.
    """

    def __init__(self, policy: UnmaskingPolicy, tokens_per_step: int | None = 1, temperature: float = 1.0,
                 block_length: int | None = None, name: str | None = None, steps: int | None = None,
                 stop_at_eos: bool = False):
        check_budget_options(tokens_per_step, steps)
        check_temperature(temperature)
        check_whole_number("block_length", block_length, "one block")
        if steps is not None and block_length is not None:
            check_steps(steps, block_length, block_length)
        self.policy = policy
        self.steps = None if steps is None else int(steps)
        self.tokens_per_step = None if tokens_per_step is None or steps is not None else int(tokens_per_step)
        self.temperature = float(temperature)
        self.block_length = None if block_length is None else int(block_length)
        self.name = name or policy.name
        self.stop_at_eos = bool(stop_at_eos)

    def __repr__(self) -> str:
        budget = f"steps={self.steps}" if self.steps is not None else f"tokens_per_step={self.tokens_per_step}"
        stop = ", stop_at_eos=True" if self.stop_at_eos else ""
        return (f"UnmaskingSampler({self.policy!r}, {budget}, "
                f"temperature={self.temperature}, block_length={self.block_length}, name={self.name!r}{stop})")

    @torch.no_grad()  # not inference_mode: samples feed later training (NCE negatives), which must be able to save them
    def sample(self, denoiser, prompt_ids: torch.Tensor, gen_length: int, generator: torch.Generator | None = None,
               *, return_trace: bool = False, prompt_attention_mask: torch.Tensor | None = None,
               eos_token_id: int | None = None) -> SampleOutput:
        """Generate `gen_length` tokens after each prompt (prompt forms and EOS: module docstring)."""
        layout = layout_request(denoiser, prompt_ids, gen_length, prompt_attention_mask)
        eos = resolve_eos(denoiser, eos_token_id)
        mask_id, device = int(denoiser.mask_token_id), layout.device
        b, length = layout.batch_size, layout.gen_length
        gen = layout.start(mask_id)  # [b, L]
        block_id, budget = block_budget(length, self.tokens_per_step, self.block_length, device, self.steps)
        blocks = len(budget)

        ledger = CommitLedger.start(b, length, device, return_trace)
        used = torch.zeros(b, dtype=torch.long, device=device)  # steps spent in the current block
        current_block = torch.full((b,), -1, dtype=torch.long, device=device)
        mask_index = torch.tensor([mask_id], device=device)
        steps = rows = 0
        policy = self.policy.for_denoiser(denoiser)

        with eval_mode(denoiser):
            while True:
                if self.stop_at_eos and eos is not None:
                    gen = fill_settled_answers(gen, mask_id, eos)  # [b, L]
                masked = gen == mask_id  # [b, L]
                active = masked.any(1)  # [b]
                n_active = int(active.sum())
                if n_active == 0:
                    break
                every = n_active == b
                live = None if every else active.nonzero().squeeze(1)  # [a]
                m = masked if every else masked[live]  # [a, L]

                block_now = torch.where(m, block_id, blocks).amin(1)  # [a]
                eligible = m & (block_id == block_now[:, None])  # [a, L]
                left = eligible.sum(1)  # [a]
                same = block_now == (current_block if every else current_block[live])
                spent = torch.where(same, used if every else used[live], 0)  # [a]
                quota = step_quota(left, budget[block_now] - spent)  # [a]

                x = layout.compose(gen if every else gen[live], live)  # [a, P+L]
                logits = layout.answer_logits(denoiser, live, input_ids=x)  # [a, L, V]
                logits = logits.index_fill(-1, mask_index, EXCLUDED_LOGIT)  # never commit a mask (out of place)
                commit = policy.select(logits, eligible, quota, generator)  # [a, L]
                tokens, token_log_q = gumbel_max(logits[commit], self.temperature, generator)  # [n], [n]

                ledger.record(gen, 0, live, commit, tokens, token_log_q)
                if every:
                    used, current_block = spent + 1, block_now
                else:
                    used[live], current_block[live] = spent + 1, block_now
                steps += 1
                rows += x.shape[0]
        return finish_sample(layout, gen, ledger, steps, rows, eos)
