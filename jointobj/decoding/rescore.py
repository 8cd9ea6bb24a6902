"""Energy rescoring of parallel samples: best-of-N and sampling-importance-resampling (SIR),
after the denoising loop or inside it.

    from jointobj.decoding import build_decoder
    from jointobj.decoding.rescore import best_of_n, sampling_importance_resampling
    out = best_of_n(build_decoder("random", None), "self:l2r:all", denoiser, prompts, 3, candidates=8)
    out = sampling_importance_resampling(decoder, energy, denoiser, prompts, 3, candidates=8, generator=g)
    decoder = build_decoder("confidence", 4, rescore="sir:exact,16,step")   # any spec, by name

**After the loop** (`end`): the N candidates of every prompt are drawn together, as one batch of
b*N rows, by any decoder; each is scored by an energy (energies.py) and one is kept:

- `best`: the lowest energy (ties: the first drawn). Buys validity, costs diversity.
- `sir`: drawn with weights ∝ exp(-E(y)) / q(y), q(y) = the decoder's own probability of y
  (`SampleOutput.log_prob`: exact for the deterministic policies, and for `random` given the
  order it drew, see sampler.py).
  As N grows the kept sample's law tends to p ∝ exp(-E); for a decoder whose log_prob is
  unknown (NaN) SIR is refused (use best-of-N). A `residual` energy (a head trained the EDLM
  way) is relative to the sampler it was trained against, so its weights are exp(-E(y)), and
  SIR with it is refused for any other proposal and inside the loop (`check_residual`).

A prompt whose N candidates all have infinite energy (e.g. none valid under the exact energy)
keeps a uniformly drawn one (`best`: the first) and is counted in `fallback`.

**Inside the loop** (`loop`, `step`, `fused`): at every denoising
step the policy picks this step's positions from the current marginals, N candidates are drawn
from those marginals, scored, one kept or resampled, and only this step's positions are
committed from it. `loop` draws *complete* candidates (every masked position; any energy);
`step` and `fused` draw only this step's positions and score the partial sequence, the rest
left masked (energies that marginalise masks: self, exact). Committed tokens are context.

Cost, counted as jointobj.evaluation.metrics.Cost counts it (`steps`, `row_steps`, `rows_per_sample`):
- after the loop: the decoder's steps (a sample waits for its slowest candidate) + the energy's
  step; rows = N x the decoder's rows + N x the energy's rows per candidate;
- inside the loop (`loop`, `step`): each denoising step is the marginals forward (1 step, 1 row)
  then the energy (1 step, N x its rows): two sequential steps per denoising step (the exact
  energy is free: one);
- `fused` (the `step` scope): each candidate's energy forwards and one forward on its next
  state (this step's positions committed, the rest masked) depend only on the candidates, so
  they are one sequential step, as a K-block likelihood is; the kept candidate's lookahead *is*
  the next step's marginals. 1 + D sequential steps for D denoising steps, N (K + 1) rows per
  denoising step with a K-block self energy (its first block repeats the marginals forward and
  is counted anyway). Steps count dependency depth, not calls: here the energy and the
  lookahead are two calls. The learned head is not fused: it scores complete sequences only.

The kept sample's probability is not tractable, so `log_prob` is NaN on every rescored output.

Prompts of different lengths and EOS as every decoder takes them (jointobj/decoding/sampler.py):
candidates sit in the decoder's layout (prompt, answer, padding after) and are scored with
their attention mask; for a mask-blind model, one energy call per prompt length, which
together count as one sequential step (the largest of their steps) and add their rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from jointobj.decoding.energies import Energy, EnergyCost, build_energy
from jointobj.decoding.layout import AnswerLayout
from jointobj.decoding.sampler import (
    EXCLUDED_LOGIT,
    SampleOutput,
    UnmaskingSampler,
    block_budget,
    eval_mode,
    gumbel_max,
    gumbel_noise,
    layout_request,
    resolve_eos,
    step_quota,
)
from jointobj.utils.checks import check_whole_number
from jointobj.utils.registry import Registry

__all__ = ["RESCORING", "SELECTIONS", "EndOfLoopRescoring", "InLoopRescoring", "RescoreSpec", "RescoredOutput",
           "best_of_n", "check_residual", "importance_log_weights", "sampling_importance_resampling", "select_best",
           "select_sir", "with_rescoring"]

Selection = Callable[..., tuple[torch.Tensor, torch.Tensor]]
SELECTIONS: Registry[Selection] = Registry("rescoring mode")
RESCORING: Registry[type] = Registry("rescoring place")


@dataclass
class RescoredOutput(SampleOutput):
    """SampleOutput plus what the rescorer saw (end of loop: per candidate; in loop: totals).

    candidates          [b, N, L] long | None   the drawn answers (after the loop)
    chosen              [b] long | None         index of the kept one
    energy              [b, N] float64 | None   their energies
    candidate_log_prob  [b, N] float64 | None   their proposal log-probabilities
    fallback            [b] long                selections where no candidate had a finite weight
    energy_steps        of `steps`, those spent on energies
    """

    candidates: torch.Tensor | None = None
    chosen: torch.Tensor | None = None
    energy: torch.Tensor | None = None
    candidate_log_prob: torch.Tensor | None = None
    fallback: torch.Tensor | None = None
    energy_steps: int = 0


# ---------------------------------------------------------------- choosing one of N


def importance_log_weights(energy: torch.Tensor, log_q: torch.Tensor, residual: bool = False) -> torch.Tensor:
    """[b, N] log w = -E - log q (residual energies: -E); -inf where E = +inf."""
    if residual:
        return -energy
    if torch.isnan(log_q).any():
        raise ValueError("SIR needs the proposal's probability of each candidate, and this decoder does not know it "
                         "(log_prob is NaN); use best-of-N, or a decoder with an exact log_prob (random, l2r)")
    return -energy - log_q


@SELECTIONS.register("best")
def select_best(energy: torch.Tensor, log_q: torch.Tensor, residual: bool = False,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """[b, N] -> (index [b] of the lowest energy, first on ties; fallback [b] bool: all +inf or NaN)."""
    clean = torch.where(torch.isnan(energy), math.inf, energy.double())  # [b, N]
    return clean.argmin(-1), ~torch.isfinite(clean).any(-1)


@SELECTIONS.register("sir")
def select_sir(energy: torch.Tensor, log_q: torch.Tensor, residual: bool = False,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """[b, N] -> (index [b] drawn ∝ exp(-E) / q, fallback [b] bool: no candidate has a positive
    weight, so one is drawn uniformly). Drawn by Gumbel-max, argmax(log w + g) with float64
    noise (`gumbel_noise`); a NaN weight counts as 0."""
    log_w = importance_log_weights(energy.double(), log_q.double(), residual)  # [b, N]
    log_w = log_w.nan_to_num(nan=-math.inf, posinf=math.inf, neginf=-math.inf)
    fallback = (log_w == -math.inf).all(-1)  # [b]
    log_w[fallback] = 0.0  # uniform over the row's candidates
    return (log_w + gumbel_noise(log_w.shape, generator, log_w.device)).argmax(-1), fallback  # [b], [b]


def _check_candidates(candidates: Any) -> int:
    return check_whole_number("the number of candidates N", candidates)


@dataclass(frozen=True)
class RescoreSpec:
    """`MODE:ENERGY,N[,WHERE]`, e.g. `best:self:l2r:4,8`, `sir:exact,16,step`, `sir:head,8,loop`.

    MODE best | sir; ENERGY an energy spec (energies.py) or an Energy; N >= 1 candidates;
    WHERE end (default, after the loop) | loop (in the loop, complete candidates) | step (in
    the loop, only this step's positions drawn and scored) | fused (step, with scoring and the
    next step's marginals in one sequential step)."""

    mode: str
    energy: "str | Energy"
    candidates: int
    where: str = "end"

    def __post_init__(self) -> None:
        SELECTIONS.get(self.mode)
        RESCORING.get(self.where)
        _check_candidates(self.candidates)

    @classmethod
    def parse(cls, text: "str | RescoreSpec") -> "RescoreSpec":
        if isinstance(text, RescoreSpec):
            return text
        fields = [f.strip() for f in str(text).split(",")]
        head = fields[0].split(":", 1)
        if len(head) != 2 or len(fields) not in (2, 3) or not fields[1].isdigit():
            raise ValueError(f"rescore spec {text!r} is not MODE:ENERGY,N[,WHERE]; e.g. 'best:self:l2r:4,8' or "
                             f"'sir:exact,16,step' (modes: {', '.join(SELECTIONS)}; places: {', '.join(RESCORING)})")
        return cls(head[0], head[1], int(fields[1]), fields[2] if len(fields) == 3 else "end")

    def __str__(self) -> str:
        energy = self.energy if isinstance(self.energy, str) else self.energy.spec
        return f"{self.mode}:{energy},{self.candidates}" + ("" if self.where == "end" else f",{self.where}")


def _bind(energy: "str | Energy", denoiser: Any) -> Energy:
    """A spec is bound to the denoiser being sampled (and, for `exact`, an oracle's own sets)."""
    return build_energy(energy, denoiser=denoiser)


def check_residual(energy: "str | Energy", mode: str, decoder: Any, in_loop: bool) -> None:
    """SIR with a residual energy (p ∝ q_train exp(-E)) weighs by exp(-E): right only when the
    proposal is the very sampler it was trained against (same policy, K, temperature, blocks and
    options: compared by repr), after the loop. Refuse anything else, and a residual energy whose
    sampler is not recorded."""
    if isinstance(energy, str) or not energy.residual or mode != "sir":
        return
    advice = ("Use best-of-N, that sampler after the loop, or a head trained with "
              "parameterisation absolute (the energy objective's keyword argument)")
    trained = energy.trained_against
    expected = (trained or {}).get("repr")  # the sampler's repr, recorded when the energy was trained
    if not expected:
        raise ValueError(f"the {energy.spec!r} energy is residual, relative to the sampler it was trained against, "
                         f"and that sampler is not recorded (trained_against is {trained!r}); SIR would target an "
                         f"unknown distribution. {advice}")
    if in_loop or repr(decoder) != expected:
        where = "inside the loop" if in_loop else f"with {decoder!r}"
        raise ValueError(f"the {energy.spec!r} energy is residual, relative to the sampler it was trained against "
                         f"({expected}); SIR {where} would target another distribution. {advice}")


# ---------------------------------------------------------------- after the loop


@RESCORING.register("end")
class EndOfLoopRescoring:
    """Any decoder's N candidates per prompt (one batch of b*N rows), rescored (module doc)."""

    def __init__(self, decoder: Any, spec: RescoreSpec):
        check_residual(spec.energy, spec.mode, decoder, in_loop=False)
        self.decoder, self.spec = decoder, spec
        self.name = f"{decoder.name}+{spec}"

    @torch.no_grad()
    def sample(self, denoiser: Any, prompt_ids: torch.Tensor, gen_length: int, generator: torch.Generator | None = None,
               *, return_trace: bool = False, prompt_attention_mask: torch.Tensor | None = None,
               eos_token_id: int | None = None) -> RescoredOutput:
        with eval_mode(denoiser):  # the energy's forwards too: no dropout in the scores
            layout = layout_request(denoiser, prompt_ids, gen_length, prompt_attention_mask)
            return self._sample(denoiser, layout, generator, return_trace, resolve_eos(denoiser, eos_token_id))

    def _sample(self, denoiser: Any, layout: AnswerLayout, generator: torch.Generator | None, return_trace: bool,
                eos: int | None) -> RescoredOutput:
        energy, n = _bind(self.spec.energy, denoiser), self.spec.candidates
        check_residual(energy, self.spec.mode, self.decoder, in_loop=False)
        b, lengths = layout.batch_size, layout.prompt_lengths.repeat_interleave(n)  # [b*N]
        extra = {} if eos is None else {"eos_token_id": eos}
        if not layout.uniform:  # decoders of the old contract take equal-length prompts only
            extra["prompt_attention_mask"] = torch.arange(layout.prompt_width, device=layout.device) < lengths[:, None]
        inner = self.decoder.sample(denoiser, layout.prompt_ids.repeat_interleave(n, 0), layout.gen_length, generator,
                                    return_trace=return_trace, **extra)  # b*N rows, a prompt's candidates adjacent
        rows = torch.arange(b, device=layout.device).repeat_interleave(n)  # [b*N] prompt of each candidate
        context = layout.attention_mask(rows) & ~layout.answer_mask(rows)  # [b*N, P+L] the prompt
        scores, cost = score_candidates(energy, layout, inner.ids, context, rows)  # [b*N]
        scores = scores.view(b, n)  # [b, N]
        log_q = inner.log_prob.view(b, n).double()  # [b, N]
        index, fallback = SELECTIONS.get(self.spec.mode)(scores, log_q, energy.residual, generator)  # [b], [b]
        kept = torch.arange(b, device=index.device) * n + index  # [b] rows of the batch
        row_steps = inner.row_steps.view(b, n).amax(1) + cost.steps  # a sample waits for its slowest candidate
        return RescoredOutput(
            ids=inner.ids[kept], prompt_length=inner.prompt_length, steps=inner.steps + cost.steps,
            row_steps=row_steps, rows_per_sample=inner.rows_per_sample * n + cost.rows / b,
            log_prob=torch.full((b,), math.nan, dtype=torch.float64, device=index.device),
            commit_step=None if inner.commit_step is None else inner.commit_step[kept],
            prompt_lengths=None if layout.uniform else layout.prompt_lengths, eos_token_id=eos,
            candidates=inner.gen_ids.view(b, n, -1), chosen=index, energy=scores, candidate_log_prob=log_q,
            fallback=fallback.long(), energy_steps=cost.steps)


def score_candidates(energy: Energy, layout: AnswerLayout, ids: torch.Tensor, context: torch.Tensor,
                     rows: torch.Tensor) -> tuple[torch.Tensor, EnergyCost]:
    """Energies [r] float64 of candidates ids [r, P + L] in `layout` (prompt of `rows` [r]) with their
    context [r, P + L], and what they cost: one call with the attention mask, rows of one length
    trimmed and unmasked, and for a mask-blind model one call per length (one sequential step)."""
    lengths = layout.lengths[rows]  # [r]
    groups = [torch.arange(len(rows), device=rows.device)]
    if layout.mask_blind and not bool((lengths == lengths[0]).all()):
        groups = [(lengths == length).nonzero().squeeze(1) for length in lengths.unique().tolist()]
    scores = torch.empty(len(rows), dtype=torch.float64, device=ids.device)
    steps, cost_rows = 0, 0.0
    for group in groups:
        width = int(lengths[group].max())
        attention = None
        if not bool((lengths[group] == width).all()):
            attention = (torch.arange(width, device=ids.device) < lengths[group][:, None]).long()  # [g, w]
        part_ids, part_context = ids[group, :width], context[group, :width]  # [g, w]
        scores[group] = energy(part_ids, part_context, attention).double().to(ids.device)
        cost = energy.cost(part_context, attention)
        steps, cost_rows = max(steps, cost.steps), cost_rows + cost.rows
    return scores, EnergyCost(steps, cost_rows)


def best_of_n(decoder: Any, energy: "str | Energy", denoiser: Any, prompt_ids: torch.Tensor, gen_length: int,
              candidates: int, generator: torch.Generator | None = None) -> RescoredOutput:
    """The lowest-energy of `candidates` samples of `decoder` per prompt (see module doc)."""
    return EndOfLoopRescoring(decoder, RescoreSpec("best", energy, candidates)).sample(
        denoiser, prompt_ids, gen_length, generator)


def sampling_importance_resampling(decoder: Any, energy: "str | Energy", denoiser: Any, prompt_ids: torch.Tensor,
                                   gen_length: int, candidates: int,
                                   generator: torch.Generator | None = None) -> RescoredOutput:
    """One of `candidates` samples per prompt, drawn with weights ∝ exp(-E(y)) / q(y) (see module doc)."""
    return EndOfLoopRescoring(decoder, RescoreSpec("sir", energy, candidates)).sample(
        denoiser, prompt_ids, gen_length, generator)


# ---------------------------------------------------------------- inside the loop


class InLoopRescoring:
    """At every denoising step: N candidates from the current marginals, one kept, this step's
    positions committed from it. Takes a hard-commit sampler's policy, budget and temperature."""

    scope: str = "complete"
    fused: bool = False  # score and look ahead in one sequential step (see FusedStepRescoring)

    def __init__(self, decoder: Any, spec: RescoreSpec):
        if not isinstance(decoder, UnmaskingSampler):
            raise ValueError(f"in-loop rescoring drives a hard-commit policy (random, l2r, confidence, ...); "
                             f"{getattr(decoder, 'name', decoder)!r} is not one. Rescore it after the loop ('end')")
        if decoder.block_length is not None:
            raise ValueError("in-loop rescoring takes no block_length; leave it unset")
        if self.scope == "step" and not isinstance(spec.energy, str) and not spec.energy.accepts_masks:
            raise ValueError(f"the {spec.energy.spec!r} energy cannot score partial candidates; use 'loop' "
                             "(complete candidates) or an energy that marginalises masks (self, exact)")
        check_residual(spec.energy, spec.mode, decoder, in_loop=True)
        self.sampler, self.spec = decoder, spec
        self.name = f"{decoder.name}+{spec}"

    @torch.no_grad()
    def sample(self, denoiser: Any, prompt_ids: torch.Tensor, gen_length: int, generator: torch.Generator | None = None,
               *, return_trace: bool = False, prompt_attention_mask: torch.Tensor | None = None,
               eos_token_id: int | None = None) -> RescoredOutput:
        with eval_mode(denoiser):  # marginals, energies and lookaheads alike: no dropout
            energy = _bind(self.spec.energy, denoiser)
            if self.scope == "step" and not energy.accepts_masks:
                raise ValueError(f"the {energy.spec!r} energy cannot score partial candidates; "
                                 "use 'loop' or self / exact")
            check_residual(energy, self.spec.mode, self.sampler, in_loop=True)
            layout = layout_request(denoiser, prompt_ids, gen_length, prompt_attention_mask)
            return self._sample(denoiser, energy, layout, generator, return_trace, resolve_eos(denoiser, eos_token_id))

    def _sample(self, denoiser: Any, energy: Energy, layout: AnswerLayout, generator: torch.Generator | None,
                return_trace: bool, eos: int | None) -> RescoredOutput:
        n, sampler = self.spec.candidates, self.sampler
        mask_id, device = int(denoiser.mask_token_id), layout.device
        b, length = layout.batch_size, layout.gen_length
        gen = layout.start(mask_id)  # [b, L]
        budget = int(block_budget(length, sampler.tokens_per_step, steps=sampler.steps)[1].sum())  # denoising steps
        denoising = torch.zeros(b, dtype=torch.long, device=device)  # denoising steps per sample
        row_steps = torch.zeros(b, dtype=torch.long, device=device)  # sequential steps per sample
        fallback = torch.zeros(b, dtype=torch.long, device=device)
        commit_step = torch.full((b, length), -1, dtype=torch.long, device=device) if return_trace else None
        mask_index = torch.tensor([mask_id], device=device)
        steps = energy_steps = 0
        rows = 0.0
        ahead: torch.Tensor | None = None  # fused: [b, L, V] marginals of each state, from the last lookahead
        policy = sampler.policy.for_denoiser(denoiser)
        while True:
            masked = gen == mask_id  # [b, L]
            live = masked.any(1).nonzero().squeeze(1)  # [a]
            if len(live) == 0:
                break
            g, m = gen[live], masked[live]  # [a, L], [a, L]
            quota = step_quota(m.sum(1), budget - denoising[live])  # [a] ceil(open / steps left)
            if ahead is None:  # the marginals forward: its own sequential step
                logits = layout.answer_logits(denoiser, live, input_ids=layout.compose(g, live))  # [a, L, V]
                logits = logits.index_fill(-1, mask_index, EXCLUDED_LOGIT)
                steps, rows = steps + 1, rows + len(live)
                row_steps[live] += 1
            else:
                logits = ahead[live]  # [a, L, V], computed with last step's scoring
            commit = policy.select(logits, m, quota, generator)  # [a, L]
            draw = m if self.scope == "complete" else commit  # [a, L] positions each candidate fills
            tokens, token_log_q = gumbel_max(logits[draw].repeat(n, 1), sampler.temperature, generator)  # [N*t]
            candidates = g.unsqueeze(0).repeat(n, 1, 1)  # [N, a, L]
            candidates[:, draw] = tokens.view(n, -1)
            owner = draw.nonzero()[:, 0]  # [t] row of each drawn token
            log_q = torch.zeros(n, len(live), dtype=torch.float64, device=device).index_add_(
                1, owner, token_log_q.view(n, -1))  # [N, a]
            owners = live.repeat_interleave(n)  # [a*N] batch row of each candidate, a row's candidates adjacent
            flat = candidates.transpose(0, 1).reshape(-1, length)  # [a*N, L]
            given = torch.zeros(len(owners), layout.width, dtype=torch.bool, device=device)  # [a*N, P+L]
            given.scatter_(1, layout.answer_positions(owners), ~draw.repeat_interleave(n, 0))  # committed tokens
            context = given | (layout.attention_mask(owners) & ~layout.answer_mask(owners))  # and the prompt
            scores, cost = score_candidates(energy, layout, layout.compose(flat, owners), context, owners)
            index, fell = SELECTIONS.get(self.spec.mode)(scores.view(len(live), n), log_q.T, energy.residual,
                                                         generator)  # [a], [a]
            kept = candidates[index, torch.arange(len(live), device=device)]  # [a, L]
            gen[live] = torch.where(commit, kept, g)
            look = torch.zeros(len(live), dtype=torch.long, device=device)  # [a] 1 where a lookahead ran
            if self.fused:
                ahead, look, look_rows = self._look_ahead(denoiser, layout, g, candidates, commit, index, live, ahead,
                                                          mask_index)
                rows += look_rows
            if commit_step is not None:
                trace = commit_step[live]
                trace[commit] = denoising[live][commit.nonzero()[:, 0]]
                commit_step[live] = trace
            denoising[live] += 1
            row_steps[live] += torch.clamp(look, min=cost.steps)  # scoring and lookahead: one step when fused
            fallback[live] += fell.long()
            steps += max(cost.steps, int(look.max()))
            energy_steps, rows = energy_steps + cost.steps, rows + cost.rows
        return RescoredOutput(
            ids=layout.compose(gen), prompt_length=layout.prompt_width, steps=steps, row_steps=row_steps,
            rows_per_sample=rows / b, log_prob=torch.full((b,), math.nan, dtype=torch.float64, device=device),
            commit_step=commit_step, prompt_lengths=None if layout.uniform else layout.prompt_lengths,
            eos_token_id=eos, fallback=fallback, energy_steps=energy_steps)

    def _look_ahead(self, denoiser, layout: AnswerLayout, g: torch.Tensor, candidates: torch.Tensor,
                    commit: torch.Tensor, index: torch.Tensor, live: torch.Tensor, ahead: torch.Tensor | None,
                    mask_index: torch.Tensor):
        """Fused: a forward on every candidate's next state (its step positions committed), in the
        same batched step as its energy (both depend only on the candidates); the kept candidate's
        logits are the next step's marginals. Rows that finish now need none.
        g [a, L] the live answers, candidates [N, a, L]. Returns (ahead [b, L, V], look [a] long, rows run)."""
        n, length = candidates.shape[0], layout.gen_length
        state = torch.where(commit, candidates, g)  # [N, a, L] each candidate's next state
        open_rows = ((g == int(mask_index)) & ~commit).any(-1)  # [a] rows with positions left after this step
        look = open_rows.long()
        if not open_rows.any():
            return ahead, look, 0
        which = open_rows.nonzero().squeeze(1)  # [u]
        flat = state[:, which].transpose(0, 1).reshape(-1, length)  # [u*N, L]
        owners = live[which].repeat_interleave(n)  # [u*N]
        logits = layout.answer_logits(denoiser, owners, input_ids=layout.compose(flat, owners))  # [u*N, L, V]
        logits = logits.index_fill(-1, mask_index, EXCLUDED_LOGIT).view(len(which), n, *logits.shape[1:])
        if ahead is None:
            ahead = logits.new_zeros(layout.batch_size, *logits.shape[2:])  # [b, L, V]
        ahead[live[which]] = logits[torch.arange(len(which), device=logits.device), index[which]]
        return ahead, look, len(flat)


@RESCORING.register("loop")
class CompleteCandidateRescoring(InLoopRescoring):
    """In the loop, complete candidates (any energy)."""

    scope = "complete"


@RESCORING.register("step")
class StepCandidateRescoring(InLoopRescoring):
    """In the loop, only this step's positions drawn and scored (energies that marginalise masks)."""

    scope = "step"


@RESCORING.register("fused")
class FusedStepRescoring(InLoopRescoring):
    """`step` scope, fused: each candidate's energy forwards and one more on its next state (this
    step's positions committed) run as one sequential step, and the kept candidate's lookahead is
    the next step's marginals. A sample then waits 1 + D sequential steps for D denoising steps
    (unfused: 2 D), at N more rows per denoising step. Pays off with a forward-based energy (self)."""

    scope = "step"
    fused = True


def with_rescoring(decoder: Any, spec: "str | RescoreSpec") -> Any:
    """`decoder` wrapped by the rescorer `spec` names (`build_decoder(..., rescore=spec)` calls this)."""
    spec = RescoreSpec.parse(spec)
    return RESCORING.get(spec.where)(decoder, spec)
