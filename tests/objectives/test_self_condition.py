"""Self-conditioning: off is bit-identical, on feeds detached soft states to the scored forward,
the K-block likelihood stays normalised, the config field reaches every objective."""

import functools
import itertools
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from jointobj import Denoiser, LogSumOrdersLoss, MixtureLoss, TokenCELoss
from jointobj.diffusion.likelihood import order_log_likelihood
from jointobj.diffusion.orders import ORDERS, Orders
from jointobj.model.soft_inputs import soft_input_embeddings, soft_state
from jointobj.model.tiny import tiny_masked_lm
from jointobj.objectives.self_condition import SelfConditionedDenoiser, SelfConditioning
from jointobj.toysets.oracle import OracleDenoiser
from jointobj.training.trainer import JointObjConfig, build_objective

from helpers import padded_batch

VOCAB, MASK, PAD = 100, 1, 0


@functools.cache
def tiny(architecture: str = "modernbert", vocab: int = VOCAB, mask: int = MASK) -> Denoiser:
    return Denoiser(tiny_masked_lm(architecture, vocab_size=vocab, seed=0), mask_token_id=mask)


def make_batch(lengths, prompt_lengths, seed=0):
    return padded_batch(lengths, prompt_lengths, VOCAB, pad=PAD, seed=seed)


class Recorder:
    """Calls a denoiser and keeps, per call, its inputs, whether grad was on, and whether a
    gradient later reached its logits."""

    def __init__(self, denoiser):
        self.denoiser, self.calls = denoiser, []

    def __call__(self, **inputs):
        logits = self.denoiser(**inputs)
        call = {"inputs": inputs, "grad_enabled": torch.is_grad_enabled(), "logits": logits.detach(), "got_grad": False}
        if logits.requires_grad:
            logits.register_hook(lambda grad: call.update(got_grad=True))
        self.calls.append(call)
        return logits

    def __getattr__(self, name):
        if name == "denoiser":
            raise AttributeError(name)
        return getattr(self.denoiser, name)


# ---------------------------------------------------------------- off


def test_probability_zero_is_bit_identical_to_the_plain_loss():
    batch = make_batch([8, 6], [2, 1])
    loss_fn = TokenCELoss(self_condition_prob=0.0)
    recorder = Recorder(tiny())
    generator = torch.Generator().manual_seed(3)
    output = loss_fn(recorder, batch, generator=generator)
    reference_generator = torch.Generator().manual_seed(3)  # today's forward, by hand
    noised = loss_fn.corrupt(batch, MASK, reference_generator)
    reference = loss_fn.score(tiny()(input_ids=noised.input_ids, attention_mask=batch["attention_mask"]), batch, noised)
    assert torch.equal(output.loss, reference.loss)
    assert len(recorder.calls) == 1 and set(output.metrics) == set(reference.metrics)  # no extra forward, no new keys
    assert torch.equal(generator.get_state(), reference_generator.get_state())  # no random number drawn


# ---------------------------------------------------------------- on


def test_probability_one_scores_a_second_forward_that_reads_detached_states():
    batch = make_batch([8, 7], [2, 1], seed=1)
    recorder = Recorder(tiny())
    output = TokenCELoss(self_condition_prob=1.0)(recorder, batch, generator=torch.Generator().manual_seed(4))
    output.loss.backward()
    first, second = recorder.calls
    assert "input_ids" in first["inputs"] and "inputs_embeds" in second["inputs"]
    assert not first["grad_enabled"] and not first["got_grad"]  # the first forward gets no gradient
    assert second["got_grad"]
    ids = first["inputs"]["input_ids"]  # [b, l] the corrupted batch
    masked = ids == MASK
    assert masked.any()
    expected = soft_input_embeddings(tiny(), ids, masked, soft_state(first["logits"][masked], MASK), 1.0)
    torch.testing.assert_close(second["inputs"]["inputs_embeds"], expected)  # soft at masks, hard elsewhere
    assert output.metrics["self_condition_rate"] == 1 and output.metrics["self_condition_rows"] == 2


@given(rows=st.lists(st.tuples(st.integers(2, 12), st.integers(0, 11)), min_size=1, max_size=4),
       architecture=st.sampled_from(["bert", "modernbert"]), seed=st.integers(0, 1000))
def test_self_conditioned_loss_is_finite(rows, architecture, seed):
    batch = make_batch([length for length, _ in rows], [min(p, length - 1) for length, p in rows], seed=seed)
    loss_fn = TokenCELoss(self_condition_prob=1.0)
    output = loss_fn(tiny(architecture), batch, generator=torch.Generator().manual_seed(seed))
    assert torch.isfinite(output.loss) and output.loss >= 0


def test_half_the_steps_are_self_conditioned():
    n, option = 2000, SelfConditioning(0.5)
    generator = torch.Generator().manual_seed(0)
    used = [isinstance(option.wrap(tiny(), generator), SelfConditionedDenoiser) for _ in range(n)]
    assert abs(sum(used) / n - 0.5) <= 4.5 * math.sqrt(0.25 / n)


@pytest.mark.parametrize("objective", ["token_ce", "logsum"])
def test_the_choice_is_the_same_on_every_rank_whatever_its_batches(objective):
    # Under ZeRO-3 every forward is collective, so all ranks must choose alike, though each rank's
    # batches have other shapes and consumed its global RNG (and the loss's generator) differently.
    def choices(rank):
        torch.manual_seed(100 + rank)
        generator = torch.Generator().manual_seed(rank)
        loss_fn = (TokenCELoss(self_condition_prob=0.5) if objective == "token_ce"
                   else LogSumOrdersLoss(["l2r"], blocks=1, self_condition_prob=0.5))
        made = []
        for step in range(12):
            lengths = [4 + (step + rank) % 5, 3] + [6] * rank  # other lengths and batch sizes per rank
            batch = make_batch(lengths, [1] * len(lengths), seed=step)
            with torch.no_grad():
                output = loss_fn(tiny(), batch, generator=generator if step % 2 else None)
            made.append(int(output.metrics["self_condition_rate"]))
        return made

    first = choices(0)
    assert 0 < sum(first) < len(first)  # both choices occur, so equality has teeth
    assert choices(1) == first == choices(2)


def test_logsum_with_self_conditioning_doubles_its_forwards_and_stays_finite():
    batch = make_batch([6, 5], [1, 2], seed=2)
    plain, conditioned = Recorder(tiny()), Recorder(tiny())
    LogSumOrdersLoss(blocks=2)(plain, batch, generator=torch.Generator().manual_seed(0))
    output = LogSumOrdersLoss(blocks=2, self_condition_prob=1.0)(conditioned, batch,
                                                                 generator=torch.Generator().manual_seed(0))
    assert len(conditioned.calls) == 2 * len(plain.calls)
    assert all("inputs_embeds" in call["inputs"] for call in conditioned.calls[1::2])
    assert torch.isfinite(output.loss) and output.metrics["self_condition_rows"] == 2 * 4 * 2  # b * M * K rows
    output.loss.backward()


@pytest.mark.parametrize("blocks", [1, 2, 4])
def test_self_conditioned_k_block_likelihood_still_sums_to_one(blocks):
    # States are a function of the visible tokens, so each block's conditional is still a distribution.
    vocab, mask = 4, 3
    denoiser = tiny("modernbert", vocab, mask)
    answers = torch.tensor(list(itertools.product(range(vocab), repeat=4)))  # [256, 4]
    input_ids = torch.cat([torch.full((len(answers), 1), 2), answers], dim=1)  # [256, 5]
    prompt_mask = torch.zeros_like(input_ids, dtype=torch.bool)
    prompt_mask[:, 0] = True
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "prompt_mask": prompt_mask}
    rank = torch.stack([ORDERS.get(name)(~prompt_mask) for name in ("l2r", "r2l")], dim=1)  # [256, 2, 5]
    zeros = torch.zeros(len(answers), 2)
    orders = Orders(rank, torch.zeros(len(answers), 2, dtype=torch.long), ("l2r",), zeros, zeros)
    with torch.no_grad():
        loglik = order_log_likelihood(SelfConditionedDenoiser(denoiser), batch, orders, blocks, max_rows=1024)
    torch.testing.assert_close(loglik.exp().sum(0), torch.ones(2), atol=1e-4, rtol=0)


# ---------------------------------------------------------------- configuration


SELF_CONDITIONED = {"token_ce": {"self_condition_prob": 0.5}, "logsum": {"self_condition_prob": 0.5},
                    "mixture": {"token_ce": {"self_condition_prob": 0.5}, "logsum": {"self_condition_prob": 0.5}}}


@pytest.mark.parametrize("objective", ["token_ce", "logsum", "mixture"])
def test_objective_kwargs_reach_every_part_of_the_objective(objective, tmp_path):
    kwargs = SELF_CONDITIONED[objective]
    loss = build_objective(JointObjConfig(output_dir=str(tmp_path), objective=objective, objective_kwargs=kwargs))
    parts = [loss.token_ce, loss.logsum] if isinstance(loss, MixtureLoss) else [loss]
    assert [part.self_condition.prob for part in parts] == [0.5] * len(parts)
    seeded = build_objective(JointObjConfig(output_dir=str(tmp_path), objective=objective, seed=7,
                                            objective_kwargs=kwargs))
    parts = [seeded.token_ce, seeded.logsum] if isinstance(seeded, MixtureLoss) else [seeded]
    assert [part.self_condition.seed for part in parts] == [7] * len(parts)
    default = build_objective(JointObjConfig(output_dir=str(tmp_path), objective=objective))
    parts = [default.token_ce, default.logsum] if isinstance(default, MixtureLoss) else [default]
    assert all(part.self_condition.prob == 0.0 for part in parts)


@pytest.mark.parametrize("prob", [-0.1, 1.5])
def test_probability_outside_zero_one_is_refused(prob, tmp_path):
    with pytest.raises(ValueError, match=r"self_condition_prob must be a number in \[0, 1\]"):
        JointObjConfig(output_dir=str(tmp_path), objective="token_ce", objective_kwargs={"self_condition_prob": prob})
    with pytest.raises(ValueError, match=r"self_condition_prob must be a number in \[0, 1\]"):
        TokenCELoss(self_condition_prob=prob)


def test_a_denoiser_without_input_embeddings_cannot_be_self_conditioned():
    with pytest.raises(TypeError, match="no input embeddings"):
        TokenCELoss(self_condition_prob=1.0)(OracleDenoiser("cities"), make_batch([3], [1]))
