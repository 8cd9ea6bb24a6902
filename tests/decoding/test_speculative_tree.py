"""Tree verification (branches=k): the tree changes the speed, never the law.

The fake denoiser, its enumerated order-o law and the TV check with a tolerance from the sample size
are test_speculative.py's (E[TV] bound + McDiarmid at a 1e-6 false-alarm rate). Trees of the marginals
and of a draft head (untrained: random output layer; trained: distilled from the model's own samples),
candidates sampled without replacement or the k likeliest, k in {1, 2, 3}, T in {0.7, 1}, two orders
(each drafter x branching x k once, T and the order spread over them to meet every pair): the sample
frequencies match the enumerated law. Rules that skip the residual, forget to remove a rejected sibling
from the draft law, or test a deterministic candidate with the draft's ratio fail the same check.
T = 0 gives the one-token-per-step greedy decoder's ids.
"""

import pytest
import torch
from test_speculative import (
    MASK,
    CoupledLogits,
    ResamplesFromTarget,
    check_exact,
    empirical_tv,
    enumerate_order_law,
    greedy_one_token_per_step,
    order_of,
    run,
)
from test_speculative_draft_head import _trained, _with_head

from jointobj.decoding import build_decoder
from jointobj.decoding.draft_tree import HeadDrafter, MarginalDrafter, grow_tree
from jointobj.decoding.speculative import SpeculativeDecoder, verification_order
from jointobj.evaluation.metrics import TimedDenoiser
from jointobj.model.draft_head import attach_draft_head, find_draft_head

LENGTH = 4


def _denoiser(kind: str):
    """The fake denoiser, with no head ("marginals"), an untrained head or a trained one; the untrained head's
    initialisation does not depend on what ran before."""
    if kind == "untrained":
        torch.manual_seed(0)
        return _with_head()
    return {"marginals": lambda: CoupledLogits(seed=7), "trained": _trained}[kind]()


def _decoder(cls, kind: str, **options):
    return cls(draft="marginals" if kind == "marginals" else "head", **options)


class KeepsRejectedSiblings(SpeculativeDecoder):
    """Broken: after rejecting a sampled sibling, the next one is tested against q itself, not q without it."""

    def without(self, proposal, token):
        return proposal


class TopkTestedAsSampled(SpeculativeDecoder):
    """Broken: a deterministic top-k candidate tested with r(x) / q(x), as if it had been drawn from q."""

    def _verify_node(self, *args):
        self.branching = "sample"
        try:
            return super()._verify_node(*args)
        finally:
            self.branching = "topk"


# ---------------------------------------------------------------- exactness by enumeration


@pytest.mark.parametrize("kind,branching,k,t", [("untrained", "sample", 2, 0.7), ("marginals", "topk", 3, 1.0),
                                                ("trained", "sample", 3, 1.0)])
def test_tree_keeps_the_enumerated_order_law(kind, branching, k, t):  # the quick tier's version of the grid below
    decoder = _decoder(SpeculativeDecoder, kind, order="l2r", temperature=t, branches=k, branching=branching)
    tv, tolerance, out, _ = check_exact(decoder, "l2r", LENGTH, t, samples=4000, denoiser=_denoiser(kind))
    assert tv <= tolerance, (tv, tolerance)
    assert out.tokens_per_step > 1


# The slow grid: every drafter x branching x k once (18 of the 72 with T and the order crossed in), T and the
# order assigned so that each of kind, branching and k meets both temperatures and both orders (the whole window
# "l2r": a tree 4 deep; the fixed order with w = 2: rounds that end at the window and hand on the proposal) and
# every one of them meets each (T, order) pair; for one drafter and k the two branchings take opposite T and
# order, and each drafter with each branching at k > 1 has a deep and a short tree. Each case keeps 20000 samples:
# the k = 3 trees need them to see a skipped residual (test_a_broken_tree_rule_fails_the_same_check).
L2R, FIXED = ("l2r", None), ((2, 0, 3, 1), 2)  # (order, draft_length w)
SETTINGS = [
    ("marginals", "sample", 1, 0.7, *L2R), ("marginals", "topk", 1, 1.0, *FIXED),
    ("marginals", "sample", 2, 1.0, *FIXED), ("marginals", "topk", 2, 0.7, *L2R),
    ("marginals", "sample", 3, 1.0, *L2R), ("marginals", "topk", 3, 0.7, *FIXED),
    ("untrained", "sample", 1, 1.0, *FIXED), ("untrained", "topk", 1, 0.7, *L2R),
    ("untrained", "sample", 2, 0.7, *L2R), ("untrained", "topk", 2, 1.0, *FIXED),
    ("untrained", "sample", 3, 0.7, *FIXED), ("untrained", "topk", 3, 1.0, *L2R),
    ("trained", "sample", 1, 0.7, *FIXED), ("trained", "topk", 1, 1.0, *L2R),
    ("trained", "sample", 2, 1.0, *L2R), ("trained", "topk", 2, 0.7, *FIXED),
    ("trained", "sample", 3, 1.0, *FIXED), ("trained", "topk", 3, 0.7, *L2R),
]


def test_the_slow_grid_covers_every_setting_and_pair():  # what the comment above SETTINGS claims
    import itertools

    rows = [dict(kind=kind, branching=b, k=k, t=t, order=order) for kind, b, k, t, order, _ in SETTINGS]
    values = {name: {r[name] for r in rows} for name in rows[0]}
    assert values["t"] == {0.7, 1.0} and values["order"] == {"l2r", FIXED[0]}

    def seen(*names):
        return {tuple(r[name] for name in names) for r in rows}

    assert len(rows) == len(seen("kind", "branching", "k")) == 3 * 2 * 3  # each drafter x branching x k once
    for factor in ("kind", "branching", "k"):
        assert len(seen(factor, "t", "order")) == 4 * len(values[factor]), factor  # with each (T, order)
    for pair in itertools.combinations(("kind", "branching", "k"), 2):
        for other in ("t", "order"):
            assert len(seen(*pair, other)) == 2 * len(seen(*pair)), (pair, other)  # with both T, both orders
    assert len(seen("kind", "branching", "order")) == 3 * 2 * 2  # a deep and a short tree (k > 1 below)
    assert {(r["kind"], r["branching"], r["order"]) for r in rows if r["k"] > 1} == seen("kind", "branching", "order")


@pytest.mark.slow
@pytest.mark.parametrize("kind,branching,k,t,order,w", SETTINGS)
def test_tree_keeps_the_law_in_every_setting(kind, branching, k, t, order, w):
    decoder = _decoder(SpeculativeDecoder, kind, order=order, draft_length=w, temperature=t, branches=k,
                       branching=branching)
    tv, tolerance, _, _ = check_exact(decoder, order, LENGTH, t, samples=20000, denoiser=_denoiser(kind))
    assert tv <= tolerance, (tv, tolerance)


@pytest.mark.parametrize("kind", ["marginals", "untrained"])
@pytest.mark.parametrize("broken,branching", [(ResamplesFromTarget, "sample"), (ResamplesFromTarget, "topk"),
                                              (KeepsRejectedSiblings, "sample"), (TopkTestedAsSampled, "topk")])
@pytest.mark.parametrize("k,samples", [(2, 4000), pytest.param(3, 20000, marks=pytest.mark.slow)])
def test_a_broken_tree_rule_fails_the_same_check(kind, broken, branching, k, samples):
    # k = 3 covers this vocabulary: a skipped residual moves the law less (TV 0.07-0.08 for the untrained head,
    # against a tolerance of 0.065 at 4000 samples), so the slow tier checks it at 20000 (tolerance 0.029)
    decoder = _decoder(broken, kind, order="l2r", temperature=1.0, branches=k, branching=branching)
    tv, tolerance, _, _ = check_exact(decoder, "l2r", LENGTH, 1.0, samples=samples, denoiser=_denoiser(kind))
    assert tv > tolerance, (tv, tolerance)  # the exactness check fails


def test_tree_keeps_the_law_of_semi_autoregressive_blocks():
    denoiser = _denoiser("untrained")
    decoder = SpeculativeDecoder(order="r2l", block_length=2, temperature=1.0, draft="head", branches=2)
    out = run(decoder, denoiser, LENGTH, 4000, seed=3)
    order = verification_order("r2l", 1, LENGTH, 2, None, "cpu")[0].tolist()
    answers, log_p = enumerate_order_law(denoiser, torch.tensor([0]), LENGTH, order, 1.0)
    tv, tolerance = empirical_tv(answers, log_p, out.gen_ids)
    assert tv <= tolerance, (tv, tolerance)


def test_log_prob_is_the_enumerated_order_probability():
    denoiser = _denoiser("untrained")
    for order, branching, k, t in (("l2r", "sample", 2, 0.7), ("r2l", "topk", 3, 1.0)):
        decoder = SpeculativeDecoder(order=order, temperature=t, draft="head", branches=k, branching=branching)
        out = run(decoder, denoiser, LENGTH, 300)
        answers, log_p = enumerate_order_law(denoiser, torch.tensor([0]), LENGTH, order_of(order, LENGTH), t)
        index = (out.gen_ids * MASK ** torch.arange(LENGTH - 1, -1, -1)).sum(1)
        assert torch.allclose(out.log_prob, log_p[index], rtol=0, atol=1e-6)


# ---------------------------------------------------------------- T = 0


@pytest.mark.parametrize("kind", ["marginals", "untrained", "trained"])
@pytest.mark.parametrize("order", ["l2r", "r2l", (2, 0, 3, 1, 4)])
def test_greedy_tree_gives_the_one_token_per_step_ids(kind, order):
    denoiser = _denoiser(kind)
    prompts = torch.randint(0, MASK, (16, 1), generator=torch.Generator().manual_seed(0))
    reference = greedy_one_token_per_step(denoiser, prompts, 5, order_of(order, 5))
    for w in (2, None):
        for k in (1, 2, 3):
            for branching in ("sample", "topk"):
                out = _decoder(SpeculativeDecoder, kind, order=order, draft_length=w, temperature=0, branches=k,
                               branching=branching).sample(denoiser, prompts, 5)
                assert torch.equal(out.ids, reference), (w, k, branching)
                assert (out.log_prob == 0).all()


# ---------------------------------------------------------------- the tree and its cost


def test_sampled_candidates_are_successive_draws_without_replacement():
    # ordered pairs (x1, x2) of a node's first two candidates: P = q(x1) q(x2) / (1 - q(x1)).
    q = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
    n = 40000
    logits = q.log().float()[None, None].expand(n, 2, 4)  # [a, w = 2, V]
    tree = grow_tree(MarginalDrafter(logits), 2, 2, "sample", 1.0, torch.Generator().manual_seed(0))
    pairs = tree.tokens[:, 0, 0, :2]  # [n, 2] the root's candidates in the order tried
    assert (pairs[:, 0] != pairs[:, 1]).all()
    counts = torch.zeros(4, 4, dtype=torch.float64).index_put_((pairs[:, 0], pairs[:, 1]),
                                                                torch.ones(n, dtype=torch.float64), accumulate=True)
    expected = q[:, None] * q[None, :] / (1 - q[:, None])
    expected.fill_diagonal_(0)
    se = (expected * (1 - expected) / n).sqrt()
    assert ((counts / n - expected).abs() <= 5 * se + 1e-12).all(), (counts / n, expected)  # 5 sigma per cell
    # with replacement the diagonal would hold 0.34 of the mass; the k likeliest paths continue, one per beam slot
    assert tree.exists[:, 1].all() and (tree.child[:, 0, 0, :2].sort(1).values == torch.tensor([0, 1])).all()


def test_topk_tree_follows_the_likeliest_paths():
    # two slots, marginal logits: slot 0 prefers 2 then 0, slot 1 prefers 1 then 3
    logits = torch.tensor([[[0.0, -5.0, 1.0, -9.0], [-9.0, 2.0, -9.0, 1.0]]])  # [a = 1, w = 2, V = 4]
    tree = grow_tree(MarginalDrafter(logits), 2, 2, "topk", 1.0, None)
    assert tree.tokens[0, 0, 0].tolist() == [2, 0]
    assert tree.path[0, 1, :, 0].tolist() == [2, 0] and tree.exists[0, 1].all()
    assert tree.tokens[0, 1, 0].tolist() == [1, 3] and tree.tokens[0, 1, 1].tolist() == [1, 3]
    assert tree.child[0, 0, 0].tolist() == [0, 1] and (tree.child[0, 1] == -1).all()
    assert torch.allclose(tree.q[0, 1, 0], logits[0, 1].double().softmax(-1))


@pytest.mark.parametrize("kind", ["marginals", "untrained"])
def test_rows_are_counted_and_never_run_twice(kind):
    class Recording(CoupledLogits):
        def forward(self, input_ids, attention_mask=None):
            self.calls = getattr(self, "calls", []) + [input_ids.clone()]
            return super().forward(input_ids)

    denoiser = Recording(seed=1)
    if kind == "untrained":
        attach_draft_head(denoiser, vocab_size=4, max_positions=16, width=16, layers=1, heads=2)
    k, length = 3, 5
    timed = TimedDenoiser(denoiser)
    out = _decoder(SpeculativeDecoder, kind, branches=k).sample(timed, torch.arange(3)[:, None], length,
                                                                 torch.Generator().manual_seed(0))
    assert timed.calls == out.steps and timed.rows == out.rows_per_sample * 3
    for call in denoiser.calls[1:]:  # the prompt tells the samples apart: a repeated row would be waste
        assert len(torch.unique(call, dim=0)) == len(call)
        assert len(call) <= 3 * (1 + k * (length - 1))  # at most 1 + k (w - 1) rows a sample a round


def test_trees_and_drafts_are_exclusive_and_bad_options_are_refused():
    with pytest.raises(ValueError, match="branches"):
        build_decoder("speculative", drafts=2, branches=2)
    with pytest.raises(ValueError, match="branches"):
        build_decoder("speculative", branches=0)
    with pytest.raises(ValueError, match="unknown branching"):
        build_decoder("speculative", branches=2, branching="beam")
    assert "branches=2" in repr(build_decoder("speculative", branches=2, branching="topk"))



def test_the_heads_law_at_every_node_is_its_teacher_forced_conditional_on_the_path():
    # the tree moves the head's key/value cache along each path: a wrong gather would draft (and test) the
    # candidates with another node's law; teacher forcing the node's path must give the same conditional
    head = find_draft_head(_denoiser("untrained"))
    a, length, w, k = 3, 6, 4, 3
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, MASK, (a, length), generator=generator)
    perm = torch.stack([torch.randperm(length, generator=generator) for _ in range(a)])  # [a, L]
    committed = torch.tensor([0, 1, 2])
    positions = perm.gather(1, (committed[:, None] + torch.arange(w)).clamp(max=length - 1))  # [a, w]
    q_logits = torch.randn(a, w, MASK + 1, generator=generator)
    q_logits[..., MASK] = -1e9
    order_tokens = tokens.gather(1, perm)
    with torch.no_grad():
        tree = grow_tree(HeadDrafter(head, order_tokens, perm, committed, positions, q_logits), w, k, "sample", 1.0,
                         generator)
        assert tree.exists[:, 1:].all()  # every beam slot is used at this vocabulary
        for j in range(w):
            for r in range(k if j else 1):
                forced = head.teacher_forced(order_tokens, perm, committed, tree.path[:, j, r].clamp(min=0), positions,
                                             q_logits)  # [a, w, V]
                assert torch.allclose(forced[:, j].double().softmax(-1), tree.q[:, j, r], atol=1e-6), (j, r)


@pytest.mark.slow
def test_tree_with_random_orders_samples_the_mixture_over_uniform_orders():
    import itertools

    denoiser = _denoiser("untrained")
    decoder = SpeculativeDecoder(order="random", temperature=1.0, draft="head", branches=2)
    out = run(decoder, denoiser, LENGTH, 6000, seed=4)
    laws = [enumerate_order_law(denoiser, torch.tensor([0]), LENGTH, list(o), 1.0)
            for o in itertools.permutations(range(LENGTH))]
    mixture = torch.stack([log_p.exp() for _, log_p in laws]).mean(0)  # each order has probability 1/24
    tv, tolerance = empirical_tv(laws[0][0], mixture.log(), out.gen_ids)
    assert tv <= tolerance, (tv, tolerance)
