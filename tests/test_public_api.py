"""The public API: every name `jointobj` exported before the package moved into concept folders still imports
from `jointobj` (listed here, so a rename or a dropped re-export fails), and `__all__` names only what exists."""

import pytest

import jointobj

BEFORE_THE_MOVE = [
    "attach_energy_head", "Batch", "best_of_n", "build_decoder", "build_energy", "CausalLMEnergy", "check_batch",
    "corrupt", "CosineSchedule", "Cost", "DECODERS", "Denoiser", "DiffusionCollator", "ENERGIES", "Energy",
    "EnergyCost", "EnergyHead", "EnergyNCELoss", "evaluate", "ExactEnergy", "head_energy", "HeadEnergy",
    "headline", "joint_validity", "LinearSchedule", "load_toyset", "LogSumOrdersLoss", "lora_target_modules",
    "LOSSES", "LossOutput", "make_toyset", "MixtureLoss", "OracleDenoiser", "order_log_likelihood",
    "OrderProposal", "ORDERS", "Orders", "POLICIES", "register_toyset", "Registry", "RescoredOutput",
    "RescoreSpec", "RESCORING", "RevisableDecoder", "sample_timesteps", "SampleOutput",
    "sampling_importance_resampling", "SCHEDULES", "scorable_mask", "SelfEnergy", "soft_input_embeddings",
    "soft_state", "SoftStateDecoder", "SpeculativeDecoder", "TokenCELoss", "total_variation", "toy_tokenizer",
    "ToySet", "toyset_from_dataset", "TOYSETS", "tv_noise_floor", "UnmaskingSampler", "wilson_interval",
]


@pytest.mark.parametrize("name", BEFORE_THE_MOVE)
def test_every_name_exported_before_the_move_still_imports(name):
    assert name in jointobj.__all__
    assert getattr(jointobj, name) is not None


def test_all_names_only_what_the_package_has():
    assert [name for name in jointobj.__all__ if not hasattr(jointobj, name)] == []
