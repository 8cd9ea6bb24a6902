"""Order samplers, order proposals and their importance weights, and the K-block cut."""

import math
from collections import Counter

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from jointobj.diffusion.orders import ORDERS, OrderProposal, block_index, check_orders, num_blocks

rows_strategy = st.lists(st.tuples(st.integers(1, 9), st.integers(0, 5), st.integers(0, 3)), min_size=1, max_size=4)


def scorable_from(rows):
    """rows of (scorable count, prompt length, padding) -> scorable [b, l] bool, prompt first, padding last."""
    length = max(n + p + pad for n, p, pad in rows)
    scorable = torch.zeros(len(rows), length, dtype=torch.bool)
    for b, (n, p, _) in enumerate(rows):
        scorable[b, p : p + n] = True
    return scorable


def assert_permutations(rank, scorable):
    """Naive: every order ranks the scorable positions 0..n-1 exactly once and leaves the rest at -1."""
    for b in range(rank.shape[0]):
        n = int(scorable[b].sum())
        for m in range(rank.shape[1]):
            assert sorted(rank[b, m][scorable[b]].tolist()) == list(range(n))
            assert (rank[b, m][~scorable[b]] == -1).all()


@given(rows=rows_strategy, seed=st.integers(0, 10_000))
def test_every_family_is_a_permutation_of_the_scorable_positions(rows, seed):
    scorable = scorable_from(rows)
    generator = torch.Generator().manual_seed(seed)
    for name in ORDERS:
        assert_permutations(ORDERS.get(name)(scorable, generator)[:, None], scorable)
    orders = OrderProposal(mixture={"l2r": 1, "r2l": 1, "random": 2}, num_orders=3).sample(scorable, generator)
    assert_permutations(orders.rank, scorable)
    check_orders(orders.rank, scorable)


def test_l2r_and_r2l_skip_prompt_and_padding():
    scorable = torch.tensor([[False, True, True, True, False], [False, False, True, True, True]])
    assert ORDERS.get("l2r")(scorable).tolist() == [[-1, 0, 1, 2, -1], [-1, -1, 0, 1, 2]]
    assert ORDERS.get("r2l")(scorable).tolist() == [[-1, 2, 1, 0, -1], [-1, -1, 2, 1, 0]]


def test_random_orders_are_seeded():
    scorable = torch.ones(4, 12, dtype=torch.bool)
    draw = lambda seed: ORDERS.get("random")(scorable, torch.Generator().manual_seed(seed))  # noqa: E731
    assert torch.equal(draw(3), draw(3))
    assert not torch.equal(draw(3), draw(4))


def test_random_orders_are_uniform_over_permutations():
    draws = 6000
    scorable = torch.zeros(draws, 5, dtype=torch.bool)
    scorable[:, 1:4] = True  # 3 scorable positions: 6 permutations, each with probability 1/6
    rank = ORDERS.get("random")(scorable, torch.Generator().manual_seed(0))
    counts = Counter(tuple(r) for r in rank[:, 1:4].tolist())
    expected, sd = draws / 6, math.sqrt(draws * (1 / 6) * (5 / 6))
    assert len(counts) == 6
    assert all(abs(c - expected) <= 5 * sd for c in counts.values()), counts


@given(rows=rows_strategy, k=st.integers(1, 9), seed=st.integers(0, 1000))
def test_blocks_are_contiguous_even_and_never_empty(rows, k, seed):
    scorable = scorable_from(rows)
    lengths = scorable.sum(-1)
    k = min(k, int(lengths.min()))
    rank = OrderProposal(["random", "l2r"]).sample(scorable, torch.Generator().manual_seed(seed)).rank
    block = block_index(rank, lengths, k)
    for b in range(rank.shape[0]):
        for m in range(rank.shape[1]):
            along = block[b, m][rank[b, m].argsort()][-int(lengths[b]) :]  # blocks in generation order
            assert (along.diff() >= 0).all() and along[0] == 0 and along[-1] == k - 1
            sizes = torch.bincount(along, minlength=k)
            assert sizes.min() >= 1 and sizes.max() - sizes.min() <= 1
            assert (block[b, m][~scorable[b]] == -1).all()


def sampler_quotas(n: int, k: int) -> list[int]:
    """Naive: tokens UnmaskingSampler commits per step, ceil(left / steps left), for n positions in k steps."""
    sizes, left = [], n
    for steps_left in range(k, 0, -1):
        sizes.append(math.ceil(left / steps_left))
        left -= sizes[-1]
    return sizes


def test_blocks_have_the_sizes_the_k_step_sampler_commits():
    # n=10, K=4: the sampler commits 3, 3, 2, 2; a floor(rank K / n) cut would give 3, 2, 3, 2.
    for n in range(1, 13):
        rank = torch.arange(n)[None, None]  # [1, 1, n]: position i is generated at step i
        for k in range(1, n + 1):
            block = block_index(rank, torch.tensor([n]), k)[0, 0]
            assert torch.bincount(block, minlength=k).tolist() == sampler_quotas(n, k), (n, k)
            assert (block.diff() >= 0).all()


def test_all_blocks_is_one_position_per_block():
    scorable = scorable_from([(5, 1, 2), (3, 2, 0)])
    orders = OrderProposal(["random"]).sample(scorable, torch.Generator().manual_seed(0))
    assert torch.equal(block_index(orders.rank, orders.lengths, "all"), orders.rank)
    assert num_blocks("all", orders.lengths).tolist() == [5, 3]


@pytest.mark.parametrize("blocks", [0, -1, 4])
def test_blocks_outside_one_to_n_are_refused(blocks):
    with pytest.raises(ValueError, match=r"must lie in 1..n for every row|blocks must be a whole number K >= 1"):
        num_blocks(blocks, torch.tensor([5, 3]))


def test_blocks_must_be_an_int_or_all():
    with pytest.raises(ValueError, match="whole number K >= 1 or 'all'"):
        num_blocks("some", torch.tensor([5]))


def test_non_permutations_are_refused():
    scorable = torch.tensor([[False, True, True, True]])
    for bad in ([-1, 0, 0, 2], [0, 1, 2, -1], [-1, 0, 1, 3], [-2, 0, 1, 2]):
        with pytest.raises(ValueError, match="order 0 of batch row 0 is not a permutation"):
            check_orders(torch.tensor([[bad]]), scorable)


def test_fixed_set_has_uniform_weights_and_keeps_its_families():
    scorable = scorable_from([(4, 1, 0), (2, 0, 2)])
    orders = OrderProposal().sample(scorable)
    assert orders.num_orders == 4
    torch.testing.assert_close(orders.log_weights, torch.full((2, 4), -math.log(4)))
    assert [orders.names[f] for f in orders.family[0].tolist()] == ["l2r", "r2l", "random", "random"]


def test_weights_are_prior_over_m_times_proposal():
    proposal = OrderProposal(mixture={"l2r": 1, "random": 3}, num_orders=5, prior={"l2r": 1, "random": 1})
    orders = proposal.sample(torch.ones(200, 6, dtype=torch.bool), torch.Generator().manual_seed(0))
    q = {"l2r": 0.25, "random": 0.75}
    expected = torch.tensor([[math.log(0.5 / (5 * q[orders.names[f]])) for f in row] for row in orders.family.tolist()])
    torch.testing.assert_close(orders.log_weights, expected)
    # families are drawn from q: l2r in 1/4 of the 1000 slots, within 5 standard deviations
    share, sd = (orders.family == orders.names.index("l2r")).float().mean(), math.sqrt(0.25 * 0.75 / 1000)
    assert abs(share - 0.25) <= 5 * sd


def test_fixed_set_with_a_prior_reweights_its_strata():
    proposal = OrderProposal(["l2r", "random", "random"], prior={"l2r": 0.5, "random": 0.5})
    orders = proposal.sample(torch.ones(1, 4, dtype=torch.bool))
    torch.testing.assert_close(orders.log_weights.exp(), torch.tensor([[0.5, 0.25, 0.25]]))


def test_select_keeps_one_order_per_row():
    orders = OrderProposal(["l2r", "r2l"]).sample(torch.ones(2, 3, dtype=torch.bool))
    chosen = orders.select(torch.tensor([1, 0]))
    assert chosen.rank.tolist() == [[[2, 1, 0]], [[0, 1, 2]]]
    assert chosen.num_orders == 1


def test_unknown_order_lists_the_known_ones():
    with pytest.raises(ValueError, match="known: l2r, r2l, random"):
        OrderProposal(["l2r", "zigzag"])
    with pytest.raises(ValueError, match="known: l2r, r2l, random"):
        OrderProposal(mixture={"zigzag": 1.0}, num_orders=2)


@pytest.mark.parametrize("kwargs", [{"orders": []}, {"orders": "l2r"}, {"mixture": {"l2r": 1}},
                                    {"mixture": {"l2r": 1}, "num_orders": 0}])
def test_fewer_than_one_order_is_refused(kwargs):
    with pytest.raises(ValueError, match=r"M >= 1|num_orders M .*whole number >= 1"):
        OrderProposal(**kwargs)


def test_prior_and_proposal_must_share_their_families():
    with pytest.raises(ValueError, match="the prior gives mass to"):
        OrderProposal(["l2r", "r2l"], prior={"l2r": 1, "random": 1})


def test_negative_weights_are_refused():
    with pytest.raises(ValueError, match="must be finite and >= 0"):
        OrderProposal(mixture={"l2r": -1, "r2l": 2}, num_orders=2)
