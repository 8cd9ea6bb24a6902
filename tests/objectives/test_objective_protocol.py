"""The objective protocol (objectives/base.py): what the trainer and the recipe may ask, answered by parts."""

import pytest
import torch

from jointobj import LOSSES, Denoiser, LossOutput, Objective
from jointobj.model.energy_head import energy_head_module
from jointobj.model.tiny import tiny_masked_lm
from jointobj.toysets.builtin import toy_tokenizer
from jointobj.training.trainer import JointObjConfig, JointObjTrainer

from tiny_models import BidirectionalLM


class Wrapper(Objective):
    """Wraps an objective without saying anything of its own: its answers must come from the part."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, denoiser, batch):
        return self.inner(denoiser, batch)


def test_an_objective_without_parts_needs_one_token_and_has_no_block_forwards():
    bare = Objective()
    assert bare.min_scorable_tokens == 1 and bare.checkpoint_block_forwards() is False
    bare.prepare(None)  # nothing to prepare


@pytest.mark.parametrize("blocks, needed", [(3, 3), ("all", 1)])
def test_the_fewest_scorable_tokens_come_from_the_log_sum_part_however_deep(blocks, needed):
    mixture = LOSSES.build("mixture", {"logsum": {"blocks": blocks}})
    assert mixture.min_scorable_tokens == needed and Wrapper(mixture).min_scorable_tokens == needed
    assert LOSSES.build("token_ce", {}).min_scorable_tokens == 1


def test_checkpointing_block_forwards_reaches_the_log_sum_part_and_only_it_has_any():
    mixture = LOSSES.build("mixture", {"logsum": {"mode": "sampled"}})
    assert mixture.logsum.checkpoint is False
    assert Wrapper(mixture).checkpoint_block_forwards() is True and mixture.logsum.checkpoint is True
    assert LOSSES.build("token_ce", {}).checkpoint_block_forwards() is False


def test_prepare_reaches_a_wrapped_energy_objective_and_attaches_its_head():
    denoiser = Denoiser(tiny_masked_lm("modernbert", vocab_size=len(toy_tokenizer()), max_positions=16, seed=0),
                        tokenizer=toy_tokenizer())
    assert energy_head_module(denoiser.model) is None
    Wrapper(LOSSES.build("energy", {})).prepare(denoiser)
    assert energy_head_module(denoiser.model) is not None


class PlainLoss(torch.nn.Module):
    def forward(self, denoiser, batch):
        return LossOutput(torch.zeros(()))


def test_the_trainer_refuses_an_objective_outside_the_protocol_saying_what_to_subclass(tmp_path):
    denoiser = Denoiser(BidirectionalLM(vocab_size=12), mask_token_id=11)
    config = JointObjConfig(output_dir=str(tmp_path), max_steps=1, report_to="none", use_cpu=True)
    with pytest.raises(TypeError, match="subclass jointobj.objectives.Objective"):
        JointObjTrainer(denoiser, config, objective=PlainLoss())
