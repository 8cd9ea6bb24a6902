"""lambda * token_ce + (1 - lambda) * logsum.

Pure log-sum sends its gradient to the orders the model already does best and can forget the
random orders that adaptive (confidence) decoders rely on; mixing in the per-token ELBO, which
averages over all orders, keeps them. Both terms use the same normaliser (scorable tokens),
so lambda weighs like-for-like. Metrics of each term are prefixed `token_ce/` and `logsum/`.
A term whose weight is 0 (lambda = 0 or 1) is not run at all, and has no metrics.

    MixtureLoss(token_ce_weight=0.5, logsum={"blocks": 4, "mode": "sampled"})
    # recipes: objective: mixture, objective_kwargs: {token_ce_weight: 0.5, logsum: {blocks: 4, mode: sampled}}
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from jointobj.diffusion.batch import Batch
from jointobj.objectives.base import LOSSES, LossOutput, Objective, build_part
from jointobj.objectives.logsum import LogSumOrdersLoss
from jointobj.objectives.token_ce import TokenCELoss
from jointobj.utils.checks import check_fraction


@LOSSES.register("mixture")
class MixtureLoss(Objective):
    """`loss_fn(denoiser, batch, generator=None) -> LossOutput`.

    token_ce_weight: lambda in [0, 1] (a convex mix; the energy objective's additive weight is
    `added_token_ce_weight`). token_ce / logsum: a loss instance or the keyword arguments of
    TokenCELoss / LogSumOrdersLoss (default: their defaults); token_ce's KL to the base model
    (base_kl_weight, base_kl_start_weight) is part of that term, so lambda weighs it too. seed: passed
    to the parts built here (their self-conditioning choices), unless their keyword arguments set one.
    """

    def __init__(self, token_ce_weight: float = 0.5, *, token_ce: nn.Module | Mapping[str, Any] | None = None,
                 logsum: nn.Module | Mapping[str, Any] | None = None, seed: int = 0):
        super().__init__()
        self.token_ce_weight = check_fraction("token_ce_weight (lambda)", token_ce_weight,
                                              "loss = lambda * token_ce + (1 - lambda) * logsum")
        self.token_ce = build_part(token_ce, TokenCELoss, "token_ce", seed=seed)
        self.logsum = build_part(logsum, LogSumOrdersLoss, "logsum", seed=seed)
        anchored = getattr(self.token_ce, "base_kl_weight", 0) or getattr(self.token_ce, "base_kl_start_weight", 0)
        if self.token_ce_weight == 0.0 and anchored:
            raise ValueError("token_ce_weight 0 skips the token_ce term and with it its KL to the base model "
                             "(base_kl_weight / base_kl_start_weight): give token_ce_weight > 0, or drop the KL")

    def extra_repr(self) -> str:
        return f"token_ce_weight={self.token_ce_weight}"

    def forward(self, denoiser: nn.Module, batch: Batch, generator: torch.Generator | None = None) -> LossOutput:
        terms = {"token_ce": (self.token_ce, self.token_ce_weight), "logsum": (self.logsum, 1.0 - self.token_ce_weight)}
        loss, metrics = None, {}
        for name, (term, weight) in terms.items():  # token_ce first: it draws its noise before the orders
            if weight == 0.0:
                continue  # a term that cannot move the loss costs no forward
            output = term(denoiser, batch, generator=generator)
            loss = weight * output.loss if loss is None else loss + weight * output.loss
            metrics.update({f"{name}/{k}": v for k, v in output.metrics.items()})
            metrics[f"{name}/loss"] = output.loss.detach()
        return LossOutput(loss, metrics)
