"""UnmaskingSampler: invariants of the commit loop (hypothesis), determinism, cost counts, bad input."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from jointobj import Denoiser
from jointobj.decoding import DECODERS, POLICIES, UnmaskingSampler, build_decoder, gumbel_max, steps_for
from jointobj.evaluation.metrics import TimedDenoiser
from jointobj.model.tiny import tiny_masked_lm

VOCAB, MASK = 12, 1
TOP_K = ["random", "l2r", "confidence", "margin", "entropy"]


class ContextLogits(nn.Module):
    """A cheap fake denoiser whose logits depend on the token and on the whole context, so
    adaptive policies see changing distributions. Records every input it is called with."""

    mask_token_id = MASK
    max_positions = 24

    def __init__(self, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.token = nn.Parameter(3 * torch.randn(VOCAB, VOCAB, generator=generator))
        self.context = nn.Parameter(3 * torch.randn(VOCAB, VOCAB, generator=generator))
        self.position = nn.Parameter(torch.randn(self.max_positions, VOCAB, generator=generator))
        self.calls = []

    def forward(self, input_ids, attention_mask=None):
        self.calls.append(input_ids.clone())
        context = self.context[input_ids].mean(1, keepdim=True)  # [b, 1, V]
        return self.token[input_ids] + context + self.position[: input_ids.shape[1]]  # [b, l, V]


@st.composite
def runs(draw):
    b, lp, length = draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.integers(1, 9))
    k = draw(st.one_of(st.none(), st.integers(1, 10)))
    block = draw(st.one_of(st.none(), st.integers(1, length)))
    temperature = draw(st.sampled_from([0.0, 0.7, 1.0]))
    name = draw(st.sampled_from(POLICIES.names()))  # the hard-commit decoders ('soft': test_soft_decoder.py)
    seed = draw(st.integers(0, 2**16))
    steps = draw(st.one_of(st.none(), st.integers(1, min(block or length, length))))  # replaces k when drawn
    return b, lp, length, k, block, temperature, name, seed, steps


def prompts_for(b: int, lp: int, seed: int) -> torch.Tensor:
    """[b, lp]: the first token names the row (2 + row), so recorded calls can be matched to rows."""
    prompts = torch.randint(2, VOCAB, (b, lp), generator=torch.Generator().manual_seed(seed))
    prompts[:, 0] = 2 + torch.arange(b)
    return prompts


@given(runs())
def test_commit_loop_invariants(run):
    b, lp, length, k, block, temperature, name, seed, steps = run
    denoiser = ContextLogits(seed % 7)
    prompts = prompts_for(b, lp, seed)
    k = None if steps is not None else k
    decoder = build_decoder(name, k, temperature=temperature, block_length=block, steps=steps)
    out = decoder.sample(denoiser, prompts, length, torch.Generator().manual_seed(seed), return_trace=True)

    assert out.ids.shape == (b, lp + length)
    assert torch.equal(out.ids[:, :lp], prompts)  # the prompt is never touched
    assert not (out.gen_ids == MASK).any()  # every position filled
    assert out.steps == len(denoiser.calls)
    assert torch.isfinite(out.log_prob).all() and (out.log_prob <= 1e-9).all()
    if name in TOP_K:  # ceil(B / K) (or min(S, B)) forwards per block
        assert out.steps == steps_for(length, k, block, steps)
        assert (out.row_steps == out.steps).all()
    block_id = torch.arange(length) // (block or length)
    for row in range(b):
        states = [call[call[:, 0] == 2 + row][0, lp:] for call in denoiser.calls if (call[:, 0] == 2 + row).any()]
        assert len(states) == out.row_steps[row]
        trace = out.commit_step[row]  # [L]
        for step, state in enumerate(states):
            visible = state != MASK
            assert torch.equal(visible, trace < step)  # the trace says what the model saw
            assert torch.equal(state[visible], out.gen_ids[row][visible])  # committed tokens never change
        assert set(trace.tolist()) == set(range(len(states)))  # each step commits at least one
        for j in range(int(block_id[-1])):  # block j is complete before block j + 1 starts
            assert trace[block_id == j].max() < trace[block_id == j + 1].min()


@pytest.mark.parametrize("name", POLICIES.names())
def test_same_seed_same_samples_and_another_seed_differs(name):
    prompts = prompts_for(4, 2, 0).repeat(8, 1)  # [32, 2]
    decoder = build_decoder(name, 2)
    first = decoder.sample(ContextLogits(), prompts, 8, torch.Generator().manual_seed(5))
    again = decoder.sample(ContextLogits(), prompts, 8, torch.Generator().manual_seed(5))
    other = decoder.sample(ContextLogits(), prompts, 8, torch.Generator().manual_seed(6))
    assert torch.equal(first.ids, again.ids) and torch.equal(first.log_prob, again.log_prob)
    assert not torch.equal(first.ids, other.ids)


@pytest.mark.parametrize("length,k,block", [(8, 1, None), (8, 3, None), (8, None, None), (7, 2, 3), (9, 4, 4),
                                            (5, 10, None)])
def test_forward_count_matches_ceil_of_length_over_k(length, k, block):
    denoiser = TimedDenoiser(ContextLogits())
    out = build_decoder("confidence", k, block_length=block).sample(denoiser, prompts_for(3, 1, 0), length)
    blocks = [min(block or length, length - s) for s in range(0, length, block or length)]
    expected = sum(math.ceil(size / (k or size)) for size in blocks)
    assert denoiser.calls == out.steps == expected
    assert denoiser.rows == 3 * expected and out.rows_per_sample == expected
    assert out.tokens_per_step == pytest.approx(length / expected)


def llada_quotas(block: int, steps: int) -> list[int]:
    """LLaDA's spread of a block over its steps: B // S each, the first B mod S steps one more."""
    return [block // steps + (i < block % steps) for i in range(steps)]


@pytest.mark.parametrize("name", POLICIES.names())
@pytest.mark.parametrize("length,steps,block", [(20, 6, None), (16, 3, 8), (10, 4, None), (13, 13, None), (7, 1, None),
                                                (11, 3, 4)])
def test_any_step_count_spreads_uneven_quotas_as_llada(name, length, steps, block):
    # 20 positions in 6 steps: 4, 4, 3, 3, 3, 3 tokens; no tokens_per_step gives 6 steps for 20 (K = 3: 7,
    # K = 4: 5), so a budget from K instead of S fails here, and so does any other spread. Adaptive
    # policies commit at least the quota: their counts are bounded below by it, their steps above.
    out = build_decoder(name, None, steps=steps, block_length=block).sample(
        ContextLogits(1), prompts_for(3, 2, 0), length, torch.Generator().manual_seed(0), return_trace=True)
    sizes = [min(block or length, length - s) for s in range(0, length, block or length)]
    expected = [q for size in sizes for q in llada_quotas(size, min(steps, size))]
    for row in range(3):
        counts = torch.bincount(out.commit_step[row]).tolist()
        if name in TOP_K:
            assert counts == expected
        else:
            assert len(counts) <= len(expected)
    if name in TOP_K:
        assert out.steps == len(expected) == steps_for(length, None, block, steps)


def test_a_step_count_outside_one_to_the_block_length_is_refused():
    for steps in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="steps must be a whole number >= 1"):
            build_decoder("confidence", None, steps=steps)
    with pytest.raises(ValueError, match=r"steps=21 per block is more than an answer of 20 positions; use 1\.\.20"):
        build_decoder("confidence", None, steps=21).sample(ContextLogits(), prompts_for(2, 1, 0), 20)
    with pytest.raises(ValueError, match=r"steps=5 per block is more than a block of 4 positions"):
        build_decoder("random", None, steps=5, block_length=4)
    with pytest.raises(ValueError, match=r"give tokens_per_step \(2\) or steps per block \(3\), not both"):
        build_decoder("random", 2, steps=3)
    real = Denoiser(tiny_masked_lm("bert", vocab_size=VOCAB, max_positions=16, seed=0), mask_token_id=MASK)
    with pytest.raises(ValueError, match="steps=9 per block is more than an answer of 8 positions"):
        build_decoder("soft", None, steps=9).sample(real, prompts_for(2, 1, 0), 8)
    with pytest.raises(ValueError, match="steps=9 per block is more than an answer of 8 positions"):
        build_decoder("random", None, steps=9, rescore="best:self:l2r:all,2,step").sample(real, prompts_for(2, 1, 0), 8)


def test_adaptive_decoders_drop_finished_rows_and_count_them_honestly():
    denoiser = TimedDenoiser(ContextLogits(3))
    out = build_decoder("threshold", 1, threshold=0.5).sample(denoiser, prompts_for(4, 1, 1), 9,
                                                                torch.Generator().manual_seed(0))
    assert denoiser.calls == out.steps == int(out.row_steps.max())
    assert denoiser.rows == int(out.row_steps.sum())
    assert out.rows_per_sample == pytest.approx(float(out.row_steps.double().mean()))


def test_log_prob_is_the_exact_sample_probability_for_left_to_right():
    # l2r, one token per step: log_prob = sum_i log softmax(logits_i / T)[x_i] given x_<i, recomputed by hand
    denoiser, temperature = ContextLogits(2), 0.8
    prompts = prompts_for(3, 2, 4)
    out = build_decoder("l2r", 1, temperature=temperature).sample(denoiser, prompts, 5,
                                                                  torch.Generator().manual_seed(1))
    expected = torch.zeros(3, dtype=torch.float64)
    for i in range(5):
        ids = out.ids.clone()
        ids[:, 2 + i :] = MASK
        logits = denoiser(ids)[:, 2 + i].double()  # [b, V]
        logits[:, MASK] = -1e9
        expected += (logits / temperature).log_softmax(-1).gather(1, out.ids[:, 2 + i, None]).squeeze(1)
    torch.testing.assert_close(out.log_prob, expected)


def test_greedy_is_deterministic_and_free():
    prompts = prompts_for(4, 2, 0)
    greedy = build_decoder("confidence", 2, temperature=0)
    first = greedy.sample(ContextLogits(), prompts, 6, torch.Generator().manual_seed(0))
    other = greedy.sample(ContextLogits(), prompts, 6, torch.Generator().manual_seed(9))
    assert torch.equal(first.ids, other.ids)
    assert (first.log_prob == 0).all()


def test_gumbel_max_draws_match_the_tempered_distribution():
    n, temperature = 40_000, 0.5
    logits = torch.log(torch.tensor([0.6, 0.3, 0.09, 0.01]))[None].repeat(n, 1)  # [n, 4]
    tokens, log_q = gumbel_max(logits, temperature, torch.Generator().manual_seed(0))
    target = (logits[0] / temperature).softmax(-1).double()  # [4]
    frequency = torch.bincount(tokens, minlength=4).double() / n
    tolerance = 4.5 * (target * (1 - target) / n).sqrt()  # binomial, per token
    assert ((frequency - target).abs() <= tolerance).all(), (frequency, target)
    assert log_q.dtype == torch.float64
    torch.testing.assert_close(log_q, target.log()[tokens])


def test_gumbel_noise_is_drawn_in_float64_from_the_generator():
    # Flat logits: the winner is decided by the noise alone, so noise drawn any other way
    # (float32 / bf16 uniforms, another stream) picks other tokens.
    logits = torch.zeros(64, 1000, dtype=torch.bfloat16)  # [n, V], low precision on purpose
    tokens, _ = gumbel_max(logits, 1.0, torch.Generator().manual_seed(3))
    u = torch.rand(64, 1000, generator=torch.Generator().manual_seed(3), dtype=torch.float64)  # [n, V]
    assert torch.equal(tokens, (-(-u.log()).log()).argmax(-1))


def test_the_mask_token_is_never_committed():
    class LovesMask(ContextLogits):
        def forward(self, input_ids, attention_mask=None):
            logits = super().forward(input_ids)
            logits[..., MASK] = 50.0  # the model's favourite token is the mask
            return logits

    out = build_decoder("random", 3).sample(LovesMask(), prompts_for(4, 1, 0), 7, torch.Generator().manual_seed(0))
    assert not (out.gen_ids == MASK).any()


def test_runs_on_a_real_masked_lm_and_restores_train_mode():
    denoiser = Denoiser(tiny_masked_lm("modernbert", vocab_size=VOCAB, max_positions=16, seed=0), mask_token_id=MASK)
    denoiser.train()
    out = build_decoder("entropy_bounded", 2).sample(denoiser, prompts_for(3, 2, 0), 6,
                                                     torch.Generator().manual_seed(0))
    assert not (out.gen_ids == MASK).any() and denoiser.training


# ---------------------------------------------------------------- bad input


def test_unknown_decoder_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown decoder 'greedy'.*confidence.*entropy_bounded.*l2r.*threshold"):
        build_decoder("greedy", 1)


@pytest.mark.parametrize("k", [0, -1, 1.5, True])
def test_tokens_per_step_below_one_is_refused(k):
    with pytest.raises(ValueError, match="tokens_per_step must be a whole number >= 1"):
        build_decoder("random", k)


@pytest.mark.parametrize("gen_length", [0, -3])
def test_gen_length_below_one_is_refused(gen_length):
    with pytest.raises(ValueError, match="gen_length must be a whole number >= 1"):
        build_decoder("random", 1).sample(ContextLogits(), prompts_for(2, 1, 0), gen_length)


def test_prompt_longer_than_the_model_is_refused_before_any_forward():
    model = tiny_masked_lm("modernbert", vocab_size=VOCAB, max_positions=8, seed=0)
    denoiser = TimedDenoiser(Denoiser(model, mask_token_id=MASK))
    with pytest.raises(ValueError, match="longer than the model's 8 positions"):
        build_decoder("random", 1).sample(denoiser, prompts_for(2, 6, 0), 4)
    assert denoiser.calls == 0


def test_other_bad_options_are_refused():
    with pytest.raises(ValueError, match="temperature"):
        build_decoder("random", 1, temperature=-1)
    with pytest.raises(ValueError, match="block_length"):
        build_decoder("random", 1, block_length=0)
    with pytest.raises(ValueError, match="takes no option threshold"):
        build_decoder("random", 1, threshold=0.5)
    with pytest.raises(ValueError, match=r"\[batch, prompt_length\]"):
        UnmaskingSampler(DECODERS.get("random")().policy).sample(ContextLogits(), torch.tensor([2, 3]), 4)
