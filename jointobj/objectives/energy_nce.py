"""Sequence-level energy by noise-contrastive estimation (NCE), after EDLM (Xu et al., ICLR 2025).

    L = mean_b [ -log sigmoid(s(x+_b)) - mean_j log sigmoid(-s(x-_bj)) ]

x+ are the batch's sequences, x- are `negatives` answers per row drawn from the model's own
parallel sampler (decoder `decoder`, `tokens_per_step` tokens per step) for the same prompt,
without gradient. s is the classifier's logit for "data, not sampler", built from the learned
energy head E (energy_head.py):

- `residual` (EDLM's convention, the default): s = -E. At the optimum E = log q - log p_data,
  i.e. the model is p(x) ∝ q(x) exp(-E(x)) with q the sampler: the head only corrects the
  sampler. Data gets low energy, samples high: lower is better, as for every energy here.
  (EDLM's released sampler weights its importance samples by softmax(+E / T); with its own
  training sign that favours the *noise*; jointobj weights by exp(-E), see rescore.py.)
- `absolute`: s = -E - log q(x), the proposal log-ratio added where the sampler's probability
  is known. At the optimum E = -log p_data + const, a standalone energy that any proposal can
  use (weights exp(-E) / q). log q of a negative is its `SampleOutput.log_prob`; of a positive,
  the sampler's probability of producing it, which is the K-block likelihood in the sampler's
  order (jointobj.diffusion.likelihood): exact for `l2r`, and for any decoder at one step (then the order
  does not matter). Other decoders at several steps are refused in this mode.

`negatives` > 1 averages the negative term (a lower-variance estimate of the same objective,
whose optimum is unchanged). `added_token_ce_weight` = w > 0 adds w * the per-token CE
(additive, any w >= 0; unlike MixtureLoss's `token_ce_weight`, a convex lambda in [0, 1]),
which keeps the adapter a good denoiser (hence a good proposal) while the head trains through
it. That CE is a `TokenCELoss` (`token_ce`: one, or a dict of its keyword arguments).

The head must exist before the optimizer is built: the Trainer calls `prepare(denoiser)`,
which attaches one (`head_width`, `parameterisation`) when the denoiser has none.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from jointobj.decoding.registry import build_decoder
from jointobj.diffusion.batch import Batch, check_batch, prompt_and_answer_lengths
from jointobj.diffusion.likelihood import order_log_likelihood
from jointobj.diffusion.orders import OrderProposal
from jointobj.model.energy_head import (
    PARAMETERISATIONS,
    attach_energy_head,
    energy_head_module,
    head_energy,
)
from jointobj.objectives.base import (
    LOSSES,
    LossOutput,
    Objective,
    build_part,
    check_finite,
    refuse_zero3_on_several_ranks,
)
from jointobj.objectives.token_ce import TokenCELoss
from jointobj.utils.checks import check_whole_number
from jointobj.utils.ranks import run_chunks

__all__ = ["EnergyNCELoss", "check_not_zero3_on_several_ranks", "classifier_logit", "nce_loss"]


def classifier_logit(energy: torch.Tensor, log_q: torch.Tensor | None = None) -> torch.Tensor:
    """s = -E (residual) or -E - log q (absolute): the logit of 'drawn from the data'."""
    return -energy if log_q is None else -energy - log_q


def nce_loss(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """positive logits [b], negative logits [b, m] -> mean_b [softplus(-s+) + mean_j softplus(s-)]
    (= -log sigmoid(s+) - mean_j log sigmoid(-s-), computed stably)."""
    return (F.softplus(-positive) + F.softplus(negative).mean(-1)).mean()


def check_not_zero3_on_several_ranks(denoiser) -> None:
    """The negatives' sampler runs one forward per step and per group of equal prompt / answer
    lengths, a count that differs between ranks (objectives.base.refuse_zero3_on_several_ranks)."""
    refuse_zero3_on_several_ranks(denoiser, "energy", "its sampler's forward count differs between ranks")


@LOSSES.register("energy")
class EnergyNCELoss(Objective):
    """`loss_fn(denoiser, batch, generator=None) -> LossOutput` (module doc).

    tokens_per_step: the negative sampler's K (None or "all": the whole answer in one step, EDLM's
    proposal). negatives: samples per row (m >= 1). decoder: the sampler's policy (registered
    decoder name). parameterisation: 'residual' or 'absolute'. added_token_ce_weight: w >= 0,
    loss = NCE + w * token_ce (additive, not a convex mix). token_ce: the TokenCELoss that term
    uses, or a dict of its keyword arguments (default: its defaults). head_width: hidden width of
    a head `prepare` attaches (None: the model's hidden size). seed: passed to a token_ce built here.
    """

    def __init__(self, tokens_per_step: int | str | None = None, negatives: int = 1, *, decoder: str = "random",
                 parameterisation: str = "residual", added_token_ce_weight: float = 0.0,
                 token_ce: TokenCELoss | Mapping[str, Any] | None = None, head_width: int | None = None,
                 seed: int = 0):
        super().__init__()
        negatives = check_whole_number("negatives (samples per row)", negatives)
        if parameterisation not in PARAMETERISATIONS:
            raise ValueError(f"parameterisation must be one of {', '.join(PARAMETERISATIONS)}, "
                             f"got {parameterisation!r}")
        if isinstance(added_token_ce_weight, bool) or not added_token_ce_weight >= 0:
            raise ValueError(f"added_token_ce_weight must be a number >= 0 (loss = NCE + w * token_ce), "
                             f"got {added_token_ce_weight!r}")
        tokens_per_step = None if tokens_per_step == "all" else tokens_per_step
        self.sampler = build_decoder(decoder, tokens_per_step)  # validates the name and K
        self.tokens_per_step, self.negatives, self.decoder = tokens_per_step, negatives, decoder
        self.parameterisation = parameterisation
        self.head_width = check_whole_number("head_width", head_width, "the model's hidden size")
        self.added_token_ce_weight = float(added_token_ce_weight)
        self.token_ce = build_part(token_ce, TokenCELoss, "token_ce", seed=seed)

    def extra_repr(self) -> str:
        return (f"tokens_per_step={self.tokens_per_step}, negatives={self.negatives}, decoder={self.decoder!r}, "
                f"parameterisation={self.parameterisation!r}, added_token_ce_weight={self.added_token_ce_weight}")

    def prepare(self, denoiser) -> None:
        """Attach an energy head when the denoiser has none (before the optimizer is built).

        Refuses ZeRO-3 on several ranks (`check_not_zero3_on_several_ranks`), here and again at
        every step (a model built before the DeepSpeed config is sharded only when DeepSpeed wraps it)."""
        check_not_zero3_on_several_ranks(denoiser)
        super().prepare(denoiser)  # its token-CE part
        head = energy_head_module(denoiser.model)
        if head is None:
            head = attach_energy_head(denoiser, self.head_width, self.parameterisation)
        elif head.parameterisation != self.parameterisation:
            raise ValueError(f"the denoiser's energy head is {head.parameterisation!r} but the objective trains it as "
                             f"{self.parameterisation!r}; set objective_kwargs' parameterisation to match")
        head.trained_against = {"decoder": self.decoder, "tokens_per_step": self.tokens_per_step,  # saved with it
                                "repr": repr(self.sampler)}  # what SIR with a residual head compares its sampler to

    def _sampler_log_prob(self, denoiser, batch: Batch, rows: torch.Tensor, answer_length: int) -> torch.Tensor:
        """log q(x) [r] of the sampler producing rows' answers: the K-block l2r likelihood, no grad."""
        k = self.tokens_per_step or answer_length
        if self.decoder != "l2r" and k < answer_length:
            raise ValueError(f"the absolute parameterisation needs the sampler's probability of the data; decoder "
                             f"{self.decoder!r} knows it only at one step (tokens_per_step: all); use l2r")
        part = {key: value[rows] for key, value in batch.items()}
        scorable = check_batch(part)
        orders = OrderProposal(["l2r"]).sample(scorable)
        with torch.no_grad():
            return order_log_likelihood(denoiser, part, orders, math.ceil(answer_length / k),  # this rank's
                                        sync_ranks=False)[:, 0].double()  # groups only: [r]

    def _negatives(self, denoiser, batch: Batch, generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(negative ids [b*m, l] laid out as the positives, log q of negatives [b*m], log q of positives [b])."""
        ids, m = batch["input_ids"], self.negatives
        scorable = check_batch(batch)
        lp, la = prompt_and_answer_lengths(batch, scorable)  # [b], [b]
        negatives = ids.repeat_interleave(m, 0).clone()  # [b*m, l]
        log_q_neg = torch.zeros(len(negatives), dtype=torch.float64, device=ids.device)
        log_q_pos = torch.zeros(len(ids), dtype=torch.float64, device=ids.device)
        for p, a in torch.stack([lp, la], 1).unique(dim=0).tolist():  # rows sharing prompt and answer lengths
            rows = ((lp == p) & (la == a)).nonzero().flatten()  # [r]
            out = self.sampler.sample(denoiser, ids[rows, :p].repeat_interleave(m, 0), a, generator)  # no grad
            slots = (rows[:, None] * m + torch.arange(m, device=ids.device)).flatten()  # [r*m]
            negatives[slots, p : p + a] = out.gen_ids
            log_q_neg[slots] = out.log_prob
            if self.parameterisation == "absolute":
                log_q_pos[rows] = self._sampler_log_prob(denoiser, batch, rows, a)
        return negatives, log_q_neg, log_q_pos

    def forward(self, denoiser, batch: Batch, generator: torch.Generator | None = None) -> LossOutput:
        check_not_zero3_on_several_ranks(denoiser)
        ids, m = batch["input_ids"], self.negatives
        attention = batch.get("attention_mask", torch.ones_like(ids))
        negatives, log_q_neg, log_q_pos = self._negatives(denoiser, batch, generator)
        both = torch.cat([ids, negatives])  # [b + b*m, l]: positives, then each row's negatives
        both_attention = torch.cat([attention, attention.repeat_interleave(m, 0)])  # [b + b*m, l]
        energy = run_chunks(lambda rows, anchor: head_energy(denoiser, both[rows], both_attention[rows]),
                            len(both), len(ids), model=denoiser, device=ids.device)  # [b + b*m], b rows per forward
        positive_energy, negative_energy = energy[: len(ids)], energy[len(ids) :].view(len(ids), m)  # [b], [b, m]
        absolute = self.parameterisation == "absolute"
        positive = classifier_logit(positive_energy, log_q_pos.float() if absolute else None)  # [b]
        log_q_negative = log_q_neg.float().view(len(ids), m) if absolute else None  # [b, m]
        negative = classifier_logit(negative_energy, log_q_negative)  # [b, m]
        loss = nce_loss(positive, negative)
        metrics = {
            "nce": loss.detach(),
            "energy_positive": positive_energy.detach().mean(),
            "energy_negative": negative_energy.detach().mean(),
            "nce_accuracy": torch.cat([(positive > 0).float(), (negative < 0).float().flatten()]).mean().detach(),
        }
        if self.added_token_ce_weight > 0:
            token_ce = self.token_ce(denoiser, batch, generator=generator)
            loss = loss + self.added_token_ce_weight * token_ce.loss
            metrics["token_ce"] = token_ce.loss.detach()
            metrics.update({f"token_ce/{k}": v for k, v in token_ce.metrics.items()})
        check_finite(loss, "energy NCE loss", ids)
        return LossOutput(loss, metrics)
