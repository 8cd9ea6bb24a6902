"""DraftDistillationLoss (objective `draft_distillation`): the Trainer-path form of the draft head's distillation.

Its loss is draft_loss on distillation_targets of its answers (the model's own samples, or the
data's), one uniform cut per answer, groups of equal lengths weighted by their rows; `prepare`
attaches a head and freezes the denoiser unless train_denoiser; bad options and answers too long for
the head are refused with what to do.
"""

import datasets
import pytest
import torch

from jointobj import Denoiser, DiffusionCollator
from jointobj.model.draft_head import attach_draft_head, find_draft_head
from jointobj.model.tiny import tiny_masked_lm
from jointobj.objectives import LOSSES, DraftDistillationLoss
from jointobj.objectives.draft_distillation import distillation_targets, draft_loss, own_samples, uniform_cuts
from jointobj.toysets.builtin import load_toyset, toy_tokenizer


def _denoiser(lora: bool = True) -> Denoiser:
    denoiser = Denoiser(tiny_masked_lm("modernbert", vocab_size=len(toy_tokenizer()), max_positions=16, seed=0),
                        tokenizer=toy_tokenizer())
    return denoiser.add_lora() if lora else denoiser


def _prepared(**kwargs) -> tuple[Denoiser, DraftDistillationLoss]:
    denoiser = _denoiser()
    objective = LOSSES.build("draft_distillation", {"width": 16, "layers": 1, "heads": 2, **kwargs})
    torch.manual_seed(0)
    objective.prepare(denoiser)
    with torch.no_grad():  # a head far from the marginals (a fresh one drafts them: KL would not depend on it)
        find_draft_head(denoiser).out.weight.normal_(0, 1, generator=torch.Generator().manual_seed(1))
    return denoiser, objective


def _batch(*names: str, rows: int = 6) -> dict:
    data = datasets.concatenate_datasets([load_toyset(name).dataset(rows, seed=i) for i, name in enumerate(names)])
    return DiffusionCollator(0)(data)


@pytest.mark.parametrize("answers", ["data", "samples"])
def test_the_loss_is_draft_loss_on_the_targets_of_its_answers(answers):
    # Fails if the objective scores other answers (data instead of the model's own samples or the reverse),
    # draws its cuts otherwise, or changes the loss.
    denoiser, objective = _prepared(answers=answers)
    batch = _batch("likes_tennis")
    got = objective(denoiser, batch, generator=torch.Generator().manual_seed(3))
    generator = torch.Generator().manual_seed(3)
    prompts, data_answers = batch["input_ids"][:, :1], batch["input_ids"][:, 1:4]
    answers_used = data_answers if answers == "data" else own_samples(denoiser, prompts, 3, "l2r", generator)
    targets = distillation_targets(denoiser, prompts, answers_used, cuts=uniform_cuts(6, 3, generator, "cpu"))
    expected, metrics = draft_loss(find_draft_head(denoiser), targets)
    torch.testing.assert_close(got.loss, expected, atol=1e-6, rtol=0)
    assert got.metrics["acceptance"] == pytest.approx(metrics["acceptance"], abs=1e-6)


def test_groups_of_different_lengths_weigh_by_their_rows():
    # cities (2 answer tokens) and likes_tennis (3): per group draft_loss, weighted 4/10 and 6/10. Fails if
    # the groups are averaged unweighted or rows of one length are scored with another's.
    denoiser, objective = _prepared(answers="data")
    batch = DiffusionCollator(0)(datasets.concatenate_datasets([load_toyset("cities").dataset(4, seed=0),
                                                                load_toyset("likes_tennis").dataset(6, seed=1)]))
    got = objective(denoiser, batch, generator=torch.Generator().manual_seed(5)).loss
    generator, head, total = torch.Generator().manual_seed(5), find_draft_head(denoiser), 0.0
    for rows, length in ((slice(0, 4), 2), (slice(4, 10), 3)):  # the groups in (prompt, answer) length order
        ids = batch["input_ids"][rows]
        cuts = uniform_cuts(len(ids), length, generator, "cpu")
        targets = distillation_targets(denoiser, ids[:, :1], ids[:, 1 : 1 + length], cuts=cuts)
        total = total + draft_loss(head, targets)[0] * len(ids) / 10
    torch.testing.assert_close(got, total, atol=1e-6, rtol=0)


def test_prepare_freezes_the_denoiser_and_trains_the_head_alone():
    # Fails if the adapter (or the head's frozen original copy inside peft's wrapper) stays trainable.
    denoiser, objective = _prepared()
    trainable = {name for name, p in denoiser.named_parameters() if p.requires_grad}
    head = {id(p) for p in find_draft_head(denoiser).parameters()}
    assert trainable and {id(p) for p in denoiser.parameters() if p.requires_grad} == head, sorted(trainable)[:5]
    loss = objective(denoiser, _batch("likes_tennis"), generator=torch.Generator().manual_seed(0)).loss
    loss.backward()
    assert all(p.grad is not None for p in find_draft_head(denoiser).parameters())
    assert denoiser.model.peft_config["default"].modules_to_save == ["draft_head"]


def test_train_denoiser_trains_the_adapter_on_the_token_ce_beside_the_head():
    # Fails if train_denoiser leaves the adapter frozen or without a gradient, or drops the token-CE term.
    denoiser, objective = _prepared(train_denoiser=True, added_token_ce_weight=0.5)
    lora = [p for name, p in denoiser.named_parameters() if "lora_" in name]
    assert lora and all(p.requires_grad for p in lora)
    output = objective(denoiser, _batch("likes_tennis"), generator=torch.Generator().manual_seed(0))
    output.loss.backward()
    assert "token_ce" in output.metrics
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in lora)


@pytest.mark.parametrize("kwargs, message", [
    ({"answers": "teacher"}, "answers must be one of samples, data"),
    ({"order": "zigzag"}, "unknown verification order 'zigzag'"),
    ({"train_denoiser": True, "added_token_ce_weight": 0}, "train_denoiser needs added_token_ce_weight > 0"),
    ({"width": 0}, "width must be a whole number >= 1"),
    ({"token_ce": {"eps": 0.01}}, "token_ce is the adapter's loss when train_denoiser is true"),
])
def test_bad_options_are_refused_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LOSSES.build("draft_distillation", kwargs)


def test_an_existing_head_of_another_size_is_refused_and_one_of_its_own_size_is_trained():
    denoiser = _denoiser()
    attach_draft_head(denoiser, max_positions=8, width=16, layers=1, heads=2)
    with pytest.raises(ValueError, match=r"already has a draft head with width 16 \(asked 32\)"):
        LOSSES.build("draft_distillation", {"width": 32}).prepare(denoiser)
    LOSSES.build("draft_distillation", {}).prepare(denoiser)  # no sizes asked: the head as it is
    assert find_draft_head(denoiser).width == 16


def test_an_answer_longer_than_the_head_is_a_clear_error():
    denoiser, _ = _prepared()
    objective = LOSSES.build("draft_distillation", {})
    short = _denoiser()
    attach_draft_head(short, max_positions=2, width=16, layers=1, heads=2)
    objective.prepare(short)
    with pytest.raises(ValueError, match="longer than the draft head's 2 positions"):
        objective(short, _batch("likes_tennis"))


def test_zero3_on_several_ranks_is_refused_before_the_head_is_attached(monkeypatch):
    # Each rank's sampler and target rows run their own number of forwards; under ZeRO-3 each is collective.
    import jointobj.objectives.base as base

    denoiser = _denoiser()
    for i, parameter in enumerate(denoiser.parameters()):
        parameter.ds_id = i  # ZeRO-3 shards, as DeepSpeed tags them
    monkeypatch.setattr(base, "world_size", lambda: 2)
    with pytest.raises(ValueError, match="draft_distillation objective does not run under ZeRO-3 on several ranks"):
        LOSSES.build("draft_distillation", {}).prepare(denoiser)
    assert find_draft_head(denoiser) is None
    monkeypatch.setattr(base, "world_size", lambda: 1)
    LOSSES.build("draft_distillation", {"width": 16, "heads": 2}).prepare(denoiser)
    assert find_draft_head(denoiser) is not None
