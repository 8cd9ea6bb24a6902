"""Training objectives, each an nn.Module called as `loss_fn(denoiser, batch) -> LossOutput`."""

from jointobj.objectives.base import LOSSES, LossOutput, Objective
from jointobj.objectives.draft_distillation import DraftDistillationLoss
from jointobj.objectives.energy_nce import EnergyNCELoss
from jointobj.objectives.logsum import LogSumOrdersLoss
from jointobj.objectives.mixture import MixtureLoss
from jointobj.objectives.token_ce import TokenCELoss

__all__ = ["LOSSES", "DraftDistillationLoss", "EnergyNCELoss", "LogSumOrdersLoss", "LossOutput", "MixtureLoss",
           "Objective", "TokenCELoss"]
