"""jointobj: joint objectives and decoders that make masked diffusion LMs generate jointly valid text."""

from jointobj.decoding import (
    DECODERS,
    POLICIES,
    RESCORING,
    RescoredOutput,
    RescoreSpec,
    RevisableDecoder,
    SampleOutput,
    SoftStateDecoder,
    SpeculativeDecoder,
    UnmaskingSampler,
    best_of_n,
    build_decoder,
    sampling_importance_resampling,
)
from jointobj.decoding.energies import (
    ENERGIES,
    CausalLMEnergy,
    Energy,
    EnergyCost,
    ExactEnergy,
    HeadEnergy,
    SelfEnergy,
    build_energy,
)
from jointobj.diffusion.batch import Batch, DiffusionCollator, check_batch, scorable_mask
from jointobj.diffusion.likelihood import order_log_likelihood
from jointobj.diffusion.noise import (
    SCHEDULES,
    CosineSchedule,
    LinearSchedule,
    corrupt,
    sample_timesteps,
)
from jointobj.diffusion.orders import ORDERS, OrderProposal, Orders
from jointobj.evaluation.metrics import Cost, joint_validity, total_variation, tv_noise_floor, wilson_interval
from jointobj.evaluation.sweep import evaluate, headline
from jointobj.model.architecture import lora_target_modules
from jointobj.model.compat import RemoteCodeLoadError
from jointobj.model.denoiser import Denoiser
from jointobj.model.draft_head import DraftHead, attach_draft_head
from jointobj.model.energy_head import EnergyHead, attach_energy_head, head_energy
from jointobj.model.order_head import OrderHead, attach_order_head
from jointobj.model.soft_inputs import soft_input_embeddings, soft_state
from jointobj.objectives import (
    LOSSES,
    EnergyNCELoss,
    LogSumOrdersLoss,
    LossOutput,
    MixtureLoss,
    Objective,
    TokenCELoss,
)
from jointobj.toysets.builtin import (
    TOYSETS,
    ToySet,
    load_toyset,
    register_toyset,
    toy_tokenizer,
    toyset_from_dataset,
)
from jointobj.toysets.oracle import OracleDenoiser
from jointobj.toysets.user_sets import make_toyset
from jointobj.utils.errors import UserError
from jointobj.utils.registry import Registry

__version__ = "0.1.0"

__all__ = [
    "attach_draft_head",
    "attach_energy_head",
    "attach_order_head",
    "Batch",
    "best_of_n",
    "build_decoder",
    "build_energy",
    "CausalLMEnergy",
    "check_batch",
    "corrupt",
    "CosineSchedule",
    "Cost",
    "DECODERS",
    "Denoiser",
    "RemoteCodeLoadError",
    "DiffusionCollator",
    "DraftHead",
    "ENERGIES",
    "Energy",
    "EnergyCost",
    "EnergyHead",
    "OrderHead",
    "EnergyNCELoss",
    "evaluate",
    "ExactEnergy",
    "head_energy",
    "HeadEnergy",
    "headline",
    "joint_validity",
    "LinearSchedule",
    "load_toyset",
    "LogSumOrdersLoss",
    "lora_target_modules",
    "LOSSES",
    "LossOutput",
    "make_toyset",
    "MixtureLoss",
    "Objective",
    "OracleDenoiser",
    "order_log_likelihood",
    "OrderProposal",
    "ORDERS",
    "Orders",
    "POLICIES",
    "register_toyset",
    "Registry",
    "RescoredOutput",
    "RescoreSpec",
    "RESCORING",
    "sample_timesteps",
    "SampleOutput",
    "sampling_importance_resampling",
    "SCHEDULES",
    "scorable_mask",
    "SelfEnergy",
    "soft_input_embeddings",
    "soft_state",
    "SoftStateDecoder",
    "SpeculativeDecoder",
    "RevisableDecoder",
    "TokenCELoss",
    "total_variation",
    "toy_tokenizer",
    "ToySet",
    "toyset_from_dataset",
    "TOYSETS",
    "tv_noise_floor",
    "wilson_interval",
    "UnmaskingSampler",
    "UserError",
]
