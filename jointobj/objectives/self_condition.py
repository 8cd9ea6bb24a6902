"""Self-conditioning: teach a denoiser to read soft states (for `SoftStateDecoder`).

    loss_fn = TokenCELoss(self_condition_prob=0.5)        # or LogSumOrdersLoss(..., self_condition_prob=0.5)
    JointObjConfig(..., objective="token_ce", objective_kwargs={"self_condition_prob": 0.5})   # from a recipe

A model trained only on hard masks has never seen a mixture of embeddings and reads one out
of distribution (a tiny ModernBERT fed the 50/50 states of "he likes apple" / "i play
tennis" writes "likes he tennis"). With probability p per training step, each forward of the
loss becomes two (after Chen et al., "Analog Bits", 2022):

1. a first forward on the corrupted ids, without grad;
2. its predictions at the masked positions become soft states s = softmax(logits) (the mask
   token excluded), **detached**, and the second forward reads them through
   `soft_input_embeddings` (a = `mixing`) at those positions. The loss scores the second.

The loss's maths is untouched: `SelfConditionedDenoiser` wraps the denoiser, so the per-token
CE and the K-block likelihood (`jointobj.diffusion.likelihood`, where each block row gets its own first
forward) run unchanged on the wrapper. The states are a function of the visible tokens, so a
K-block likelihood stays normalised. p = 0 draws no random number and builds no wrapper:
the loss is bit-identical to a loss without the option.

The per-step choice comes from the option's own generator (seeded by `seed`, one draw per
step), never from the loss's generator or the global one: under ZeRO-3 every forward is a
collective, so all ranks must make the same choice, while the global RNG has been consumed
differently on each rank (corruption draws depend on the padded length).

Cost, counted: `self_condition_rate` (1 on a step that ran the extra forwards, else 0; the
trainer's log averages it into a rate) and `self_condition_rows` (rows of the extra, grad-free
forwards this step, before any activation-checkpoint recomputation in backward).
"""

from __future__ import annotations

from typing import Any

import torch

from jointobj.model.soft_inputs import require_input_embeddings, soft_input_embeddings, soft_state
from jointobj.utils.checks import check_fraction

__all__ = ["SelfConditionedDenoiser", "SelfConditioning"]


class SelfConditionedDenoiser:
    """A denoiser whose every `input_ids` call first predicts the masked positions (no grad),
    then returns the logits `[b, l, V]` of a forward that reads those predictions as soft
    states. Other attributes (mask_token_id, device, ...) are the wrapped denoiser's."""

    def __init__(self, denoiser: Any, mixing: float = 1.0):
        require_input_embeddings(denoiser)
        if not 0.0 <= mixing <= 1.0:
            raise ValueError(f"mixing (a) must lie in [0, 1], got {mixing}; 1 feeds the prediction alone")
        self.denoiser, self.mixing = denoiser, float(mixing)
        self.extra_rows = 0

    def __call__(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                 inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        if input_ids is None or inputs_embeds is not None:
            raise ValueError("a self-conditioned denoiser takes input_ids (it builds the soft inputs itself)")
        mask_id = int(self.denoiser.mask_token_id)
        masked = input_ids == mask_id  # [b, l]
        with torch.no_grad():
            first = self.denoiser(input_ids=input_ids, attention_mask=attention_mask)  # [b, l, V]
            state = soft_state(first[masked], mask_id)  # [n, V], detached
        self.extra_rows += input_ids.shape[0]
        embeds = soft_input_embeddings(self.denoiser, input_ids, masked, state, self.mixing)  # [b, l, d]
        return self.denoiser(inputs_embeds=embeds, attention_mask=attention_mask)  # [b, l, V]

    def __getattr__(self, name: str) -> Any:
        if name == "denoiser":
            raise AttributeError(name)
        return getattr(self.denoiser, name)


class SelfConditioning:
    """The per-step choice: `wrap(denoiser)` returns the denoiser to run this step (wrapped with
    probability `prob`), and `metrics(used)` what it cost. `seed` seeds the generator of the
    choice, so every rank (every instance with that seed) makes the same sequence of choices."""

    def __init__(self, prob: float = 0.0, mixing: float = 1.0, seed: int = 0):
        self.prob = check_fraction("self_condition_prob", prob, "0 = off, 0.5 is usual")
        self.mixing, self.seed = float(mixing), int(seed)
        self.choices = torch.Generator().manual_seed(self.seed)  # CPU; advanced once per wrap when 0 < prob < 1

    def __repr__(self) -> str:
        return f"SelfConditioning(prob={self.prob}, mixing={self.mixing}, seed={self.seed})"

    def wrap(self, denoiser: Any, generator: torch.Generator | None = None) -> Any:
        """The denoiser itself, or a SelfConditionedDenoiser around it (probability `prob`).

        `generator` (the loss's) is not drawn from: the choice must not depend on how much of it
        this rank's batch consumed (see the module doc).
        """
        if self.prob == 0.0:
            return denoiser  # no draw: the loss stays bit-identical to one without the option
        if self.prob < 1.0 and float(torch.rand((), generator=self.choices)) >= self.prob:
            return denoiser
        return SelfConditionedDenoiser(denoiser, self.mixing)

    def metrics(self, used: Any) -> dict[str, torch.Tensor]:
        """Log entries for the denoiser `wrap` returned (none when the option is off)."""
        if self.prob == 0.0:
            return {}
        wrapped = isinstance(used, SelfConditionedDenoiser)
        return {"self_condition_rate": torch.tensor(float(wrapped)),
                "self_condition_rows": torch.tensor(float(used.extra_rows if wrapped else 0))}
