"""EnergyNCELoss: the NCE loss against a naive reference, the proposal log-ratio it relies on,
config wiring, a head that learns the joint constraint, and the Trainer path that trains,
saves and reloads it."""

import copy
import math

import pytest
import torch

from jointobj import Denoiser, DiffusionCollator
from jointobj.decoding import build_decoder
from jointobj.diffusion.likelihood import order_log_likelihood
from jointobj.diffusion.orders import OrderProposal
from jointobj.model.energy_head import find_energy_head, head_energy
from jointobj.model.tiny import tiny_masked_lm
from jointobj.objectives import LOSSES, EnergyNCELoss
from jointobj.objectives.energy_nce import classifier_logit, nce_loss
from jointobj.toysets.builtin import load_toyset, toy_tokenizer
from jointobj.toysets.oracle import OracleDenoiser
from jointobj.training.trainer import JointObjConfig, JointObjTrainer, build_objective

from training import train_token_ce


def naive(positive_energy, negative_energy, log_q_pos=None, log_q_neg=None):
    """-log sigmoid(s+) - mean_j log sigmoid(-s-), s = -E (- log q), written out with torch.sigmoid."""
    s_pos = -positive_energy if log_q_pos is None else -positive_energy - log_q_pos
    s_neg = -negative_energy if log_q_neg is None else -negative_energy - log_q_neg
    return (-torch.log(torch.sigmoid(s_pos)) - torch.log(torch.sigmoid(-s_neg)).mean(-1)).mean()


@pytest.mark.parametrize("absolute", [False, True])
def test_nce_loss_matches_the_naive_formula_on_fixed_energies(absolute):
    generator = torch.Generator().manual_seed(0)
    positive, negative = torch.randn(2, generator=generator), 3 * torch.randn(2, 4, generator=generator)
    log_q_pos, log_q_neg = (-torch.rand(2, generator=generator) * 5, -torch.rand(2, 4, generator=generator) * 5)
    if not absolute:
        log_q_pos = log_q_neg = None
    got = nce_loss(classifier_logit(positive, log_q_pos), classifier_logit(negative, log_q_neg))
    assert torch.allclose(got, naive(positive, negative, log_q_pos, log_q_neg), atol=1e-6)
    # EDLM's sign: data should get low energy, so lowering E(x+) or raising E(x-) lowers the loss
    lower = nce_loss(classifier_logit(positive - 1, log_q_pos), classifier_logit(negative + 1, log_q_neg))
    assert lower < got


def test_the_module_computes_the_naive_loss_on_its_own_negatives():
    toyset = load_toyset("cities")
    denoiser = Denoiser(tiny_masked_lm("modernbert", vocab_size=len(toy_tokenizer()), max_positions=16, seed=0),
                        tokenizer=toy_tokenizer())
    loss_fn = EnergyNCELoss(None, 3, head_width=8)
    loss_fn.prepare(denoiser)
    with torch.no_grad():
        for p in find_energy_head(denoiser.model).parameters():
            p.add_(torch.randn_like(p))
    batch = DiffusionCollator(0)(toyset.dataset(6, seed=1))
    got = loss_fn(denoiser, batch, generator=torch.Generator().manual_seed(7)).loss
    negatives, _, _ = loss_fn._negatives(denoiser, batch, torch.Generator().manual_seed(7))  # the same draws
    assert torch.equal(negatives[:, :1], batch["input_ids"].repeat_interleave(3, 0)[:, :1])  # same prompts
    positive = head_energy(denoiser, batch["input_ids"], batch["attention_mask"])
    negative = head_energy(denoiser, negatives, batch["attention_mask"].repeat_interleave(3, 0)).view(6, 3)
    assert torch.allclose(got, naive(positive, negative), atol=1e-5)
    got.backward()
    assert all(p.grad is not None for p in find_energy_head(denoiser.model).parameters())


@pytest.mark.parametrize("k", [1, 2, 3])
def test_the_sampler_log_probability_is_the_k_block_left_to_right_likelihood(k):
    """The absolute parameterisation scores positives with order_log_likelihood(l2r, ceil(L / K))
    as the probability the l2r sampler gives them: on the oracle, equal to its own log_prob."""
    toyset = load_toyset("shuffle_3")
    oracle = OracleDenoiser(toyset)
    prompts, _ = toyset.sample(32, torch.Generator().manual_seed(0))
    out = build_decoder("l2r", k).sample(oracle, prompts, 3, torch.Generator().manual_seed(1))
    scorable = torch.zeros_like(out.ids, dtype=torch.bool)
    scorable[:, toyset.prompt_length :] = True
    batch = {"input_ids": out.ids, "attention_mask": torch.ones_like(out.ids), "prompt_mask": ~scorable}
    loglik = order_log_likelihood(oracle, batch, OrderProposal(["l2r"]).sample(scorable), math.ceil(3 / k))[:, 0]
    finite = out.log_prob > -1e3  # the trap's impossible tokens are -1e4 in both, to float precision
    assert finite.any() and torch.allclose(loglik[finite].double(), out.log_prob[finite], atol=1e-4)


# ---------------------------------------------------------------- configuration


def test_energy_objective_builds_from_a_name_and_kwargs(tmp_path):
    config = JointObjConfig(output_dir=str(tmp_path), objective="energy", objective_kwargs={
        "tokens_per_step": 2, "negatives": 4, "decoder": "l2r", "parameterisation": "absolute",
        "added_token_ce_weight": 0.5, "head_width": 16, "token_ce": {"schedule": "cosine"}})
    objective = build_objective(config)
    assert isinstance(objective, EnergyNCELoss) and "energy" in LOSSES
    assert (objective.tokens_per_step, objective.negatives, objective.decoder) == (2, 4, "l2r")
    assert (objective.parameterisation, objective.added_token_ce_weight, objective.head_width) == ("absolute", 0.5, 16)
    assert type(objective.token_ce.schedule).__name__ == "CosineSchedule"
    assert build_objective(JointObjConfig(output_dir=str(tmp_path), objective="energy")).tokens_per_step is None
    everything = JointObjConfig(output_dir=str(tmp_path), objective="energy",
                                objective_kwargs='{"tokens_per_step": "all"}')
    assert build_objective(everything).tokens_per_step is None


@pytest.mark.parametrize("kwargs,message", [
    ({"negatives": 0}, r"negatives \(samples per row\) must be a whole number >= 1"),
    ({"tokens_per_step": 0}, "tokens_per_step must be a whole number >= 1"),
    ({"decoder": "greedy"}, "unknown decoder 'greedy'"),
    ({"head_width": -1}, "head_width must be a whole number >= 1"),
    ({"added_token_ce_weight": -1}, "added_token_ce_weight must be a number >= 0"),
    ({"token_ce_weight": 0.5}, "takes no argument 'token_ce_weight'; it takes: added_token_ce_weight"),
])
def test_bad_energy_kwargs_are_refused_when_the_config_is_built(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        JointObjConfig(output_dir=str(tmp_path), objective="energy", objective_kwargs=kwargs)


def test_absolute_energy_needs_a_sampler_whose_probability_is_known():
    with pytest.raises(ValueError, match="parameterisation must be one of"):
        EnergyNCELoss(parameterisation="relative")
    denoiser = Denoiser(tiny_masked_lm("modernbert", vocab_size=len(toy_tokenizer()), max_positions=16, seed=0),
                        tokenizer=toy_tokenizer())
    loss_fn = EnergyNCELoss(1, decoder="random", parameterisation="absolute")
    loss_fn.prepare(denoiser)
    with pytest.raises(ValueError, match="knows it only at one step"):
        loss_fn(denoiser, DiffusionCollator(0)(load_toyset("cities").dataset(4)))


# ---------------------------------------------------------------- learning the joint constraint


@pytest.mark.slow  # 600 + 150 training steps
def test_head_trained_on_likes_tennis_separates_valid_from_invalid():
    """The base (tests/training.py) has the right marginals, so its one-step sampler writes
    'i likes tennis' and the other five invalid mixes 3 times in 4: exactly the negatives the
    head must learn to reject. 150 AdamW steps with LoRA, 2 negatives per row: 'i likes tennis'
    ends at least 3 nats above 'he likes apple' (seen: 9), and every invalid answer at least 1 nat
    above every valid one (seen: 1.7 to 7; the slowest to rise is
    'he play apple', one word off a valid answer). A fresh head gives 0 everywhere."""
    torch.manual_seed(0)  # head and LoRA initialisation
    denoiser = copy.deepcopy(train_token_ce("likes_tennis"))
    loss_fn = EnergyNCELoss(None, 2, added_token_ce_weight=1.0, head_width=32)
    loss_fn.prepare(denoiser)
    denoiser.add_lora()
    optimizer = torch.optim.AdamW([p for p in denoiser.parameters() if p.requires_grad], lr=5e-3)
    table = DiffusionCollator(0)(load_toyset("likes_tennis").dataset(512, seed=0))
    generator = torch.Generator().manual_seed(0)
    denoiser.train()
    for _ in range(150):
        rows = torch.randint(0, 512, (64,), generator=generator)
        loss = loss_fn(denoiser, {k: v[rows] for k, v in table.items()}, generator=generator).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    denoiser.eval()
    words = [(s, o, v) for s in ("he", "i") for o in ("likes", "play") for v in ("apple", "tennis")]
    ids = torch.tensor([toy_tokenizer()(f"<likes_tennis> {' '.join(w)}")["input_ids"] for w in words])
    with torch.no_grad():
        energy = dict(zip(words, head_energy(denoiser, ids).tolist()))
    valid = [energy[("he", "likes", "apple")], energy[("i", "play", "tennis")]]
    invalid = [e for w, e in energy.items() if w not in (("he", "likes", "apple"), ("i", "play", "tennis"))]
    assert energy[("i", "likes", "tennis")] - energy[("he", "likes", "apple")] >= 3.0, energy
    assert min(invalid) - max(valid) >= 1.0, energy


def test_trainer_optimises_the_head_and_saves_it_with_the_adapter(tmp_path):
    tokenizer = toy_tokenizer()
    Denoiser(tiny_masked_lm("modernbert", vocab_size=len(tokenizer), max_positions=16, seed=0),
             tokenizer=tokenizer).save_pretrained(tmp_path / "base")
    denoiser = Denoiser.from_pretrained(tmp_path / "base").add_lora()
    config = JointObjConfig(output_dir=str(tmp_path / "run"), objective="energy",
                            objective_kwargs={"head_width": 8, "negatives": 2}, max_steps=3,
                            per_device_train_batch_size=8, learning_rate=1e-2,
                            save_strategy="no", report_to="none", logging_steps=1)
    trainer = JointObjTrainer(denoiser, config, train_dataset=load_toyset("cities").dataset(64))
    head = find_energy_head(denoiser.model)
    before = [p.detach().clone() for p in head.parameters() if p.requires_grad]
    trainer.train()
    after = [p.detach() for p in head.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(after, before))  # the optimizer saw the head
    assert any("energy_negative" in entry for entry in trainer.state.log_history)
    trainer.save_model(config.output_dir)
    denoiser.save_settings(config.output_dir)
    ids = torch.randint(4, len(tokenizer), (3, 3), generator=torch.Generator().manual_seed(0))
    denoiser.eval()
    loaded = Denoiser.from_pretrained(config.output_dir).eval()
    with torch.no_grad():
        assert torch.allclose(head_energy(loaded, ids), head_energy(denoiser, ids), atol=1e-5)


def test_zero3_on_several_ranks_is_refused_before_any_forward(monkeypatch):
    # The negatives' sampler runs a rank-dependent number of forwards; under ZeRO-3 each forward is
    # collective, so the run would hang instead of failing. One rank, or ZeRO-2, is fine.
    import jointobj.objectives.base as base  # the refusal every sampling objective shares

    tokenizer = toy_tokenizer()
    denoiser = Denoiser(tiny_masked_lm("modernbert", vocab_size=len(tokenizer), seed=0), tokenizer=tokenizer)
    for i, parameter in enumerate(denoiser.parameters()):
        parameter.ds_id = i  # ZeRO-3 shards, as DeepSpeed tags them
    monkeypatch.setattr(base, "world_size", lambda: 2)
    with pytest.raises(ValueError, match="ZeRO-3 on several ranks.*zero2"):
        EnergyNCELoss(None, 1).prepare(denoiser)
    assert find_energy_head(denoiser.model) is None  # refused before the head was attached
    batch = DiffusionCollator(0)(load_toyset("likes_tennis").dataset(2, seed=0))
    with pytest.raises(ValueError, match="ZeRO-3 on several ranks.*zero2"):  # a model sharded after prepare
        EnergyNCELoss(None, 1)(denoiser, batch)
    monkeypatch.setattr(base, "world_size", lambda: 1)
    EnergyNCELoss(None, 1).prepare(denoiser)
    assert find_energy_head(denoiser.model) is not None
