"""RevisableDecoder: generous commits re-checked and remasked; its cost counted row by row."""

import math

import pytest
import torch
from torch import nn

from jointobj.decoding import RevisableDecoder, build_decoder
from jointobj.evaluation.metrics import TimedDenoiser
from jointobj.toysets.builtin import load_toyset
from jointobj.toysets.oracle import OracleDenoiser

VOCAB, MASK = 6, 5


class Recorder(nn.Module):
    """A fake denoiser with context-dependent logits that records every input row."""

    mask_token_id = MASK

    def __init__(self, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.token = nn.Parameter(2 * torch.randn(VOCAB, VOCAB, generator=generator))
        self.position = nn.Parameter(torch.randn(16, VOCAB, generator=generator))
        self.calls = []

    def forward(self, input_ids, attention_mask=None):
        self.calls.append(input_ids.clone())
        context = self.token[input_ids].mean(1, keepdim=True)  # [b, 1, V]
        return context + self.position[: input_ids.shape[1]]  # [b, l, V]


def oracle_validity(decoder, name: str = "likes_tennis", samples: int = 400) -> tuple[float, object]:
    toyset = load_toyset(name)
    prompts, _ = toyset.sample(samples, torch.Generator().manual_seed(0))
    out = decoder.sample(OracleDenoiser(toyset), prompts, toyset.answer_length, torch.Generator().manual_seed(1))
    return float(toyset.is_valid(prompts, out.gen_ids).double().mean()), out


def test_revisions_cure_generous_commits_on_the_oracle():
    # threshold 0.3 commits all three words of likes_tennis at the first step: 25% valid without revisions
    plain, _ = oracle_validity(build_decoder("threshold", 1, threshold=0.3))
    unrevised, _ = oracle_validity(build_decoder("revisable", threshold=0.3, max_revisions=0))
    revised, out = oracle_validity(build_decoder("revisable", threshold=0.3, doubt=0.1, max_revisions=2))
    tolerance = 4 * math.sqrt(0.25 * 0.75 / 400)
    assert abs(plain - 0.25) < tolerance and abs(unrevised - 0.25) < tolerance
    assert revised > 0.9, revised
    checked_all, out = oracle_validity(build_decoder("revisable", threshold=0.3, check_rows=2))
    assert checked_all > 0.9, checked_all


def test_without_revisions_it_is_the_threshold_decoder():
    prompts = torch.randint(0, MASK, (8, 2), generator=torch.Generator().manual_seed(0))
    plain = build_decoder("threshold", 1, threshold=0.3).sample(Recorder(1), prompts, 6,
                                                                 torch.Generator().manual_seed(2))
    same = build_decoder("revisable", 1, threshold=0.3, max_revisions=0).sample(Recorder(1), prompts, 6,
                                                                             torch.Generator().manual_seed(2))
    assert torch.equal(plain.ids, same.ids) and plain.steps == same.steps
    assert plain.rows_per_sample == same.rows_per_sample  # nothing to check: no check rows


def test_cost_counts_every_commit_and_check_row():
    denoiser = TimedDenoiser(Recorder(3))
    prompts = torch.randint(0, MASK, (5, 1), generator=torch.Generator().manual_seed(1))
    out = build_decoder("revisable", threshold=0.2, doubt=0.4, max_revisions=1).sample(
        denoiser, prompts, 6, torch.Generator().manual_seed(0), return_trace=True)
    assert denoiser.calls == out.steps
    assert denoiser.rows == pytest.approx(out.rows_per_sample * 5)
    assert out.steps == int(out.row_steps.max())
    assert denoiser.rows > int(out.row_steps.sum())  # check rows are counted beside the commit rows
    assert not (out.gen_ids == MASK).any()
    assert torch.isnan(out.log_prob).all()  # no tractable probability


def test_a_hand_counted_case():
    # One sample, L = 2, a denoiser that is sure of token 0 everywhere: step 1 commits both
    # (one row), step 2 checks one of them (one row), step 3 checks the other (one row).
    class Sure(nn.Module):
        mask_token_id = MASK

        def __init__(self):
            super().__init__()
            self.calls = []

        def forward(self, input_ids, attention_mask=None):
            self.calls.append(input_ids.clone())
            logits = torch.zeros(*input_ids.shape, VOCAB)
            logits[..., 0] = 10.0
            return logits

    denoiser = Sure()
    out = RevisableDecoder(threshold=0.5).sample(denoiser, torch.tensor([[1]]), 2, torch.Generator().manual_seed(0))
    assert out.gen_ids.tolist() == [[0, 0]]
    assert out.steps == 3 and out.rows_per_sample == 3
    assert [c[0, 1:].tolist() for c in denoiser.calls] == [[MASK, MASK], [MASK, 0], [0, MASK]] or \
        [c[0, 1:].tolist() for c in denoiser.calls] == [[MASK, MASK], [0, MASK], [MASK, 0]]


def test_doubtful_tokens_return_to_mask_at_most_max_revisions_times():
    prompts = torch.randint(0, MASK, (6, 1), generator=torch.Generator().manual_seed(3))

    def run(max_revisions):
        return build_decoder("revisable", threshold=0.1, doubt=0.99, max_revisions=max_revisions).sample(
            Recorder(4), prompts, 5, torch.Generator().manual_seed(0))

    never, once, twice = run(0), run(1), run(2)
    assert never.steps < once.steps < twice.steps  # at doubt 0.99 every checked token is doubted
    # each position: committed at most max_revisions + 1 times, checked at most that often
    for out, revisions in ((never, 0), (once, 1), (twice, 2)):
        assert not (out.gen_ids == MASK).any()
        assert out.rows_per_sample <= 2 * 5 * (revisions + 1)


def test_prompts_of_different_lengths_and_blocks():
    prompts = [torch.tensor([0]), torch.tensor([1, 2, 3])]
    out = build_decoder("revisable", block_length=2, threshold=0.2).sample(Recorder(2), prompts, 5,
                                                                          torch.Generator().manual_seed(0),
                                                                          return_trace=True)
    assert out.gen_ids.shape == (2, 5) and not (out.gen_ids == MASK).any()
    assert out.prompt_lengths.tolist() == [1, 3]
    block_id = torch.arange(5) // 2
    for row in range(2):
        trace = out.commit_step[row]
        for j in range(2):  # a block is final before the next one commits
            assert trace[block_id == j].max() < trace[block_id == j + 1].min()


@pytest.mark.parametrize("options,message", [
    ({"threshold": 0.0}, "threshold"),
    ({"doubt": 1.5}, "doubt"),
    ({"max_revisions": -1}, "max_revisions"),
    ({"temperature": -0.1}, "temperature"),
])
def test_bad_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        build_decoder("revisable", **options)
