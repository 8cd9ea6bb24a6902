"""Unmasking policies on random logits: who gets committed, how many, and bad options."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from jointobj.decoding import POLICIES, ConfidenceThreshold, EntropyBounded, build_decoder
from jointobj.decoding.policies import max_probability, token_entropy

TOP_K = ["random", "l2r", "confidence", "margin", "entropy"]


@st.composite
def step_inputs(draw):
    """Random logits [b, L, V], a non-empty eligible set per row, and a quota within it."""
    b, length, vocab = draw(st.integers(1, 4)), draw(st.integers(1, 9)), draw(st.integers(2, 7))
    seed = draw(st.integers(0, 2**16))
    generator = torch.Generator().manual_seed(seed)
    scale = draw(st.sampled_from([0.1, 1.0, 5.0]))  # flat to peaked distributions
    logits = scale * torch.randn(b, length, vocab, generator=generator)  # [b, L, V]
    eligible = torch.rand(b, length, generator=generator) < 0.6  # [b, L]
    eligible[torch.arange(b), torch.randint(0, length, (b,), generator=generator)] = True  # >= 1 per row
    left = eligible.sum(1)  # [b]
    quota = 1 + (torch.rand(b, generator=generator) * left).long().clamp(max=left - 1)  # 1..left
    return logits, eligible, quota, seed


@given(step_inputs(), st.sampled_from(TOP_K))
def test_top_k_commits_exactly_the_quota_of_eligible_positions(inputs, name):
    logits, eligible, quota, seed = inputs
    commit = POLICIES.get(name)().select(logits, eligible, quota, torch.Generator().manual_seed(seed))
    assert not (commit & ~eligible).any()
    assert torch.equal(commit.sum(1), quota)


@given(step_inputs(), st.sampled_from(["confidence", "margin", "entropy", "l2r"]))
def test_top_k_commits_the_best_scored_positions(inputs, name):
    logits, eligible, quota, _ = inputs
    policy = POLICIES.get(name)()
    commit = policy.select(logits, eligible, quota)
    scores = policy.scores(logits, None)  # [b, L]
    for row in range(len(logits)):
        left_out = eligible[row] & ~commit[row]
        if left_out.any():
            assert scores[row][commit[row]].min() >= scores[row][left_out].max()


def test_left_to_right_takes_the_leftmost_eligible():
    eligible = torch.tensor([[False, True, True, False, True]])
    commit = POLICIES.get("l2r")().select(torch.zeros(1, 5, 3), eligible, torch.tensor([2]))
    assert commit.tolist() == [[False, True, True, False, False]]


@given(step_inputs(), st.floats(0.05, 1.0))
def test_threshold_commits_at_least_one_and_only_confident_ones_beyond_it(inputs, threshold):
    logits, eligible, _, _ = inputs
    policy = ConfidenceThreshold(threshold)
    commit = policy.select(logits, eligible, torch.ones(len(logits), dtype=torch.long))
    confidence = max_probability(logits)  # [b, L]
    assert (commit.sum(1) >= 1).all()
    assert not (commit & ~eligible).any()
    assert not ((confidence > threshold) & eligible & ~commit).any()  # every confident position goes
    for row in range(len(logits)):
        if commit[row].sum() > 1:
            assert (confidence[row][commit[row]] > threshold).all()


@given(step_inputs(), st.floats(0.0, 3.0))
def test_entropy_bounded_respects_its_bound_except_the_forced_first(inputs, bound):
    logits, eligible, _, _ = inputs
    commit = EntropyBounded(bound).select(logits, eligible, torch.ones(len(logits), dtype=torch.long))
    entropy = token_entropy(logits)  # [b, L]
    confidence = max_probability(logits)
    assert (commit.sum(1) >= 1).all()
    assert not (commit & ~eligible).any()
    for row in range(len(logits)):
        if commit[row].sum() > 1:
            assert entropy[row][commit[row]].sum() <= bound + 1e-5
        left_out = eligible[row] & ~commit[row]
        if left_out.any():  # the most confident positions go first
            assert confidence[row][commit[row]].min() >= confidence[row][left_out].max()


def test_entropy_bounded_takes_the_longest_prefix_within_the_bound():
    # three positions with entropies ~0, ln 2, ln 2 (confidence 1, 0.5, 0.5): a bound of 1 nat takes two
    logits = torch.tensor([[[20.0, 0.0], [0.0, 0.0], [0.0, 0.0]]])
    commit = EntropyBounded(1.0).select(logits, torch.ones(1, 3, dtype=torch.bool), torch.ones(1, dtype=torch.long))
    assert commit.sum() == 2 and commit[0, 0]


@given(step_inputs(), st.sampled_from(["threshold", "entropy_bounded"]))
def test_adaptive_policies_never_commit_fewer_than_the_quota(inputs, name):
    logits, eligible, quota, _ = inputs
    commit = POLICIES.get(name)().select(logits, eligible, quota)
    assert (commit.sum(1) >= quota).all()


@pytest.mark.parametrize("threshold", [0.0, -0.5, 1.01, float("nan")])
def test_threshold_outside_zero_one_is_refused(threshold):
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        ConfidenceThreshold(threshold)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        build_decoder("threshold", 1, threshold=threshold)


def test_negative_entropy_bound_is_refused():
    with pytest.raises(ValueError, match="non-negative"):
        EntropyBounded(-0.1)


def test_unknown_policy_lists_the_known_ones():
    with pytest.raises(ValueError, match="confidence.*entropy_bounded.*l2r.*margin.*random.*threshold"):
        POLICIES.get("greedy")
