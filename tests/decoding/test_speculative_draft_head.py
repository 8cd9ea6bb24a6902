"""The speculative decoder with a learned draft head: the head changes the speed, never the law.

The fake denoiser and the enumeration of its order-o law are test_speculative.py's: the decoder's
sample frequencies must match the enumerated law within a tolerance computed from the sample size,
with a head that drafts far from the marginals (random weights: "untrained") and with one trained
on the model's own samples; a verifier that skips the residual (or the ratio test) must fail the
same check. T = 0 gives the one-token-per-step greedy decoder's ids. Training raises the draft's
likelihood of the model's own samples and the measured acceptance on a model whose marginals
disagree with its conditionals.
"""

import pytest
import torch
from test_speculative import (
    MASK,
    VOCAB,
    AcceptsEveryDraft,
    CoupledLogits,
    ResamplesFromTarget,
    check_exact,
    empirical_tv,
    enumerate_order_law,
    greedy_one_token_per_step,
    order_of,
    run,
)

from jointobj.decoding import build_decoder
from jointobj.decoding.speculative import SpeculativeDecoder, verification_order
from jointobj.model.draft_head import attach_draft_head, find_draft_head
from jointobj.objectives.draft_distillation import distillation_targets, draft_loss
from jointobj.training.draft_head import train_draft_head

LENGTH = 4


def _with_head(seed: int = 7, scale: float = 1.5) -> CoupledLogits:
    """The fake denoiser with an untrained head whose output layer is random (zero would draft the marginals)."""
    denoiser = CoupledLogits(seed=seed)
    head = attach_draft_head(denoiser, vocab_size=VOCAB, max_positions=16, width=16, layers=2, heads=2)
    with torch.no_grad():
        head.out.weight.normal_(0.0, scale, generator=torch.Generator().manual_seed(seed))
    return denoiser


_TRAINED: dict[str, CoupledLogits] = {}


def _trained(order="l2r") -> CoupledLogits:
    """The fake denoiser with a head distilled from its own l2r samples (cached across tests)."""
    key = str(order)
    if key not in _TRAINED:
        denoiser = CoupledLogits(seed=7)
        torch.manual_seed(0)
        attach_draft_head(denoiser, vocab_size=VOCAB, max_positions=16, width=32, layers=2, heads=4)
        train_draft_head(denoiser, torch.zeros(1, 1, dtype=torch.long), LENGTH, steps=150, samples=512,
                         learning_rate=3e-3, order=order, seed=0)
        _TRAINED[key] = denoiser
    return _TRAINED[key]


def _check(decoder, denoiser, order, temperature, samples, seed=0):
    tv, tolerance, out, _ = check_exact(decoder, order, LENGTH, temperature, samples, seed, denoiser=denoiser)
    return tv, tolerance, out


@pytest.mark.parametrize("trained", [False, True], ids=["untrained", "trained"])
@pytest.mark.parametrize("drafts,temperature", [(1, 1.0), (3, 0.7)])
def test_head_drafts_keep_the_enumerated_order_law(trained, drafts, temperature):
    denoiser = _trained() if trained else _with_head()
    decoder = SpeculativeDecoder(order="l2r", drafts=drafts, temperature=temperature, draft="head")
    tv, tolerance, _ = _check(decoder, denoiser, "l2r", temperature, samples=4000)
    assert tv <= tolerance, (tv, tolerance)


@pytest.mark.slow
@pytest.mark.parametrize("trained", [False, True], ids=["untrained", "trained"])
@pytest.mark.parametrize("order,w", [("l2r", None), ("r2l", 2), ((2, 0, 3, 1), None)])
@pytest.mark.parametrize("drafts", [1, 3])
@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_head_drafts_keep_the_law_in_every_setting(trained, order, w, drafts, temperature):
    denoiser = _trained() if trained else _with_head()
    decoder = SpeculativeDecoder(order=order, draft_length=w, drafts=drafts, temperature=temperature, draft="head")
    tv, tolerance, _ = _check(decoder, denoiser, order, temperature, samples=20000)
    assert tv <= tolerance, (tv, tolerance)


@pytest.mark.parametrize("broken", [ResamplesFromTarget, AcceptsEveryDraft])
@pytest.mark.parametrize("drafts", [1, 3])
def test_a_rule_that_skips_the_residual_fails_with_head_drafts(broken, drafts):
    decoder = broken(order="l2r", drafts=drafts, temperature=1.0, draft="head")
    tv, tolerance, _ = _check(decoder, _with_head(), "l2r", 1.0, samples=4000)
    assert tv > tolerance, (tv, tolerance)


class MarginalRatio(SpeculativeDecoder):
    """Broken: tests the head's draft against the marginal it started from (as if the draft were marginal)."""

    def _draft_with_head(self, head, gen, perm, committed, positions, q_logits, n, temperature, generator):
        drafted, _ = super()._draft_with_head(head, gen, perm, committed, positions, q_logits, n, temperature,
                                              generator)
        marginal = (q_logits.double() / temperature).softmax(-1)[:, None].expand(-1, n, -1, -1)  # [a, N, w, V]
        return drafted, marginal


def test_the_ratio_must_use_the_heads_own_conditional():
    tv, tolerance, _ = _check(MarginalRatio(order="l2r", temperature=1.0, draft="head"), _with_head(), "l2r", 1.0,
                              samples=4000)
    assert tv > tolerance, (tv, tolerance)


@pytest.mark.parametrize("order", ["l2r", "r2l", (2, 0, 3, 1, 4)])
@pytest.mark.parametrize("trained", [False, True], ids=["untrained", "trained"])
def test_greedy_head_drafts_give_the_one_token_per_step_ids(order, trained):
    denoiser = _trained() if trained else _with_head(seed=3)
    prompts = torch.randint(0, MASK, (16, 1), generator=torch.Generator().manual_seed(0))
    reference = greedy_one_token_per_step(denoiser, prompts, 5, order_of(order, 5))
    for w, n in ((2, 1), (None, 1), (None, 3)):
        out = build_decoder("speculative", order=order, draft_length=w, drafts=n, temperature=0,
                            draft="head").sample(denoiser, prompts, 5)
        assert torch.equal(out.ids, reference)


def test_training_raises_the_draft_likelihood_and_the_acceptance():
    denoiser = CoupledLogits(seed=11)  # strong coupling: marginals far from the conditionals
    torch.manual_seed(0)  # the head's initialisation, whatever ran before
    attach_draft_head(denoiser, vocab_size=VOCAB, max_positions=16, width=32, layers=2, heads=4)
    prompt = torch.zeros(1, 1, dtype=torch.long)
    held_out = run(SpeculativeDecoder(temperature=1.0), denoiser, LENGTH, 512, seed=99).gen_ids  # own samples
    cuts = torch.zeros(512, dtype=torch.long)
    targets = distillation_targets(denoiser, prompt.expand(512, 1), held_out, cuts=cuts)
    head = find_draft_head(denoiser)

    def likelihood() -> float:  # mean log q(x) of the held-out samples, the whole answer drafted
        with torch.no_grad():
            logits = head.teacher_forced(targets.order_tokens, targets.order_positions, cuts, targets.order_tokens,
                                         targets.order_positions, targets.proposal)
        return float(logits.log_softmax(-1).gather(2, targets.order_tokens[..., None]).sum((1, 2)).mean())

    def rate() -> float:
        out = run(SpeculativeDecoder(temperature=1.0, draft="head"), denoiser, LENGTH, 3000, seed=5)
        return out.tokens_per_step

    before_likelihood, before_rate = likelihood(), rate()
    before_kl = draft_loss(head, targets)[1]
    report = train_draft_head(denoiser, prompt, LENGTH, steps=150, samples=512, seed=0)
    after_kl = draft_loss(head, targets)[1]
    assert likelihood() > before_likelihood + 0.3, (before_likelihood, likelihood())
    # the expected rejection rate of a drafted token (1 - sum min(p, q)) at least halves
    assert 1 - after_kl["acceptance"] < 0.5 * (1 - before_kl["acceptance"]), (before_kl, after_kl)
    # 3000 samples: the rate's standard error is below 0.01 here; the gain is far above it
    assert rate() > before_rate + 0.1, (before_rate, rate())
    assert report["history"][-1][1] < report["history"][0][1]  # the training KL fell


def test_draft_head_without_a_head_is_a_clear_error():
    with pytest.raises(ValueError, match="needs a draft head"):
        run(SpeculativeDecoder(draft="head"), CoupledLogits(), LENGTH, 2)
    with pytest.raises(ValueError, match="unknown draft"):
        build_decoder("speculative", draft="tree")


def test_head_drafts_keep_the_law_of_semi_autoregressive_blocks():
    denoiser = _with_head()
    out = run(SpeculativeDecoder(order="r2l", block_length=2, drafts=2, temperature=1.0, draft="head"), denoiser,
              LENGTH, 4000, seed=3)
    order = verification_order("r2l", 1, LENGTH, 2, None, "cpu")[0].tolist()
    answers, log_p = enumerate_order_law(denoiser, torch.tensor([0]), LENGTH, order, 1.0)
    tv, tolerance = empirical_tv(answers, log_p, out.gen_ids)
    assert tv <= tolerance, (tv, tolerance)
