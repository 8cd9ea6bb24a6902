"""Energies: the self likelihood is the oracle's exact log-probability, partial candidates are
marginalised, an external causal LM scores what it should and refuses another vocabulary,
and the learned head travels with its adapter."""

import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from jointobj import Denoiser
from jointobj.decoding.energies import (
    ENERGIES,
    CausalLMEnergy,
    ExactEnergy,
    SelfEnergy,
    build_energy,
    parameter_count,
)
from jointobj.diffusion.likelihood import order_log_likelihood
from jointobj.diffusion.orders import OrderProposal
from jointobj.model.energy_head import attach_energy_head, find_energy_head, head_energy
from jointobj.model.tiny import tiny_masked_lm
from jointobj.toysets.builtin import load_toyset, toy_tokenizer
from jointobj.toysets.oracle import OracleDenoiser

from tiny_models import BidirectionalLM

VOCAB = len(toy_tokenizer())


def support_rows(name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every (prompt, answer) of an unconditional set as ids [S, l], context [S, l], log p [S]."""
    toyset = load_toyset(name)
    answers, probs = toyset.answer_distribution()
    ids = torch.cat([toyset.prompts[[0] * len(answers)], answers], 1)
    context = torch.zeros_like(ids, dtype=torch.bool)
    context[:, : toyset.prompt_length] = True
    return ids, context, probs.log()


# ---------------------------------------------------------------- self and exact


@pytest.mark.parametrize("name", ["likes_tennis", "cities", "agreement"])
def test_self_energy_with_one_block_per_position_is_the_oracles_exact_log_probability(name):
    ids, context, log_p = support_rows(name)
    oracle = OracleDenoiser(name)
    for order in ("l2r", "r2l"):
        energy = SelfEnergy(oracle, order, "all")(ids, context)
        assert torch.allclose(energy, -log_p, atol=1e-4), (order, energy[:4], -log_p[:4])
    assert torch.allclose(ExactEnergy(name)(ids, context), -log_p, atol=1e-9)


def test_self_energy_is_the_shared_order_likelihood():
    denoiser = Denoiser(BidirectionalLM(vocab_size=VOCAB), mask_token_id=2).eval()
    ids = torch.randint(4, VOCAB, (5, 7), generator=torch.Generator().manual_seed(0))
    context = torch.zeros_like(ids, dtype=torch.bool)
    context[:, :2] = True
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "prompt_mask": context}
    orders = OrderProposal(["l2r"]).sample(context.logical_not())
    with torch.no_grad():
        expected = -order_log_likelihood(denoiser, batch, orders, 2)[:, 0].double()
        assert torch.allclose(SelfEnergy(denoiser, "l2r", 2)(ids, context), expected, atol=1e-5)
    assert SelfEnergy(denoiser, "l2r", 2).cost(context).rows == 5 * 2


def test_partial_candidates_are_marginalised_up_to_a_constant_of_the_context():
    """With some answer positions left [MASK] (as context), self (exact oracle, one block per
    position) and exact agree up to log p(context): the in-loop 'step' scope relies on it."""
    toyset = load_toyset("latin_square_4")
    answers, _ = toyset.answer_distribution()
    mask = toyset.tokenizer.mask_token_id
    context_answer = answers[0].clone()
    visible = torch.zeros(16, dtype=torch.bool)
    visible[[0, 5]] = True  # a committed context of two cells
    drawn = torch.zeros(16, dtype=torch.bool)
    drawn[[2, 7, 9]] = True  # this step's three cells, drawn from a few answers and one invalid guess
    rows = []
    for source in list(answers[:6]) + [torch.full((16,), int(answers[0, 0]))]:
        row = torch.where(visible, context_answer, torch.where(drawn, source, mask))
        rows.append(torch.cat([toyset.prompts[0], row]))
    ids = torch.stack(rows)
    context = torch.ones_like(ids, dtype=torch.bool)
    context[:, 1:] = ~drawn
    exact = ExactEnergy(toyset)(ids, context)
    own = SelfEnergy(OracleDenoiser(toyset), "l2r", "all")(ids, context)
    finite = torch.isfinite(exact)
    assert finite.sum() >= 2 and not finite.all()  # some candidates fit the context, the invalid one does not
    offset = exact[finite] - own[finite]
    assert torch.allclose(offset, offset[0].expand_as(offset), atol=1e-4)
    assert (own[~finite] > 1e3).all()  # the oracle gives an impossible token a huge, finite energy


def test_exact_energy_is_infinite_off_the_support():
    toyset = load_toyset("likes_tennis")
    answers = ["i likes tennis", "he likes apple"]
    ids = torch.tensor([toy_tokenizer()("<likes_tennis> " + s)["input_ids"] for s in answers])
    energy = ExactEnergy(toyset)(ids, torch.zeros_like(ids, dtype=torch.bool))
    assert energy[0] == math.inf and energy[1] == pytest.approx(math.log(2))


def test_energies_by_spec_and_bad_specs_say_what_to_do():
    oracle = OracleDenoiser("cities")
    assert build_energy("self:r2l:2", denoiser=oracle).spec == "self:r2l:2"
    assert isinstance(build_energy("exact", denoiser=oracle), ExactEnergy)  # an oracle's own sets
    assert set(ENERGIES.names()) >= {"self", "causal", "head", "exact"}
    with pytest.raises(ValueError, match="known: causal, exact, head, self"):
        build_energy("perplexity", denoiser=oracle)
    with pytest.raises(ValueError, match="whole number >= 1 or 'all'"):
        build_energy("self:l2r:x", denoiser=oracle)
    with pytest.raises(ValueError, match="needs a denoiser"):
        build_energy("self")
    with pytest.raises(ValueError, match="needs the toy sets"):
        build_energy("exact")


# ---------------------------------------------------------------- causal


def save_gpt2(directory, vocab_size: int) -> None:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=vocab_size, n_embd=16, n_layer=1, n_head=2, n_positions=32,
                        bos_token_id=0, eos_token_id=0)
    GPT2LMHeadModel(config).save_pretrained(directory)


def test_causal_energy_scores_every_token_after_the_first(tmp_path):
    save_gpt2(tmp_path / "gpt2", VOCAB)
    denoiser = Denoiser(tiny_masked_lm("modernbert", vocab_size=VOCAB, max_positions=32, seed=0), mask_token_id=2)
    energy = build_energy(f"causal:{tmp_path / 'gpt2'}", denoiser=denoiser)
    ids = torch.randint(4, VOCAB, (3, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        log_probs = energy.model(input_ids=ids).logits.double().log_softmax(-1)  # [3, 6, V]
        expected = -sum(log_probs[:, t - 1].gather(-1, ids[:, t, None]).squeeze(-1) for t in range(1, 6))
        assert torch.allclose(energy(ids, torch.zeros_like(ids, dtype=torch.bool)), expected, atol=1e-9)
    ratio = parameter_count(energy.model) / parameter_count(denoiser)
    assert energy.cost(ids).steps == 1 and energy.cost(ids).rows == pytest.approx(3 * ratio)


def test_causal_energy_with_another_vocabulary_needs_a_mapping(tmp_path):
    save_gpt2(tmp_path / "gpt2", VOCAB + 10)
    oracle = OracleDenoiser("cities")
    with pytest.raises(ValueError, match="another vocabulary .* pass id_map"):
        build_energy(f"causal:{tmp_path / 'gpt2'}", denoiser=oracle)
    model = GPT2LMHeadModel.from_pretrained(tmp_path / "gpt2")
    shifted = CausalLMEnergy(model, denoiser=oracle, id_map=torch.arange(VOCAB) + 10)
    ids = torch.randint(4, VOCAB, (2, 3), generator=torch.Generator().manual_seed(2))
    assert torch.isfinite(shifted(ids, torch.zeros_like(ids, dtype=torch.bool))).all()
    assert shifted.cost(ids).rows == 2  # the oracle has no parameters: one row per candidate


# ---------------------------------------------------------------- the learned head


def tiny_denoiser(hidden: int = 32) -> Denoiser:
    model = tiny_masked_lm("modernbert", vocab_size=VOCAB, hidden_size=hidden, max_positions=32, seed=0)
    return Denoiser(model, tokenizer=toy_tokenizer())


def test_hidden_states_are_the_last_layer_in_float32():
    denoiser = tiny_denoiser(32)
    ids = torch.randint(4, VOCAB, (2, 5))
    hidden = denoiser.hidden_states(ids, torch.ones_like(ids))
    assert hidden.shape == (2, 5, 32) and hidden.dtype == torch.float32
    with pytest.raises(TypeError, match="no hidden_states"):
        Denoiser(BidirectionalLM(vocab_size=VOCAB), mask_token_id=2).hidden_states(ids)


@pytest.mark.parametrize("head_first", [True, False], ids=["head-then-lora", "lora-then-head"])
def test_head_is_saved_and_loaded_with_the_adapter(tmp_path, head_first):
    tiny_denoiser().save_pretrained(tmp_path / "base")
    denoiser = Denoiser.from_pretrained(tmp_path / "base")
    if head_first:
        attach_energy_head(denoiser, width=8)
        denoiser.add_lora()
    else:
        denoiser.add_lora()
        attach_energy_head(denoiser, width=8)
    trainable = [p for p in find_energy_head(denoiser.model).parameters() if p.requires_grad]
    assert trainable, "an optimizer over requires_grad parameters must see the head"
    with torch.no_grad():
        for p in trainable:
            p.add_(torch.randn_like(p))
    ids = torch.randint(4, VOCAB, (3, 6), generator=torch.Generator().manual_seed(0))
    before = head_energy(denoiser, ids).detach()
    assert before.abs().max() > 0
    denoiser.save_pretrained(tmp_path / "tuned")
    loaded = Denoiser.from_pretrained(tmp_path / "tuned")
    assert torch.allclose(head_energy(loaded, ids), before, atol=1e-6)
    assert build_energy("head", denoiser=loaded).residual


def test_head_of_another_hidden_size_is_refused(tmp_path):
    tiny_denoiser(32).save_pretrained(tmp_path / "base32")
    tiny_denoiser(48).save_pretrained(tmp_path / "base48")
    denoiser = Denoiser.from_pretrained(tmp_path / "base32")
    attach_energy_head(denoiser)
    denoiser.add_lora()
    denoiser.save_pretrained(tmp_path / "tuned")
    with pytest.raises(ValueError, match="hidden size 32, but this model's hidden size is 48"):
        Denoiser.from_pretrained(tmp_path / "tuned", base=tmp_path / "base48")


def test_head_without_lora_is_saved_in_the_model_weights(tmp_path):
    denoiser = tiny_denoiser()
    attach_energy_head(denoiser, width=8, parameterisation="absolute")
    with torch.no_grad():
        for p in find_energy_head(denoiser.model).parameters():
            p.add_(torch.randn_like(p))
    ids = torch.randint(4, VOCAB, (2, 4))
    before = head_energy(denoiser, ids).detach()
    denoiser.save_pretrained(tmp_path / "full")
    loaded = Denoiser.from_pretrained(tmp_path / "full")
    assert torch.allclose(head_energy(loaded, ids), before, atol=1e-6)
    assert not build_energy("head", denoiser=loaded).residual


def test_head_energy_without_a_head_says_how_to_get_one():
    with pytest.raises(ValueError, match="no energy head"):
        build_energy("head", denoiser=tiny_denoiser())
