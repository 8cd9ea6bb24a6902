"""The hard-commit parallel sampler: generate `gen_length` tokens after a prompt.

    from jointobj.decoding import UnmaskingSampler, ConfidenceTopK
    sampler = UnmaskingSampler(ConfidenceTopK(), tokens_per_step=2, temperature=1.0)
    out = sampler.sample(denoiser, prompt_ids, gen_length=8, generator=torch.Generator().manual_seed(0))
    out.ids            # [b, lp + 8]
    out.steps          # 4 sequential forwards

The answer starts fully masked. Each step runs one denoiser forward for the whole batch,
the policy picks which masked positions to commit, and those positions get a token drawn
from softmax(logits / T) (Gumbel-max in float64; T = 0 is argmax). A committed token is
never changed again (no remasking).

Step budget. With `tokens_per_step = K` each block of B positions (the whole answer when
`block_length` is None) gets ceil(B / K) steps; at a step with n masked positions left in
the block and s steps left, the quota is ceil(n / s) (LLaDA's even spread), so the answer
takes exactly sum_blocks ceil(B / K) forwards under top-k policies. Adaptive policies
(threshold, entropy-bounded) may commit more than the quota and finish early; the quota
is their floor, so K is a cap on their steps, and `tokens_per_step` on the output is the
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
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

import torch

if TYPE_CHECKING:  # policies.py imports this module's noise helpers
    from jointobj.decoding.policies import UnmaskingPolicy

__all__ = ["SampleOutput", "UnmaskingSampler", "block_budget", "check_request", "eval_mode", "gumbel_max",
           "gumbel_noise", "start_answer", "steps_for", "uniform"]

# Logit given to the mask token: finite so entropies stay finite, exp() of it is exactly 0.
_EXCLUDED_LOGIT = -1e9


@dataclass
class SampleOutput:
    """What every decoder returns.

    ids             [b, lp + L] long   prompt then generated tokens
    prompt_length   lp
    steps           sequential denoiser forwards the batch ran (nfe)
    row_steps       [b] long           forwards each sample took part in
    rows_per_sample forward rows per sample (compute)
    log_prob        [b] float64        log-probability of the sample under the sampler (see module doc)
    commit_step     [b, L] long | None step (0-based, per sample) at which each generated position
                                       was committed; only when asked for (`return_trace=True`)
    """

    ids: torch.Tensor
    prompt_length: int
    steps: int
    row_steps: torch.Tensor
    rows_per_sample: float
    log_prob: torch.Tensor
    commit_step: torch.Tensor | None = None

    @property
    def gen_ids(self) -> torch.Tensor:
        return self.ids[:, self.prompt_length :]  # [b, L]

    @property
    def gen_length(self) -> int:
        return self.ids.shape[1] - self.prompt_length

    @property
    def nfe(self) -> int:
        return self.steps

    @property
    def steps_per_sample(self) -> float:
        return float(self.row_steps.double().mean())

    @property
    def tokens_per_step(self) -> float:
        """Measured: generated tokens / sequential steps, averaged over samples' steps."""
        return self.gen_length / self.steps_per_sample


# ---------------------------------------------------------------- noise, shared by every decoder


def uniform(shape: tuple[int, ...] | torch.Size, generator: torch.Generator | None, device: torch.device | str,
            dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """U[0, 1) draws of `shape` from `generator`, made on the generator's own device (a CUDA
    generator draws on the GPU, a CPU one on the CPU, so a seed gives the same stream wherever
    the model runs), then moved to `device`."""
    source = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, dtype=dtype, device=source).to(device)


def gumbel_noise(shape: tuple[int, ...] | torch.Size, generator: torch.Generator | None,
                 device: torch.device | str) -> torch.Tensor:
    """Standard Gumbel draws -log(-log u), float64. In float32 u cannot come closer to 1 than
    2^-24, which caps the noise at ~16.6 (float64: ~36.7) and truncates the tail a rare token
    needs to win (a known LLaDA sampler bug). u = 0 is clamped to the smallest positive number."""
    u = uniform(shape, generator, device).clamp_(min=torch.finfo(torch.float64).tiny)
    return -(-u.log()).log()


def gumbel_max(logits: torch.Tensor, temperature: float,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, V] logits -> (tokens [n] long, log q(token) [n] float64) for q = softmax(logits / T),
    drawn as argmax(log q + Gumbel noise) with float64 noise (`gumbel_noise`).
    T = 0 is argmax, with log q = 0 (the choice is deterministic).
    """
    if temperature == 0:
        return logits.argmax(-1), torch.zeros(logits.shape[0], dtype=torch.float64, device=logits.device)
    log_q = (logits.double() / temperature).log_softmax(-1)  # [n, V]
    tokens = (log_q + gumbel_noise(logits.shape, generator, logits.device)).argmax(-1)  # [n]
    return tokens, log_q.gather(1, tokens[:, None]).squeeze(1)


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


def check_whole_number(name: str, value: Any, none_means: str | None = None) -> None:
    """A count option: a whole number >= 1 (a bool is not one), or None where `none_means` says what None does."""
    if value is None and none_means is not None:
        return
    try:
        whole = not isinstance(value, bool) and int(value) == value and value >= 1
    except (TypeError, ValueError):
        whole = False
    if not whole:
        alternative = f" (or None for {none_means})" if none_means else ""
        raise ValueError(f"{name} must be a whole number >= 1{alternative}, got {value!r}")


def check_request(denoiser: Any, prompt_ids: torch.Tensor, gen_length: int) -> None:
    """What every decoder checks before its first forward: a [batch, prompt_length] prompt, a
    whole gen_length >= 1, and prompt + answer within the model's positions."""
    if not isinstance(prompt_ids, torch.Tensor) or prompt_ids.dim() != 2:
        shape = tuple(prompt_ids.shape) if isinstance(prompt_ids, torch.Tensor) else type(prompt_ids).__name__
        raise ValueError(f"prompt_ids must be a [batch, prompt_length] tensor, got {shape}; "
                         "for one prompt use prompt_ids[None]")
    check_whole_number("gen_length", gen_length)
    limit = getattr(denoiser, "max_positions", None)
    total = prompt_ids.shape[1] + gen_length
    if isinstance(limit, int) and total > limit:
        raise ValueError(f"prompt ({prompt_ids.shape[1]}) + gen_length ({gen_length}) = {total} tokens, longer than "
                         f"the model's {limit} positions; shorten the prompt or generate fewer tokens")


def start_answer(denoiser: Any, prompt_ids: torch.Tensor, gen_length: int) -> torch.Tensor:
    """[b, lp] prompts -> [b, lp + L] long on the denoiser's device: the prompt, then L masks."""
    device = getattr(denoiser, "device", prompt_ids.device)
    b = prompt_ids.shape[0]
    masks = torch.full((b, int(gen_length)), int(denoiser.mask_token_id), dtype=torch.long, device=device)
    return torch.cat([prompt_ids.to(device).long(), masks], 1)  # [b, lp+L]


def _ceil_div(a: torch.Tensor, b: torch.Tensor | int) -> torch.Tensor:
    return -torch.div(-a, b, rounding_mode="floor")


def block_budget(gen_length: int, tokens_per_step: int | None, block_length: int | None = None,
                 device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The step budget: (block_id [L] long, the block of each generated position; budget [nb] long,
    ceil(B_j / K) steps for block j of B_j positions). K = None: one step per block; block_length
    None: one block."""
    block = block_length or gen_length
    block_id = torch.arange(gen_length, device=device) // block  # [L]
    return block_id, _ceil_div(torch.bincount(block_id), tokens_per_step or block)  # [L], [nb]


def steps_for(gen_length: int, tokens_per_step: int | None, block_length: int | None = None) -> int:
    """Forwards a top-k policy takes: sum over blocks of ceil(block / K)."""
    return int(block_budget(gen_length, tokens_per_step, block_length)[1].sum())


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


class UnmaskingSampler:
    """Hard-commit parallel decoder: a policy, a tokens-per-step budget, a temperature, blocks.

    policy          an UnmaskingPolicy (which positions to commit)
    tokens_per_step K >= 1, or None for a whole block per step
    temperature     T >= 0 (0 = greedy)
    block_length    semi-autoregressive blocks: positions of block j+1 are not eligible
                    until block j is complete (None: one block)
    name            what tables call it (default: the policy's registry name)
    """

    def __init__(self, policy: UnmaskingPolicy, tokens_per_step: int | None = 1, temperature: float = 1.0,
                 block_length: int | None = None, name: str | None = None):
        check_whole_number("tokens_per_step", tokens_per_step, "all at once")
        if not temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
        check_whole_number("block_length", block_length, "one block")
        self.policy = policy
        self.tokens_per_step = None if tokens_per_step is None else int(tokens_per_step)
        self.temperature = float(temperature)
        self.block_length = None if block_length is None else int(block_length)
        self.name = name or policy.name

    def __repr__(self) -> str:
        return (f"UnmaskingSampler({self.policy!r}, tokens_per_step={self.tokens_per_step}, "
                f"temperature={self.temperature}, block_length={self.block_length}, name={self.name!r})")

    @torch.no_grad()  # not inference_mode: samples feed later training (NCE negatives), which must be able to save them
    def sample(self, denoiser, prompt_ids: torch.Tensor, gen_length: int, generator: torch.Generator | None = None,
               *, return_trace: bool = False) -> SampleOutput:
        """Generate `gen_length` tokens after each row of `prompt_ids [b, lp]` (attention all ones)."""
        check_request(denoiser, prompt_ids, gen_length)
        ids = start_answer(denoiser, prompt_ids, gen_length)  # [b, lp+L]
        device, mask_id = ids.device, int(denoiser.mask_token_id)
        (b, lp), length = prompt_ids.shape, int(gen_length)
        attention = torch.ones_like(ids)  # [b, lp+L]
        block_id, budget = block_budget(length, self.tokens_per_step, self.block_length, device)  # [L], [nb]
        blocks = len(budget)

        ledger = CommitLedger.start(b, length, device, return_trace)
        used = torch.zeros(b, dtype=torch.long, device=device)  # steps spent in the current block
        current_block = torch.full((b,), -1, dtype=torch.long, device=device)
        mask_index = torch.tensor([mask_id], device=device)
        steps = rows = 0

        with eval_mode(denoiser):
            while True:
                masked = ids[:, lp:] == mask_id  # [b, L]
                active = masked.any(1)  # [b]
                n_active = int(active.sum())
                if n_active == 0:
                    break
                every = n_active == b
                live = None if every else active.nonzero().squeeze(1)  # [a]
                x = ids if every else ids[live]  # [a, lp+L]
                m = masked if every else masked[live]  # [a, L]

                block_now = torch.where(m, block_id, blocks).amin(1)  # [a]
                eligible = m & (block_id == block_now[:, None])  # [a, L]
                left = eligible.sum(1)  # [a]
                same = block_now == (current_block if every else current_block[live])
                spent = torch.where(same, used if every else used[live], 0)  # [a]
                quota = _ceil_div(left, (budget[block_now] - spent).clamp(min=1))  # [a]

                logits = denoiser(input_ids=x, attention_mask=attention[: x.shape[0]])[:, lp:]  # [a, L, V]
                logits = logits.index_fill(-1, mask_index, _EXCLUDED_LOGIT)  # never commit a mask (out of place)
                commit = self.policy.select(logits, eligible, quota, generator)  # [a, L]
                tokens, token_log_q = gumbel_max(logits[commit], self.temperature, generator)  # [n], [n]

                ledger.record(ids, lp, live, commit, tokens, token_log_q)
                if every:
                    used, current_block = spent + 1, block_now
                else:
                    used[live], current_block[live] = spent + 1, block_now
                steps += 1
                rows += x.shape[0]
        return SampleOutput(ids=ids, prompt_length=lp, steps=steps, row_steps=ledger.row_steps,
                            rows_per_sample=rows / b, log_prob=ledger.log_prob, commit_step=ledger.commit_step)

