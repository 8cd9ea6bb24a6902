"""SpeculativeDecoder: exact samples of the order-o autoregressive law, checked by brute force.

A tiny random denoiser (3 answer tokens + [MASK], answer length 4-5, strong coupling between
positions) has an order-o law p_o that we enumerate exactly; the decoder's sample frequencies
must match it within a tolerance computed from the sample size, and decoders with a broken
rejection rule (accept every draft; resample from p instead of the residual) must not.
"""

import itertools
import math

import pytest
import torch
from torch import nn

from jointobj.decoding import build_decoder
from jointobj.decoding.speculative import SpeculativeDecoder, verification_order
from jointobj.evaluation.metrics import TimedDenoiser
from jointobj.toysets.builders import builtin_set_names
from jointobj.toysets.builtin import load_toyset
from jointobj.toysets.oracle import OracleDenoiser

MASK, VOCAB = 3, 4  # answer tokens 0, 1, 2; id 3 is [MASK]


class CoupledLogits(nn.Module):
    """A fake denoiser: the logits at each position are a bias plus a pairwise coupling to every visible
    token, W[i, j, token_j], scaled up so the joint is far from the product of its marginals."""

    mask_token_id = MASK
    max_positions = 16

    def __init__(self, seed: int = 0, scale: float = 2.5):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.bias = nn.Parameter(torch.randn(self.max_positions, VOCAB, generator=generator))
        self.coupling = nn.Parameter(scale * torch.randn(self.max_positions, self.max_positions, VOCAB + 1, VOCAB,
                                                         generator=generator))

    def forward(self, input_ids, attention_mask=None):
        b, length = input_ids.shape
        visible = torch.where(input_ids == MASK, VOCAB, input_ids)  # [b, l]; index VOCAB couples nothing
        w = self.coupling[:length, :length]  # [l, l, V+1, V]
        w = w.clone()
        w[:, :, VOCAB] = 0.0
        picked = w[torch.arange(length)[None, :, None], torch.arange(length)[None, None, :], visible[:, None, :]]
        return self.bias[:length] + picked.sum(2)  # [b, l, V]


@torch.no_grad()
def enumerate_order_law(denoiser, prompt: torch.Tensor, length: int, perm: list[int], temperature: float):
    """Every answer over tokens 0..2 and its exact log p_o at T ([MASK] excluded): (answers [M, L], log p [M])."""
    answers = torch.tensor(list(itertools.product(range(MASK), repeat=length)))  # [M, L]
    lp = prompt.shape[0]
    log_p = torch.zeros(len(answers), dtype=torch.float64)
    for k, position in enumerate(perm):
        x = torch.cat([prompt.expand(len(answers), lp), answers], 1).clone()  # [M, lp+L]
        hidden = [p for p in perm[k:]]
        x[:, [lp + p for p in hidden]] = MASK
        logits = denoiser(x)[:, lp + position].double()  # [M, V]
        logits[:, MASK] = -math.inf
        log_p += (logits / temperature).log_softmax(-1).gather(1, answers[:, position, None]).squeeze(1)
    return answers, log_p


def empirical_tv(answers: torch.Tensor, log_p: torch.Tensor, samples: torch.Tensor) -> tuple[float, float]:
    """(TV between the samples and exp(log_p), tolerance): E[TV] <= 1/2 sum_i sqrt(p_i (1 - p_i) / n), and TV moves
    by at most 1/n per sample, so P(TV > E + t) <= exp(-2 n t^2) (McDiarmid); t at a 1e-6 false-alarm rate."""
    n = len(samples)
    base = MASK ** torch.arange(answers.shape[1] - 1, -1, -1)  # answers are base-3 numbers
    counts = torch.bincount((samples * base).sum(1), minlength=len(answers)).double()
    p = log_p.exp()
    assert torch.equal((answers * base).sum(1), torch.arange(len(answers)))
    tv = 0.5 * float((counts / n - p).abs().sum())
    tolerance = 0.5 * float((p * (1 - p) / n).sqrt().sum()) + math.sqrt(math.log(1e6) / (2 * n))
    return tv, tolerance


def run(decoder, denoiser, length: int, samples: int, seed: int = 0):
    prompt = torch.tensor([[0]]).expand(samples, 1)
    return decoder.sample(denoiser, prompt, length, torch.Generator().manual_seed(seed))


def order_of(order, length: int) -> list[int]:
    return verification_order(order, 1, length, None, None, "cpu")[0].tolist()


FIXED_ORDER = (2, 0, 3, 1)  # a fixed "random" order of 4 positions
EXACTNESS_CASES = [
    (order, length, w, n, t)
    for order, length in (("l2r", 4), ("r2l", 5), (FIXED_ORDER, 4))
    for w in (2, None)
    for n in (1, 3)
    for t in (0.7, 1.0)
]


def check_exact(decoder, order, length, temperature, samples, seed=0, denoiser=None):
    denoiser = CoupledLogits(seed=7) if denoiser is None else denoiser
    out = run(decoder, denoiser, length, samples, seed)
    answers, log_p = enumerate_order_law(denoiser, torch.tensor([0]), length, order_of(order, length), temperature)
    tv, tolerance = empirical_tv(answers, log_p, out.gen_ids)
    return tv, tolerance, out, log_p


@pytest.mark.slow
@pytest.mark.parametrize("order,length,w,n,t", EXACTNESS_CASES)
def test_sample_frequencies_match_the_enumerated_order_law(order, length, w, n, t):
    decoder = SpeculativeDecoder(order=order, draft_length=w, drafts=n, temperature=t)
    tv, tolerance, out, _ = check_exact(decoder, order, length, t, samples=20000)
    assert tv <= tolerance, (tv, tolerance)
    assert out.tokens_per_step > 1


def test_frequencies_match_on_a_small_sample():  # the quick tier's version of the test above
    decoder = SpeculativeDecoder(order="r2l", draft_length=None, drafts=3, temperature=0.7)
    tv, tolerance, _, _ = check_exact(decoder, "r2l", 4, 0.7, samples=4000)
    assert tv <= tolerance, (tv, tolerance)


def test_semi_autoregressive_blocks_keep_the_law_of_their_order():
    decoder = SpeculativeDecoder(order="r2l", block_length=2, drafts=2, temperature=1.0)
    denoiser = CoupledLogits(seed=7)
    out = run(decoder, denoiser, 4, 4000, seed=3)
    order = verification_order("r2l", 1, 4, 2, None, "cpu")[0].tolist()
    assert order == [1, 0, 3, 2]  # blocks left to right, right to left inside each
    answers, log_p = enumerate_order_law(denoiser, torch.tensor([0]), 4, order, 1.0)
    tv, tolerance = empirical_tv(answers, log_p, out.gen_ids)
    assert tv <= tolerance, (tv, tolerance)


class AcceptsEveryDraft(SpeculativeDecoder):
    """Broken: no ratio test (the parallel decoder's marginal trap)."""

    def acceptance(self, target, proposal, token):
        return torch.ones_like(token, dtype=torch.float64)


class ResamplesFromTarget(SpeculativeDecoder):
    """Broken: after a rejection, draws from p instead of norm(max(0, p - q))."""

    def residual(self, target, proposal):
        return target


@pytest.mark.parametrize("broken", [AcceptsEveryDraft, ResamplesFromTarget])
@pytest.mark.parametrize("drafts", [1, 3])
def test_a_broken_rejection_rule_fails_the_same_check(broken, drafts):
    decoder = broken(order="l2r", draft_length=None, drafts=drafts, temperature=1.0)
    tv, tolerance, _, _ = check_exact(decoder, "l2r", 4, 1.0, samples=4000)
    assert tv > tolerance, (tv, tolerance)  # the exactness check fails


def test_log_prob_is_the_enumerated_order_probability():
    denoiser = CoupledLogits(seed=7)
    for order, w, n, t in (("l2r", 2, 1, 0.7), ("r2l", None, 3, 1.0), (FIXED_ORDER, 3, 2, 1.3)):
        out = run(SpeculativeDecoder(order=order, draft_length=w, drafts=n, temperature=t), denoiser, 4, 300)
        answers, log_p = enumerate_order_law(denoiser, torch.tensor([0]), 4, order_of(order, 4), t)
        index = (out.gen_ids * MASK ** torch.arange(3, -1, -1)).sum(1)
        assert torch.allclose(out.log_prob, log_p[index], rtol=0, atol=1e-6), (out.log_prob, log_p[index])


@torch.no_grad()
def greedy_one_token_per_step(denoiser, prompts: torch.Tensor, length: int, order: list[int]) -> torch.Tensor:
    """The one-token-per-step greedy decoder in `order`, written out: [b, lp + L] ids."""
    lp = prompts.shape[1]
    ids = torch.cat([prompts, torch.full((len(prompts), length), int(denoiser.mask_token_id))], 1)
    for position in order:
        logits = denoiser(ids)[:, lp + position].clone()  # [b, V]
        logits[:, int(denoiser.mask_token_id)] = -math.inf
        ids[:, lp + position] = logits.argmax(-1)
    return ids


@pytest.mark.parametrize("order", ["l2r", "r2l", FIXED_ORDER + (4,)])
def test_greedy_gives_the_ids_of_the_one_token_per_step_decoder(order):
    denoiser = CoupledLogits(seed=3)
    prompts = torch.randint(0, MASK, (16, 2), generator=torch.Generator().manual_seed(0))
    reference = greedy_one_token_per_step(denoiser, prompts, 5, order_of(order, 5))
    if order == "l2r":
        assert torch.equal(build_decoder("l2r", 1, temperature=0).sample(denoiser, prompts, 5).ids, reference)
    for w, n in ((2, 1), (None, 1), (None, 3)):
        out = build_decoder("speculative", order=order, draft_length=w, drafts=n, temperature=0).sample(
            denoiser, prompts, 5)
        assert torch.equal(out.ids, reference)
        assert (out.log_prob == 0).all()


@pytest.mark.slow
@pytest.mark.parametrize("order", ["l2r", "r2l"])
def test_greedy_matches_one_token_per_step_on_a_trained_model(order):
    from training import train_token_ce

    denoiser = train_token_ce("likes_tennis")
    toyset = load_toyset("likes_tennis")
    prompts = toyset.prompts[:1].expand(8, -1)
    length = toyset.answer_length
    reference = greedy_one_token_per_step(denoiser, prompts, length, order_of(order, length))
    if order == "l2r":
        assert torch.equal(build_decoder("l2r", 1, temperature=0).sample(denoiser, prompts, 3).ids, reference)
    out = build_decoder("speculative", order=order, temperature=0).sample(denoiser, prompts, toyset.answer_length)
    assert torch.equal(out.ids, reference)
    assert out.tokens_per_step > 1  # a trained model's drafts are accepted


def test_cost_matches_a_hand_count():
    # Greedy, l2r, L = 4, one sample whose drafts we control: the fake model's argmax is token 0
    # everywhere when nothing is visible, and token 1 at position 2 once position 1 shows 0.
    class Scripted(nn.Module):
        mask_token_id = MASK

        def __init__(self):
            super().__init__()
            self.seen = []

        def forward(self, input_ids, attention_mask=None):
            self.seen.append(input_ids.clone())
            logits = torch.zeros(*input_ids.shape, VOCAB)
            logits[..., 0] = 1.0
            flip = input_ids[:, 2] == 0  # answer position 1 (prompt length 1) shows 0
            logits[flip, 3, 0], logits[flip, 3, 1] = 0.0, 1.0  # answer position 2 prefers token 1
            return logits

    denoiser = Scripted()
    out = SpeculativeDecoder(temperature=0, draft_length=None).sample(denoiser, torch.tensor([[2]]), 4,
                                                                      return_trace=True)
    # step 0: all masked -> drafts 0 0 0 0. Step 1: rows for slots 1, 2, 3 (slot 0 reuses step 0):
    # slots 0, 1 accepted, slot 2 rejected (argmax 1) -> commits 0 0 1; round ends. Step 2: the next
    # proposal (the slot-2 row: 0 0 _ _) drafts 0 at position 3; one row verifies it -> accepted.
    assert out.gen_ids.tolist() == [[0, 0, 1, 0]]
    assert out.steps == 3 and out.row_steps.tolist() == [3]
    assert out.rows_per_sample == 1 + 3 + 1
    assert out.tokens_per_step == pytest.approx(4 / 3)
    assert out.commit_step.tolist() == [[1, 1, 1, 2]]
    assert [len(x) for x in denoiser.seen] == [1, 3, 1]
    assert denoiser.seen[1][:, 1:].tolist() == [[0, MASK, MASK, MASK], [0, 0, MASK, MASK], [0, 0, 0, MASK]]
    assert denoiser.seen[2][:, 1:].tolist() == [[0, 0, 1, MASK]]

    timed = TimedDenoiser(CoupledLogits(seed=1))
    out = SpeculativeDecoder(drafts=3, draft_length=2).sample(timed, torch.zeros(5, 1, dtype=torch.long), 5,
                                                               torch.Generator().manual_seed(0))
    assert timed.calls == out.steps and timed.rows == out.rows_per_sample * 5
    assert timed.calls == int(out.row_steps.max())


def test_drafts_that_agree_share_their_rows():
    drafted = torch.tensor([[[0, 1, 2], [0, 1, 0], [1, 1, 2], [0, 2, 2]]])  # [a=1, N=4, w=3]
    canonical = SpeculativeDecoder._first_with_same_prefix(drafted)
    # slot 0: everyone shares draft 0's row; slot 1: drafts 0, 1, 3 agree on "0"; slot 2: 0 and 1 agree on "0 1"
    assert canonical.tolist() == [[[0, 0, 0], [0, 0, 0], [0, 2, 2], [0, 0, 3]]]

    class Recording(CoupledLogits):
        def forward(self, input_ids, attention_mask=None):
            self.calls = getattr(self, "calls", []) + [input_ids.clone()]
            return super().forward(input_ids)

    denoiser = Recording(seed=1)
    out = SpeculativeDecoder(drafts=4, draft_length=None).sample(denoiser, torch.arange(3)[:, None], 5,
                                                                 torch.Generator().manual_seed(0))
    for call in denoiser.calls[1:]:  # no forward runs the same row twice (the prompt tells the samples apart)
        assert len(torch.unique(call, dim=0)) == len(call)
    assert sum(len(call) for call in denoiser.calls) == out.rows_per_sample * 3
    assert out.rows_per_sample < 1 + 3 * (1 + 4 * 4)  # fewer than without sharing


def test_oracle_validity_is_one_and_several_tokens_commit_per_step():
    rates = {name: _oracle_run(load_toyset(name), 32) for name in ("likes_tennis", "agreement", "latin_square_4")}
    assert all(validity == 1.0 for validity, _ in rates.values()), rates
    assert rates["latin_square_4"][1] > 1.5 and rates["agreement"][1] > 1.2, rates


@pytest.mark.slow
def test_oracle_validity_is_one_on_every_builtin_set():
    for name in builtin_set_names():
        toyset = load_toyset(name)
        big = len(toyset.flat_answers) > 100000  # latin_square_5: the oracle is slow there
        validity, rate = _oracle_run(toyset, 8 if big else 64)
        assert validity == 1.0, name
        if toyset.answer_length > 2:  # two tokens take two steps: the first marginal forward, one round
            assert rate > 1.0, (name, rate)


def _oracle_run(toyset, samples: int) -> tuple[float, float]:
    prompts, _ = toyset.sample(samples, torch.Generator().manual_seed(0))
    out = build_decoder("speculative", drafts=2).sample(OracleDenoiser(toyset), prompts, toyset.answer_length,
                                                         torch.Generator().manual_seed(1))
    return float(toyset.is_valid(prompts, out.gen_ids).double().mean()), out.tokens_per_step


@pytest.mark.parametrize("options,message", [
    ({"order": "zigzag"}, "unknown verification order"),
    ({"drafts": 0}, "drafts"),
    ({"draft_length": 0}, "draft_length"),
    ({"temperature": -1.0}, "temperature"),
])
def test_bad_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        build_decoder("speculative", **options)


def test_an_order_that_is_not_a_permutation_is_refused():
    with pytest.raises(ValueError, match="not a permutation"):
        SpeculativeDecoder(order=[0, 0, 1]).sample(CoupledLogits(), torch.zeros(1, 1, dtype=torch.long), 3)


def test_prompts_of_different_lengths_decode_as_each_row_alone():
    denoiser = CoupledLogits(seed=5)
    prompts = [torch.tensor([0]), torch.tensor([1, 2]), torch.tensor([2, 0, 1])]
    decoder = SpeculativeDecoder(order="r2l", drafts=2, temperature=0)
    together = decoder.sample(denoiser, prompts, 4)
    for row, prompt in enumerate(prompts):
        alone = decoder.sample(denoiser, prompt[None], 4)
        assert torch.equal(together.gen_ids[row], alone.gen_ids[0])
    sampled = SpeculativeDecoder(order="l2r", temperature=1.0).sample(denoiser, prompts, 4,
                                                                      torch.Generator().manual_seed(0))
    for row, prompt in enumerate(prompts):  # log_prob is each row's own order-o probability
        answers, log_p = enumerate_order_law(denoiser, prompt, 4, [0, 1, 2, 3], 1.0)
        index = int((sampled.gen_ids[row] * MASK ** torch.arange(3, -1, -1)).sum())
        assert float(sampled.log_prob[row]) == pytest.approx(float(log_p[index]))


def test_answers_are_trimmed_at_eos():
    out = SpeculativeDecoder(temperature=1.0).sample(CoupledLogits(seed=2), torch.zeros(64, 1, dtype=torch.long), 5,
                                                      torch.Generator().manual_seed(0), eos_token_id=1)
    gen, trimmed = out.gen_ids, out.answer_ids
    first = torch.where(gen == 1, torch.arange(5), 5).amin(1)  # [b] first EOS
    assert (first < 4).any()
    for row in range(64):
        k = int(first[row])
        assert torch.equal(trimmed[row, :k], gen[row, :k]) and (trimmed[row, k:] == 1).all()


def test_benchmark_script_writes_rates_and_wall_times(tmp_path, capsys):
    import json

    from helpers import load_script

    out = tmp_path / "bench_speculative.json"
    rows = load_script("eval/bench_speculative.py").main(
        ["--sets", "likes_tennis", "--oracle-sets", "cities", "--drafts", "1,2", "--revisable-thresholds", "0.3",
         "--draft-lengths", "all", "--samples", "16",
         "--wall-sets", "likes_tennis", "--thresholds", "0.9", "--batches", "1,4", "--wall-samples", "4",
         "--repeats", "1", "--json", str(out)])
    parts = {row["part"] for row in rows}
    assert parts == {"rate", "revisable", "wall", "equal_validity"}
    assert {row["batch"] for row in rows if row["part"] == "wall"} == {1, 4}
    saved = json.loads(out.read_text())
    assert len(saved["rows"]) == len(rows) and "environment" in saved
    printed = capsys.readouterr().out
    assert "threshold_over_speculative" in printed
    assert all("coverage" in row and "coverage_exact" in row for row in rows if row["part"] != "equal_validity")
    rate = [row for row in rows if row["part"] == "rate" and row["toyset"] == "likes_tennis"]
    assert rate and all(0.0 < row["coverage"] <= 1.0 and 0.0 < row["coverage_exact"] <= 1.0 for row in rate)
    assert printed.count("coverage_exact") >= 3  # in the rate, revisable and wall tables


def test_random_order_samples_the_mixture_over_uniform_orders():
    import itertools as it

    denoiser = CoupledLogits(seed=7)
    out = run(SpeculativeDecoder(order="random", drafts=2, temperature=1.0), denoiser, 4, 6000, seed=4)
    laws = [enumerate_order_law(denoiser, torch.tensor([0]), 4, list(o), 1.0) for o in it.permutations(range(4))]
    answers = laws[0][0]
    mixture = torch.stack([log_p.exp() for _, log_p in laws]).mean(0)  # each order has probability 1/24
    tv, tolerance = empirical_tv(answers, mixture.log(), out.gen_ids)
    assert tv <= tolerance, (tv, tolerance)
    tv_l2r, _ = empirical_tv(answers, laws[0][1], out.gen_ids)
    assert tv_l2r > tolerance  # the mixture differs from l2r's law here: the test can tell them apart


@pytest.mark.parametrize("options, kept", [({"block_length": 3}, 4), ({"draft_length": 2}, 3), ({}, 10)])
def test_logits_are_kept_only_for_the_positions_a_round_can_read(options, kept, monkeypatch):
    # Memory at a big vocabulary: every forward asks for the logits of at most w + 1 positions per row
    # (a window never crosses a block), not for the whole answer. Fails if the window ignores the block.
    from jointobj.decoding.layout import AnswerLayout

    asked, answer_logits = [], AnswerLayout.answer_logits

    def spy(self, denoiser, rows=None, **inputs):
        asked.append(inputs["columns"].shape[1])
        return answer_logits(self, denoiser, rows, **inputs)

    monkeypatch.setattr(AnswerLayout, "answer_logits", spy)
    oracle = OracleDenoiser("latin_square_3")
    prompts = load_toyset("latin_square_3").prompts.repeat(4, 1)
    build_decoder("speculative", **options).sample(oracle, prompts, 9, torch.Generator().manual_seed(0))
    assert asked and max(asked) == kept, asked
