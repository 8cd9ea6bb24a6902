"""Per-token masked cross-entropy: the MDLM / LLaDA masked-diffusion ELBO (the baseline).

    L = E_t [ w(t) * sum_i 1[x_t^i = M] * -log p(x_0^i | x_t) ] / #scorable tokens

with w(t) = 1/t for the linear schedule. Summed over the batch and divided by the batch's
scorable tokens, so padding never changes it and every token weighs the same.

`self_condition_prob = p > 0`: with probability p per step the scored forward reads the
model's own detached predictions as soft states at the masked positions (one extra forward
without grad; see `jointobj.objectives.self_condition`), which soft-state decoding needs.

`base_kl_weight = beta > 0` (a LoRA fine-tune only) keeps the fine-tune near its base model at the
same noised states: it adds beta * E_t [ w(t) * sum_i 1[x_t^i = M] * KL(p_base(. | x_t) || p(. | x_t)) ],
normalised as L, where p_base is the denoiser with its adapter off (one more forward, without grad,
over every state a KL reads).
A fine-tune whose other term trains a few states (a decoder's own law) then leaves the marginals of
every other state, which other decoders rank positions by, where the base had them.
`base_kl_start_weight = gamma > 0` adds gamma * the same KL (unweighted) at the fully masked answer, the
state every decoder starts from (its distinct rows join the TokenCE forward and the base's): where the true marginals
there tie (an unconditional set's cells), a confidence decoder's first choice is a near-tie that a
fine-tune otherwise flips onto another path (README, "Do no harm").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from jointobj.diffusion.batch import Batch, check_batch
from jointobj.diffusion.noise import SCHEDULES, corrupt, sample_timesteps
from jointobj.model.architecture import logits_at
from jointobj.objectives.base import LOSSES, LossOutput, Objective, check_finite
from jointobj.objectives.self_condition import SelfConditioning


@dataclass
class NoisedBatch:
    input_ids: torch.Tensor  # [b, l] with masks
    masked: torch.Tensor  # [b, l] bool, positions to score
    t: torch.Tensor  # [b]
    weight: torch.Tensor  # [b] ELBO weight w(t)
    num_scorable: torch.Tensor  # [] scorable tokens in the batch (the normaliser)


@LOSSES.register("token_ce")
class TokenCELoss(Objective):
    """Masked-diffusion ELBO. `loss_fn(denoiser, batch) -> LossOutput`.

    schedule: the masking schedule (linear or cosine). eps: the smallest t drawn. stratified: one t
    per row on a stratified grid. self_condition_prob: probability per step of a self-conditioned
    forward (0 = off). seed: seed of the generator that makes that choice (the trainer passes --seed).
    base_kl_weight: beta of the KL to the base model (adapter off) at the masked positions (0 = off).
    base_kl_start_weight: gamma of that KL at the fully masked answer (0 = off).
    """

    def __init__(self, schedule: str = "linear", eps: float = 1e-3, stratified: bool = True,
                 self_condition_prob: float = 0.0, seed: int = 0, base_kl_weight: float = 0.0,
                 base_kl_start_weight: float = 0.0):
        super().__init__()
        self.schedule = SCHEDULES.get(schedule)()
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0.0 < eps < 1.0:
            raise ValueError(f"eps (the smallest masking time) must be a number in (0, 1), got {eps!r}")
        self.eps = float(eps)
        self.stratified = bool(stratified)
        self.self_condition = SelfConditioning(self_condition_prob, seed=seed)
        self.base_kl_weight = _kl_weight("base_kl_weight", base_kl_weight, self_condition_prob)
        self.base_kl_start_weight = _kl_weight("base_kl_start_weight", base_kl_start_weight, self_condition_prob)

    def extra_repr(self) -> str:
        return f"schedule={type(self.schedule).__name__}, eps={self.eps}, stratified={self.stratified}, " \
               f"{self.self_condition}, base_kl_weight={self.base_kl_weight}, " \
               f"base_kl_start_weight={self.base_kl_start_weight}"

    def corrupt(self, batch: Batch, mask_token_id: int, generator: torch.Generator | None = None) -> NoisedBatch:
        """Draw t per row and mask scorable tokens with the schedule's probability."""
        scorable = check_batch(batch)
        input_ids = batch["input_ids"]
        t = sample_timesteps(
            input_ids.shape[0], eps=self.eps, stratified=self.stratified, generator=generator, device=input_ids.device
        )
        noisy, masked = corrupt(input_ids, scorable, self.schedule.mask_prob(t), mask_token_id, generator)
        return NoisedBatch(noisy, masked, t, self.schedule.elbo_weight(t), scorable.sum().clamp(min=1))

    def score(self, logits: torch.Tensor, batch: Batch, noised: NoisedBatch) -> LossOutput:
        """The weighted masked CE of the logits against the clean tokens: `logits` are those of the
        masked positions `[n, V]` (row-major, as Denoiser(positions=...) returns them) or full `[b, l, V]`."""
        targets = batch["input_ids"][noised.masked]  # [n]
        picked = logits[noised.masked] if logits.dim() == 3 else logits  # [n, V]
        nll = F.cross_entropy(picked, targets, reduction="none")  # [n]
        row_weight = noised.weight[:, None].expand_as(noised.masked)[noised.masked]  # [n]
        loss = (row_weight * nll).sum() / noised.num_scorable
        check_finite(loss, "token_ce loss", batch["input_ids"])
        metrics = {
            "masked_nll": nll.detach().mean() if nll.numel() else torch.zeros(()),
            "masked_fraction": noised.masked.sum() / noised.num_scorable,
        }
        return LossOutput(loss, metrics)

    def forward(self, denoiser: nn.Module, batch: Batch, generator: torch.Generator | None = None) -> LossOutput:
        noised = self.corrupt(batch, denoiser.mask_token_id, generator)
        model = self.self_condition.wrap(denoiser, generator)
        # (state, attention mask, KL weight, metric): the noised batch, and the start states where their KL is on.
        states = [(noised, batch.get("attention_mask"), self.base_kl_weight, "base_kl")]
        if self.base_kl_start_weight:
            states.append((*self.start_state(batch, denoiser.mask_token_id), self.base_kl_start_weight,
                           "base_kl_start"))
        # One forward for every state; only the masked positions' logits, in float32.
        logits = logits_of_states(model, [(state, mask) for state, mask, _, _ in states])  # [[n_i, V]]
        output = self.score(logits[0], batch, noised)
        output.metrics.update(self.self_condition.metrics(model))
        anchored = [i for i, (_, _, weight, _) in enumerate(states) if weight]
        if anchored:  # the base: the same states with the adapter off, one forward without grad
            with torch.no_grad(), denoiser.adapter_disabled():
                base = logits_of_states(denoiser, [states[i][:2] for i in anchored])
            for i, base_logits in zip(anchored, base):
                state, _, weight, name = states[i]
                kl = self.base_kl(logits[i], base_logits, state, batch["input_ids"])
                output.loss = output.loss + weight * kl
                output.metrics[name] = kl.detach()
        return output

    @staticmethod
    def start_state(batch: Batch, mask_token_id: int) -> tuple[NoisedBatch, torch.Tensor | None]:
        """(state, its attention mask): every scorable token masked (t = 1), the state every decoder starts
        from. Rows that are then equal (one prompt: an unconditional set) are kept once, weighing as many
        rows as they stand for, so the term costs a forward of the distinct prompts, not of the batch; the
        normaliser stays the batch's scorable tokens."""
        scorable = check_batch(batch)  # [b, l]
        start = batch["input_ids"].masked_fill(scorable, mask_token_id)  # [b, l]
        attention = batch.get("attention_mask")
        key = [start, scorable.long()] + ([] if attention is None else [attention.long()])
        _, inverse, counts = torch.unique(torch.cat(key, 1), dim=0, return_inverse=True, return_counts=True)
        index = torch.arange(len(start), device=start.device)
        rows = torch.full_like(counts, len(start)).scatter_reduce(0, inverse, index, "amin")  # [u] one row each
        ones = torch.ones(len(rows), device=start.device)
        state = NoisedBatch(start[rows], scorable[rows], ones, counts.float(), scorable.sum().clamp(min=1))
        return state, None if attention is None else attention[rows]

    @staticmethod
    def base_kl(logits: torch.Tensor, base_logits: torch.Tensor, noised: NoisedBatch,
                batch_ids: torch.Tensor) -> torch.Tensor:
        """The weighted KL(p_base || p) at the masked positions, per scorable token (`noised.weight` per row:
        the ELBO's w(t), or a row's count): `logits [n, V]` the fine-tune's there, `base_logits [n, V]` the
        base's at the same state."""
        base_log_probs = base_logits.float().log_softmax(-1)
        kl = F.kl_div(logits.float().log_softmax(-1), base_log_probs, log_target=True, reduction="none").sum(-1)  # [n]
        row_weight = noised.weight[:, None].expand_as(noised.masked)[noised.masked]  # [n]
        loss = (row_weight * kl).sum() / noised.num_scorable
        check_finite(loss, "token_ce base_kl", batch_ids)
        return loss


def logits_of_states(model: nn.Module, states: list[tuple[NoisedBatch, torch.Tensor | None]]) -> list[torch.Tensor]:
    """[n_i, V] logits of each state's masked positions, from one forward over all their rows (a state's
    attention mask None: nothing padded)."""
    if len(states) == 1:
        (state, attention), = states
        return [logits_at(model, state.masked, input_ids=state.input_ids, attention_mask=attention)]
    masks = [attention if attention is not None else torch.ones_like(state.input_ids) for state, attention in states]
    any_mask = any(attention is not None for _, attention in states)
    logits = logits_at(model, torch.cat([state.masked for state, _ in states]),
                       input_ids=torch.cat([state.input_ids for state, _ in states]),
                       attention_mask=torch.cat(masks) if any_mask else None)  # [sum n_i, V]
    return list(logits.split([int(state.masked.sum()) for state, _ in states]))


def _kl_weight(name: str, weight: float, self_condition_prob: float) -> float:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight < float("inf"):
        raise ValueError(f"{name} (a weight of the KL to the base model) must be a finite number >= 0, "
                         f"got {weight!r}")
    if weight and self_condition_prob:
        raise ValueError(f"{name} and self_condition_prob cannot be combined: the base model's logits are taken "
                         "at the plain noised state; set one of them to 0")
    return float(weight)
