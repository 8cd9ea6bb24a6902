"""The decoders' shared scaffolding (jointobj/decoding/sampler.py): eval_mode (and that every
decoder and rescorer decodes with dropout off), check_request, block_budget / steps_for, and
gumbel_noise.

Statistical tolerances are 5 standard errors of the sample size, with fixed seeds.
"""

import math
import types

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from transformers import BertConfig, BertForMaskedLM

from jointobj import Denoiser
from jointobj.decoding import build_decoder, steps_for
from jointobj.decoding.sampler import (
    block_budget,
    check_request,
    eval_mode,
    gumbel_noise,
)
from jointobj.diffusion import randomness
from jointobj.evaluation.metrics import TimedDenoiser

VOCAB, MASK = 12, 1
EULER_GAMMA = 0.5772156649015329


# ---------------------------------------------------------------- eval_mode


def test_eval_mode_switches_to_eval_inside_and_restores_training_after():
    # Fails if the block runs in train mode (dropout on) or the caller's train mode is not given back.
    module = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)).train()
    with eval_mode(module):
        assert not module.training and not module[1].training
    assert module.training and module[1].training


def test_eval_mode_restores_training_when_the_body_raises():
    # Fails if the restore is not in a `finally`: an error mid-decoding would leave the model in eval.
    module = nn.Dropout(0.5).train()
    with pytest.raises(RuntimeError, match="mid-decoding"), eval_mode(module):
        assert not module.training
        raise RuntimeError("mid-decoding")
    assert module.training


def test_eval_mode_leaves_a_module_in_eval_in_eval_and_accepts_plain_objects():
    # Fails if eval_mode restores by calling train() unconditionally (a model in eval would come out training).
    module = nn.Dropout(0.5).eval()
    with eval_mode(module):
        assert not module.training
    assert not module.training
    with pytest.raises(ValueError), eval_mode(module):
        raise ValueError
    assert not module.training
    plain = types.SimpleNamespace()  # an oracle-like denoiser with no modes at all
    with eval_mode(plain):
        pass
    assert not hasattr(plain, "training")


# ---------------------------------------------------------------- every decoder runs without dropout


def dropout_denoiser() -> Denoiser:
    """A tiny BERT with dropout 0.5 everywhere, left in train mode (tiny_masked_lm turns dropout off)."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=32, hidden_dropout_prob=0.5,
                        attention_probs_dropout_prob=0.5, pad_token_id=0)
    return Denoiser(BertForMaskedLM(config), mask_token_id=MASK).train()


def prompts_for(b: int, lp: int, seed: int) -> torch.Tensor:
    return torch.randint(2, VOCAB, (b, lp), generator=torch.Generator().manual_seed(seed))


def sample_twice(name: str, k, rescore=None):
    denoiser = dropout_denoiser()
    prompts = prompts_for(3, 2, 0)
    with torch.no_grad():  # the premise: in train mode the same input gives other logits
        ids = torch.cat([prompts, torch.full((3, 4), MASK)], 1)
        assert not torch.equal(denoiser(input_ids=ids), denoiser(input_ids=ids))
    decoder = build_decoder(name, k, rescore=rescore)
    first, again = (decoder.sample(denoiser, prompts, 4, torch.Generator().manual_seed(7)) for _ in range(2))
    return denoiser, first, again


def assert_same_outputs(first, again) -> None:
    assert torch.equal(first.ids, again.ids)
    torch.testing.assert_close(first.log_prob, again.log_prob, equal_nan=True, rtol=0, atol=0)
    if getattr(first, "energy", None) is not None:  # end-of-loop rescoring: every candidate's energy
        torch.testing.assert_close(first.energy, again.energy, rtol=0, atol=0)


@pytest.mark.parametrize("name,k", [("random", 1), ("confidence", 2), ("threshold", 1), ("soft", 1), ("soft", None)])
def test_decoders_sample_without_dropout_and_leave_train_mode_on(name, k):
    # With dropout active every forward differs, so the two same-seed runs would differ (the
    # confidence / threshold choices and every log_prob depend on the logits); fails too if the
    # decoder leaves the model in eval mode.
    denoiser, first, again = sample_twice(name, k)
    assert_same_outputs(first, again)
    assert denoiser.training


@pytest.mark.parametrize("name,k,rescore", [("random", 1, "best:self:l2r:all,3"), ("confidence", 2, "sir:self:l2r:2,3"),
                                            ("soft", 1, "best:self:l2r:all,3")])
def test_end_of_loop_rescorers_score_without_dropout(name, k, rescore):
    # The candidates are drawn in eval mode; their self energies must be too, or they differ run to run.
    denoiser, first, again = sample_twice(name, k, rescore)
    assert_same_outputs(first, again)
    assert denoiser.training


@pytest.mark.parametrize("rescore", ["best:self:l2r:all,3,step", "sir:self:l2r:2,3,fused", "sir:self:l2r:all,3,loop"])
def test_in_loop_rescorers_sample_without_dropout(rescore):
    denoiser, first, again = sample_twice("random", 1, rescore)
    assert_same_outputs(first, again)
    assert denoiser.training


# ---------------------------------------------------------------- check_request


def limited(max_positions):
    return types.SimpleNamespace(max_positions=max_positions)


def test_check_request_refuses_a_one_dimensional_prompt_and_says_how_to_fix_it():
    # Fails if a 1-D prompt got through (it would be read as lp rows of one token) or the hint is gone.
    for prompt in (torch.tensor([2, 3, 4]), [[2, 3]], torch.zeros(1, 2, 3, dtype=torch.long)):
        with pytest.raises(ValueError, match=r"\[batch, prompt_length\].*prompt_ids\[None\]"):
            check_request(limited(None), prompt, 3)
    check_request(limited(None), torch.tensor([[2, 3, 4]]), 3)  # the [None]-ed prompt is fine


@pytest.mark.parametrize("gen_length", [0, -1, 2.5, True, None, "3"])
def test_check_request_refuses_a_gen_length_that_is_not_a_whole_number_from_one(gen_length):
    # Fails if any of these passed, e.g. True (== 1 to int()) or 2.5 (int() would truncate it to 2).
    with pytest.raises(ValueError, match="gen_length must be a whole number >= 1"):
        check_request(limited(None), torch.tensor([[2, 3]]), gen_length)


def test_check_request_refuses_prompt_and_answer_beyond_the_models_positions():
    # Fails if the limit were off by one either way, or ignored: 5 + 3 = 8 fits in 8 positions, 5 + 4 does not.
    prompt = torch.full((2, 5), 3)
    check_request(limited(8), prompt, 3)
    with pytest.raises(ValueError, match=r"prompt \(5\) \+ gen_length \(4\) = 9 tokens, longer than the model's 8"):
        check_request(limited(8), prompt, 4)
    check_request(limited(None), prompt, 1000)  # no known limit: nothing to check
    check_request(object(), prompt, 1000)


# ---------------------------------------------------------------- block_budget and steps_for


class TokenLogits(nn.Module):
    """A cheap fake denoiser: logits from each token and the row's mean token (confidence changes as it fills)."""

    mask_token_id = MASK
    max_positions = 32

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.token = nn.Parameter(3 * torch.randn(VOCAB, VOCAB, generator=generator))
        self.context = nn.Parameter(3 * torch.randn(VOCAB, VOCAB, generator=generator))

    def forward(self, input_ids, attention_mask=None):
        return self.token[input_ids] + self.context[input_ids].mean(1, keepdim=True)  # [b, l, V]


def brute_force_budget(length: int, k, block) -> tuple[list[int], list[int]]:
    """(block of each position, steps of each block) by a plain loop: ceil(B_j / K) for block j of
    B_j positions, one step per block when K is None."""
    size = block or length
    block_of = [i // size for i in range(length)]
    steps = []
    for start in range(0, length, size):
        b_j = min(size, length - start)
        steps.append(1 if k is None else math.ceil(b_j / k))
    return block_of, steps


@given(st.integers(1, 40), st.one_of(st.none(), st.integers(1, 12)), st.one_of(st.none(), st.integers(1, 45)))
def test_block_budget_matches_a_brute_force_loop(length, k, block):
    # Fails on any off-by-one in the last, shorter block, a K = None or block > L mix-up, or a float division.
    block_id, budget = block_budget(length, k, block)
    block_of, steps = brute_force_budget(length, k, block)
    assert block_id.dtype == budget.dtype == torch.long
    assert block_id.tolist() == block_of and budget.tolist() == steps
    assert steps_for(length, k, block) == sum(steps)


@pytest.mark.parametrize("length,k,block", [(1, 1, None), (7, 2, 3), (10, 3, 4), (5, None, 2), (6, 4, None),
                                            (9, 2, 9), (8, 3, 20)])
def test_steps_for_is_the_number_of_forwards_the_sampler_runs(length, k, block):
    # A top-k policy runs exactly steps_for forwards; fails if the loop and the budget disagree.
    denoiser = TimedDenoiser(TokenLogits())
    out = build_decoder("confidence", k, block_length=block).sample(denoiser, prompts_for(3, 1, 0), length,
                                                                     torch.Generator().manual_seed(0))
    assert out.steps == denoiser.calls == steps_for(length, k, block)
    assert (out.row_steps == out.steps).all()


# ---------------------------------------------------------------- gumbel_noise


def test_gumbel_noise_is_float64_finite_on_the_device_and_seeded():
    # Fails if drawn in float32 (or without the generator), or on another device than asked.
    shape = (1000, 50)
    noise = gumbel_noise(shape, torch.Generator().manual_seed(0), "cpu")
    assert noise.dtype == torch.float64 and noise.shape == shape and noise.device.type == "cpu"
    assert torch.isfinite(noise).all()
    assert torch.equal(noise, gumbel_noise(shape, torch.Generator().manual_seed(0), torch.device("cpu")))
    assert not torch.equal(noise, gumbel_noise(shape, torch.Generator().manual_seed(1), "cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gumbel_noise_from_a_cpu_generator_lands_on_cuda_with_the_cpu_stream():
    # The noise is drawn on the generator's device and moved: the same seed, the same noise anywhere.
    noise = gumbel_noise((64, 8), torch.Generator().manual_seed(2), "cuda")
    assert noise.device.type == "cuda" and noise.dtype == torch.float64
    assert torch.equal(noise.cpu(), gumbel_noise((64, 8), torch.Generator().manual_seed(2), "cpu"))


def test_gumbel_noise_stays_finite_at_the_ends_of_the_uniform(monkeypatch):
    # u = 0 is clamped (else -log(-log 0) = -inf); u just below 1 reaches ~36.7 in float64 (float32
    # uniforms stop at ~16.6, the truncated tail). Fails without the clamp or with float32 noise.
    u = torch.tensor([0.0, 1 - 2.0**-53, 0.5], dtype=torch.float64)
    monkeypatch.setattr(randomness, "uniform", lambda shape, generator, device, dtype=torch.float64: u.clone())
    noise = gumbel_noise((3,), None, "cpu")
    assert torch.isfinite(noise).all()
    assert noise[1] > 36 and noise[0] == -math.log(-math.log(torch.finfo(torch.float64).tiny))
    assert noise[2] == pytest.approx(-math.log(math.log(2)))


def test_gumbel_noise_has_the_standard_gumbel_mean_and_variance():
    # Standard Gumbel: mean = Euler-Mascheroni 0.5772, variance pi^2 / 6 (excess kurtosis 12/5).
    # Fails for a shifted or scaled draw (e.g. -log u, or a missing minus sign: mean -0.5772).
    n = 1_000_000
    noise = gumbel_noise((n,), torch.Generator().manual_seed(21), "cpu")
    variance = math.pi**2 / 6
    assert abs(float(noise.mean()) - EULER_GAMMA) <= 5 * math.sqrt(variance / n)  # 5 standard errors
    variance_se = variance * math.sqrt((2 + 12 / 5) / n)  # sd of the sample variance: sigma^2 sqrt((kurtosis - 1) / n)
    assert abs(float(noise.var()) - variance) <= 5 * variance_se


@pytest.mark.parametrize("name", ["random", "threshold", "soft", "speculative", "revisable"])
@pytest.mark.parametrize("temperature", [-1.0, math.inf, math.nan, "1"])
def test_every_decoder_refuses_a_temperature_that_is_not_finite_and_non_negative(name, temperature):
    # An infinite temperature divides the [MASK] exclusion logit away: [MASK] would be drawn, silently.
    with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
        build_decoder(name, 1, temperature=temperature)
