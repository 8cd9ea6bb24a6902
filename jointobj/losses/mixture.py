"""lambda * token_ce + (1 - lambda) * logsum.

Pure log-sum sends its gradient to the orders the model already does best and can forget the
random orders that adaptive (confidence) decoders rely on; mixing in the per-token ELBO, which
averages over all orders, keeps them. Both terms use the same normaliser (scorable tokens),
so lambda weighs like-for-like. Metrics of each term are prefixed `token_ce/` and `logsum/`.
A term whose weight is 0 (lambda = 0 or 1) is not run at all, and has no metrics.

    MixtureLoss(token_ce_weight=0.5, logsum={"blocks": 4, "mode": "sampled"})
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from jointobj.batch import Batch
from jointobj.losses.base import LOSSES, LossOutput
from jointobj.losses.logsum import LogSumOrdersLoss
from jointobj.losses.token_ce import TokenCELoss


def _build(part: nn.Module | Mapping[str, Any] | None, cls: type, what: str) -> nn.Module:
    if part is None:
        return cls()
    if isinstance(part, nn.Module):
        return part
    if isinstance(part, Mapping):
        return cls(**part)
    raise ValueError(f"{what} must be a {cls.__name__}, a dict of its keyword arguments, or None; "
                     f"got {type(part).__name__}")


@LOSSES.register("mixture")
class MixtureLoss(nn.Module):
    """`loss_fn(denoiser, batch, generator=None) -> LossOutput`.

    token_ce_weight: lambda in [0, 1]. token_ce / logsum: a loss instance or the keyword
    arguments of TokenCELoss / LogSumOrdersLoss (default: their defaults).
    """

    def __init__(self, token_ce_weight: float = 0.5, *, token_ce: nn.Module | Mapping[str, Any] | None = None,
                 logsum: nn.Module | Mapping[str, Any] | None = None):
        super().__init__()
        number = isinstance(token_ce_weight, (int, float)) and not isinstance(token_ce_weight, bool)
        if not number or not 0 <= token_ce_weight <= 1:
            raise ValueError(f"token_ce_weight (lambda) must be a number in [0, 1], got {token_ce_weight!r}")
        self.token_ce_weight = float(token_ce_weight)
        self.token_ce = _build(token_ce, TokenCELoss, "token_ce")
        self.logsum = _build(logsum, LogSumOrdersLoss, "logsum")

    @classmethod
    def from_config(cls, config) -> "MixtureLoss":
        """Build from a JointObjConfig (token_ce_weight, plus each part's own fields)."""
        return cls(config.token_ce_weight, token_ce=TokenCELoss.from_config(config),
                   logsum=LogSumOrdersLoss.from_config(config))

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
