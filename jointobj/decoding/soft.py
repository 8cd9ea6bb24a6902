"""Soft-state (uncommitted) decoding: positions keep a distribution until they are confident.

    from jointobj.decoding import build_decoder
    decoder = build_decoder("soft", tokens_per_step=1, threshold=0.9, mixing=1.0, breaker="gumbel", quota=False)
    out = decoder.sample(denoiser, prompt_ids, gen_length=8, generator=torch.Generator().manual_seed(0))

Each uncommitted answer position carries a state s, a distribution over the vocabulary. A
forward reads every position at once: prompt and committed tokens through their hard
embeddings, uncommitted ones through `(1 - a) * E[MASK] + a * sum_v s_v E[v]` (built by
`jointobj.model.soft_inputs`, the one place that mixes embeddings). From that forward's logits:

1. *commit*: every open position whose confidence max_v softmax(logits)_v (temperature 1,
   as the hard policies score) exceeds `threshold`, plus, with the `commit_one` breaker, the
   single most confident one; at the last step every open position. With `quota=True` at
   least the ceil(open / steps left) most confident commit each step, the hard samplers' even
   spread: the commit rule is then exactly the hard `threshold` decoder's (`ConfidenceThreshold`),
   so the two differ only in what the open positions show the model. A committed token is
   drawn from softmax(logits / T) (Gumbel-max in float64, `gumbel_max`) and never changes;
2. *refine*: every position still open gets the new state
   s = softmax((log softmax(logits / T) + noise) / state_temperature), cut to its `top_k`
   largest entries (the mask token never carries mass).

The first forward has no state yet: open positions are plain masks, i.e. it is the hard
sampler's first forward. Later forward s of S uses a_s = mixing * schedule(s, S).

Budget. `tokens_per_step = K` gives S = ceil(L / K) forwards at most (K = None: one), or
`steps = S` per block directly (1 <= S <= block length), like the hard samplers, so tables
compare decoders at equal sequential steps; rows whose positions are all committed earlier
stop (fewer forwards; `row_steps` counts them). With `block_length` B (semi-autoregressive, as
LLaDA), only the current block commits, each block gets ceil(B / K) (or S) steps and its last
step commits what is left of it; every open position, in any block, carries a state.

Symmetric states. On "he likes apple" / "i play tennis" the all-masked marginals are 50/50
everywhere and a symmetric soft state feeds back a symmetric prediction: a deterministic
decoder keeps every sample on one state trajectory until something commits, and what is
still open at the last step is drawn from one product of marginals (the marginal trap
again). A symmetry breaker is needed:

- `gumbel`: noise = scale * g, g standard Gumbel, fresh each step and position. At scale 1
  the state's argmax is an exact draw from softmax(logits / T) and the state is a
  Gumbel-softmax relaxed sample at temperature `state_temperature` (sharper below 1); a
  model that reads soft states pulls the other positions towards the mode it leans to;
- `commit_one`: commit the most confident position every step (hard evidence; with
  mixing = 0 and K = 1 this is exactly the hard `threshold` decoder);
- `none`: no breaker (see above; for measuring what the breakers buy).

A model trained only on hard masks reads mixtures of embeddings out of distribution: train it
with self-conditioning (`self_condition_prob`, jointobj.objectives.self_condition) first. The states
read at a step were computed before the previous step's commits and can contradict them, which
self-conditioning (fresh states, consistent with what is visible) never shows the model.
eval/soft_vs_hard.py compares it with the hard decoders at equal forwards.

log_prob. The sum over committed tokens of log softmax(logits / T) at the step that
committed them, as in the hard sampler. Given the state noise, the commit sets are a
function of the tokens committed before, so this is exactly log q(answer | prompt, noise);
with a deterministic breaker (`none`, `commit_one`) it is log q(answer | prompt). With the
`gumbel` breaker it is the conditional given the noise drawn, not the marginal q(answer |
prompt): importance weights p / q built on it are still unbiased on the space extended by the
noise (its law does not depend on the answer), but their variance is larger. T = 0: 0.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from jointobj.decoding.policies import ConfidenceThreshold, max_probability
from jointobj.decoding.registry import DECODERS
from jointobj.decoding.sampler import (
    EXCLUDED_LOGIT,
    CommitLedger,
    SampleOutput,
    _ceil_div,
    block_budget,
    check_budget_options,
    check_steps,
    check_temperature,
    eval_mode,
    finish_sample,
    gumbel_max,
    gumbel_noise,
    layout_request,
    resolve_eos,
)
from jointobj.model.soft_inputs import require_input_embeddings, soft_input_embeddings, soft_state
from jointobj.utils.checks import check_whole_number
from jointobj.utils.registry import Registry

__all__ = ["MIXING_SCHEDULES", "SYMMETRY_BREAKERS", "SoftStateDecoder", "SymmetryBreaker"]

MIXING_SCHEDULES: Registry = Registry("mixing schedule")
SYMMETRY_BREAKERS: Registry[type] = Registry("symmetry breaker")


@MIXING_SCHEDULES.register("constant")
def constant_mixing(step: int, steps: int) -> float:
    """The full mixing weight at every forward that has a state."""
    return 1.0


@MIXING_SCHEDULES.register("linear")
def rising_mixing(step: int, steps: int) -> float:
    """Rising from 1 / (S - 1) at the second forward to 1 at the last: trust states more as they sharpen."""
    return step / max(1, steps - 1)


# ---------------------------------------------------------------- symmetry breakers


class SymmetryBreaker:
    """Base class: `perturb` the state logits [a, L, V]; `commits_one` forces the most
    confident open position to commit every step."""

    name: ClassVar[str]
    commits_one: ClassVar[bool] = False

    @classmethod
    def from_options(cls, noise: float) -> "SymmetryBreaker":
        return cls()

    def perturb(self, logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return logits

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


@SYMMETRY_BREAKERS.register("none")
class NoBreaker(SymmetryBreaker):
    """Nothing: states are a deterministic function of the committed tokens."""

    name = "none"


@SYMMETRY_BREAKERS.register("gumbel")
class GumbelStateNoise(SymmetryBreaker):
    """Adds scale * g to the state's log-probabilities, g ~ Gumbel(0, 1) fresh per step and position."""

    name = "gumbel"

    def __init__(self, scale: float = 1.0):
        if not scale > 0:
            raise ValueError(f"the Gumbel noise scale must be > 0, got {scale}; 1 makes the state a relaxed sample")
        self.scale = float(scale)

    @classmethod
    def from_options(cls, noise: float) -> "GumbelStateNoise":
        return cls(noise)

    def perturb(self, logits, generator):
        return logits + self.scale * gumbel_noise(logits.shape, generator, logits.device)  # [a, L, V] float64


@SYMMETRY_BREAKERS.register("commit_one")
class CommitMostConfident(SymmetryBreaker):
    """Commit the most confident open position every step, whatever the threshold."""

    name = "commit_one"
    commits_one = True


# ---------------------------------------------------------------- the decoder


class SoftStateDecoder:
    """Soft-state decoder (module docstring). Options:

    tokens_per_step K >= 1 or None: step budget S = ceil(L / K)
    steps           S steps per block instead of K (1 <= S <= block length)
    threshold       commit when confidence > threshold, in (0, 1]; 1 = nothing commits early
    mixing          a in [0, 1]: weight of the state against E[MASK] (0 = hard masks)
    schedule        how a moves over the forwards: a name in MIXING_SCHEDULES
    top_k           keep the k most likely tokens of each state (None: all)
    temperature     T >= 0 of committed tokens and states (0: argmax commits, one-hot states)
    state_temperature  > 0: sharpens (< 1) or flattens (> 1) states after the noise
    breaker         a name in SYMMETRY_BREAKERS or a SymmetryBreaker; noise: its Gumbel scale
    quota           commit at least ceil(open / steps left) per step (the hard samplers' spread)
    block_length    semi-autoregressive blocks: only the current block commits (None: one block)
    """

    name = "soft"

    def __init__(self, tokens_per_step: int | None = 1, *, threshold: float = 0.9, mixing: float = 1.0,
                 schedule: str = "constant", top_k: int | None = None, temperature: float = 1.0,
                 state_temperature: float = 0.25, breaker: str | SymmetryBreaker = "gumbel", noise: float = 1.0,
                 quota: bool = False, block_length: int | None = None, steps: int | None = None):
        check_budget_options(tokens_per_step, steps)
        check_whole_number("top_k", top_k, "the whole vocabulary")
        check_whole_number("block_length", block_length, "one block")
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must lie in (0, 1], got {threshold}; 0.9 is usual, 1 commits only at the end")
        if not 0.0 <= mixing <= 1.0:
            raise ValueError(f"mixing (a) must lie in [0, 1] (0 = plain masks, 1 = the state alone), got {mixing}")
        check_temperature(temperature)
        if not state_temperature > 0:
            raise ValueError(f"state_temperature must be > 0 (below 1 sharpens the states), got {state_temperature}")
        if steps is not None and block_length is not None:
            check_steps(steps, block_length, block_length)
        self.steps = None if steps is None else int(steps)
        self.tokens_per_step = None if tokens_per_step is None or steps is not None else int(tokens_per_step)
        self.top_k = None if top_k is None else int(top_k)
        self.block_length = None if block_length is None else int(block_length)
        self.threshold, self.mixing = float(threshold), float(mixing)
        self.temperature, self.state_temperature = float(temperature), float(state_temperature)
        self.schedule, self._schedule = schedule, MIXING_SCHEDULES.get(schedule)
        if not isinstance(breaker, SymmetryBreaker):
            breaker = SYMMETRY_BREAKERS.get(breaker).from_options(noise)
        self.breaker = breaker
        self.quota, self._quota_policy = bool(quota), ConfidenceThreshold(threshold)

    def __repr__(self) -> str:
        budget = f"steps={self.steps}" if self.steps is not None else f"tokens_per_step={self.tokens_per_step}"
        return (f"SoftStateDecoder({budget}, threshold={self.threshold}, "
                f"mixing={self.mixing}, schedule={self.schedule!r}, top_k={self.top_k}, "
                f"temperature={self.temperature}, state_temperature={self.state_temperature}, "
                f"breaker={self.breaker!r}, quota={self.quota}, block_length={self.block_length})")

    def _commit(self, logits: torch.Tensor, eligible: torch.Tensor, steps_left: torch.Tensor) -> torch.Tensor:
        """[a, L, V] logits, [a, L] eligible, [a] steps left in the block -> [a, L] positions to commit now."""
        if self.quota:  # at the block's last step the quota is everything eligible
            quota = _ceil_div(eligible.sum(1), steps_left)  # [a] ceil(open / steps left)
            return self._quota_policy.select(logits, eligible, quota)
        confidence = max_probability(logits).masked_fill(~eligible, -1.0)  # [a, L]
        commit = eligible & ((confidence > self.threshold) | (steps_left == 1)[:, None])  # [a, L]
        if self.breaker.commits_one:  # every live row has an eligible position, so its argmax is eligible
            commit[torch.arange(len(commit), device=commit.device), confidence.argmax(1)] = True
        return commit

    def _state(self, logits: torch.Tensor, mask_id: int, generator: torch.Generator | None) -> torch.Tensor:
        """[a, L, V] logits -> [a, L, V] states (mask token excluded, truncated, perturbed)."""
        if self.temperature == 0:
            return soft_state(logits, mask_id, temperature=0.0)
        log_p = (logits / self.temperature).log_softmax(-1)  # [a, L, V]
        return soft_state(self.breaker.perturb(log_p, generator), mask_id, self.state_temperature, self.top_k)

    @torch.no_grad()
    def sample(self, denoiser, prompt_ids: torch.Tensor, gen_length: int, generator: torch.Generator | None = None,
               *, return_trace: bool = False, prompt_attention_mask: torch.Tensor | None = None,
               eos_token_id: int | None = None) -> SampleOutput:
        """Generate `gen_length` tokens after each prompt (prompt forms and EOS: jointobj/decoding/sampler.py)."""
        require_input_embeddings(denoiser)
        layout = layout_request(denoiser, prompt_ids, gen_length, prompt_attention_mask)
        eos = resolve_eos(denoiser, eos_token_id)
        mask_id, device = int(denoiser.mask_token_id), layout.device
        b, length = layout.batch_size, layout.gen_length
        gen = layout.start(mask_id)  # [b, L]
        committed = torch.zeros(b, length, dtype=torch.bool, device=device)  # [b, L]
        state = None  # [b, L, V] once the first forward has run
        ledger = CommitLedger.start(b, length, device, return_trace)
        mask_index = torch.tensor([mask_id], device=device)

        block_id, block_steps = block_budget(length, self.tokens_per_step, self.block_length, device, self.steps)
        blocks, budget = len(block_steps), int(block_steps.sum())  # budget: the most forwards a row runs
        used = torch.zeros(b, dtype=torch.long, device=device)  # steps spent in the row's current block
        current = torch.zeros(b, dtype=torch.long, device=device)  # the row's current block
        steps = rows = 0

        with eval_mode(denoiser):
            while not committed.all():
                live = (~committed).any(1).nonzero().squeeze(1)  # [a]
                open_ = ~committed[live]  # [a, L]
                x = layout.compose(gen[live], live)  # [a, P+L]
                a = 0.0 if state is None else self.mixing * self._schedule(steps, budget)
                if a > 0:
                    soft = layout.answer_mask(live)  # [a, P+L]
                    soft[soft.clone()] = open_.flatten()  # the open answer positions read states
                    embeds = soft_input_embeddings(denoiser, x, soft, state[live][open_], a)  # [a, P+L, d]
                    logits = layout.answer_logits(denoiser, live, inputs_embeds=embeds)  # [a, L, V]
                else:  # plain masks: the same input through the cheaper id path
                    logits = layout.answer_logits(denoiser, live, input_ids=x)  # [a, L, V]
                logits = logits.index_fill(-1, mask_index, EXCLUDED_LOGIT)  # [a, L, V]

                block_now = torch.where(open_, block_id, blocks).amin(1)  # [a]
                spent = torch.where(block_now == current[live], used[live], 0)  # [a]
                eligible = open_ & (block_id == block_now[:, None])  # [a, L]
                steps_left = (block_steps[block_now] - spent).clamp(min=1)  # [a] 1: commit all of the block
                commit = self._commit(logits, eligible, steps_left)  # [a, L]
                tokens, token_log_q = gumbel_max(logits[commit], self.temperature, generator)  # [n], [n]
                ledger.record(gen, 0, live, commit, tokens, token_log_q)
                committed[live] = ~open_ | commit
                used[live], current[live] = spent + 1, block_now
                steps, rows = steps + 1, rows + len(live)

                if self.mixing > 0 and (open_ & ~commit).any():  # a = 0 never reads a state: draw no noise
                    refined = self._state(logits, mask_id, generator)  # [a, L, V]
                    if state is None:
                        state = refined.new_zeros(b, length, refined.shape[-1])  # [b, L, V]
                    state[live] = refined
        return finish_sample(layout, gen, ledger, steps, rows, eos)


DECODERS.register("soft")(SoftStateDecoder)
