"""The decoder-order likelihood is the decoder's law: by enumeration, by the sampler's own log q and
frequencies, with the gradient of K explicit forwards and none through the choice of positions."""

import itertools
import math

import pytest
import torch

from jointobj import Denoiser
from jointobj.decoding import build_decoder
from jointobj.decoding.decoder_law import (
    DecoderOrder,
    decoder_blocks,
    decoder_log_likelihood,
    decoder_scores,
    forward_as_decoded,
    fuse_passes,
    parse_decoder_orders,
    plan_order,
)
from jointobj.decoding.policies import ConfidenceTopK
from jointobj.decoding.sampler import EXCLUDED_LOGIT
from jointobj.diffusion.batch import answer_batch
from jointobj.diffusion.likelihood import order_log_likelihood
from jointobj.diffusion.orders import OrderProposal
from jointobj.evaluation.sweep import evaluate
from jointobj.model.tiny import tiny_masked_lm
from jointobj.toysets.builtin import load_toyset
from jointobj.toysets.oracle import OracleDenoiser

from tiny_models import sharp_denoiser

VOCAB, MASK, PROMPT_TOKEN, LENGTH = 4, 3, 2, 4  # answers over {0, 1, 2}: 3^4 = 81 of them
POLICIES = ["confidence", "margin", "entropy", "threshold:threshold=0.6", "entropy_bounded:bound=0.6", "l2r",
            "planned:order=2-0-3-1"]
BUDGETS = ["steps=1", "steps=2", f"steps={LENGTH}"]  # K in {1, 2, n}


def batch_of(answers: torch.Tensor) -> dict:
    return answer_batch(torch.full((len(answers), 1), PROMPT_TOKEN), answers)  # [n, 1 + L]


def every_answer() -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(VOCAB - 1), repeat=LENGTH)))  # [81, 4], no [MASK]


def spec(policy: str, budget: str) -> DecoderOrder:
    return DecoderOrder.parse(f"{policy}:{budget}")


# ---------------------------------------------------------------- exactness


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("policy", POLICIES)
def test_the_decoder_law_sums_to_one_over_every_answer(policy, budget):
    batch = batch_of(every_answer())
    with torch.no_grad():
        loglik = decoder_log_likelihood(sharp_denoiser(), batch, [spec(policy, budget)])[:, 0]  # [81]
    assert abs(float(loglik.double().exp().sum()) - 1.0) < 1e-5
    assert float(loglik.exp().max()) > 4 / len(loglik)  # far from uniform: the check has teeth


@pytest.mark.parametrize("budget", ["steps=2", f"steps={LENGTH}"])
@pytest.mark.parametrize("policy", ["confidence", "threshold:threshold=0.6"])
def test_the_gradient_pass_gives_the_same_value(policy, budget):
    # With grad on, the blocks are re-scored by the K-block machinery (score_blocks): same law.
    batch = batch_of(every_answer())
    order = spec(policy, budget)
    with torch.no_grad():
        value = decoder_log_likelihood(sharp_denoiser(), batch, [order])
    with torch.enable_grad():
        scored = decoder_log_likelihood(sharp_denoiser(), batch, [order], max_rows=64)
    torch.testing.assert_close(scored.detach(), value, atol=1e-4, rtol=0)


class DataTokenProbability(ConfidenceTopK):
    """The bug to catch: rank positions by the probability of the *data's* token there (what a
    teacher-forced pass can see and the sampler cannot) instead of the policy's own score."""

    def __init__(self, data: torch.Tensor):
        self.data = data  # [b, n] the teacher-forced answers (every row stays live under a top-k policy)

    def scores(self, logits, generator):
        return logits.softmax(-1).gather(-1, self.data[..., None]).squeeze(-1)  # [b, l]


def test_ranking_by_the_data_tokens_probability_breaks_the_law():
    # The enumeration above has teeth: the same pass with the wrong score is no distribution.
    batch = batch_of(every_answer())
    order = spec("confidence", "steps=2")
    object.__setattr__(order, "policy", DataTokenProbability(batch["input_ids"][:, 1:]))  # answer columns
    with torch.no_grad():
        loglik = decoder_log_likelihood(sharp_denoiser(), batch, [order])[:, 0]
    assert abs(float(loglik.double().exp().sum()) - 1.0) > 1e-2


@pytest.mark.parametrize("budget", ["tokens_per_step=2", "steps=3", "tokens_per_step=1"])
@pytest.mark.parametrize("policy", POLICIES)
def test_it_is_the_samplers_own_log_q_of_its_samples(policy, budget):
    order = spec(policy, budget)
    prompt = torch.full((64, 1), PROMPT_TOKEN)
    out = build_decoder(order.policy_name, order.tokens_per_step, **order.decoder_options).sample(
        sharp_denoiser(), prompt, LENGTH, torch.Generator().manual_seed(0))
    with torch.no_grad():
        loglik = decoder_log_likelihood(sharp_denoiser(), batch_of(out.gen_ids), [order])[:, 0]
    torch.testing.assert_close(loglik.double(), out.log_prob, atol=1e-4, rtol=0)
    assert out.log_prob.std() > 0.3  # samples differ in probability


SAMPLES = 6000


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("policy", POLICIES)
def test_answers_appear_at_the_decoder_laws_frequency(policy, budget):
    order = spec(policy, budget)
    prompt = torch.full((SAMPLES, 1), PROMPT_TOKEN)
    out = build_decoder(order.policy_name, order.tokens_per_step, **order.decoder_options).sample(
        sharp_denoiser(), prompt, LENGTH, torch.Generator().manual_seed(2))
    answers = every_answer()
    with torch.no_grad():
        law = decoder_log_likelihood(sharp_denoiser(), batch_of(answers), [order])[:, 0].double().exp()  # [81]
    code = (out.gen_ids * torch.tensor([27, 9, 3, 1])).sum(1)  # base-3 index of each sample
    frequency = torch.bincount(code, minlength=len(answers)).double() / SAMPLES  # [81]
    # 4.5 binomial standard deviations each, plus 4 counts: for answers of law ~1e-5 the normal approximation
    # fails (2 draws where 0.1 are expected happen once in ~200 answers)
    tolerance = 4.5 * (law * (1 - law) / SAMPLES).sqrt() + 4 / SAMPLES
    assert ((frequency - law).abs() <= tolerance).all(), (frequency - law).abs().max()


def test_l2r_is_the_fixed_order_k_block_likelihood():
    # The l2r decoder's law is the l2r order cut as the sampler commits, up to the [MASK] renormalisation:
    # on a model with no mass on [MASK] the two agree.
    answers = every_answer()
    batch = batch_of(answers)
    scorable = ~batch["prompt_mask"]
    orders = OrderProposal(["l2r"]).sample(scorable)

    class NoMassOnMask(torch.nn.Module):
        mask_token_id = MASK

        def forward(self, input_ids, attention_mask=None):
            logits = sharp_denoiser()(input_ids=input_ids, attention_mask=attention_mask)  # [r, l, V]
            return logits.index_fill(-1, torch.tensor([MASK]), EXCLUDED_LOGIT)

    with torch.no_grad():
        fixed = order_log_likelihood(NoMassOnMask(), batch, orders, 2)[:, 0]
        law = decoder_log_likelihood(sharp_denoiser(), batch, ["l2r:steps=2"])[:, 0]
    torch.testing.assert_close(law, fixed, atol=1e-4, rtol=0)


# ---------------------------------------------------------------- gradient


def explicit_forwards(denoiser, batch, block: torch.Tensor) -> torch.Tensor:
    """sum_k log p(x_{S_k} | s_k), one plain forward per block with grad, softmax without [MASK]: [b]."""
    input_ids, total = batch["input_ids"], 0.0
    for k in range(int(block.max()) + 1):
        noisy = input_ids.masked_fill(block >= k, MASK)  # [b, l] blocks < k shown
        logits = denoiser(input_ids=noisy, attention_mask=batch["attention_mask"])  # [b, l, V]
        logits = logits.index_fill(-1, torch.tensor([MASK]), -torch.inf)
        token = logits.log_softmax(-1).gather(-1, input_ids[..., None]).squeeze(-1)  # [b, l]
        total = total + token.masked_fill(block != k, 0.0).sum(1)
    return total


@pytest.mark.parametrize("policy", ["confidence", "threshold:threshold=0.6", "entropy_bounded:bound=0.6"])
@pytest.mark.parametrize("fused", [False, True])
def test_the_gradient_is_that_of_k_explicit_forwards_with_the_choice_held_fixed(policy, fused):
    # fused: the decoder's pass run with grad is its own score (decoder_scores); else the blocks are
    # re-scored in checkpointed chunks of 5 rows (score_blocks). Both: the gradient of K explicit forwards.
    denoiser = sharp_denoiser()
    batch = batch_of(every_answer()[::7])  # 12 answers
    order = spec(policy, "steps=2")
    block, _ = decoder_blocks(denoiser, batch, ~batch["prompt_mask"], order)
    assert not block.requires_grad  # the choice of positions carries no gradient
    options = {"max_rows": 24, "checkpoint": True} if fused else {"max_rows": 5, "checkpoint": True}
    with torch.enable_grad():
        assert fuse_passes(denoiser, ~batch["prompt_mask"], [order], **options) == fused  # 12 x 2 rows fit 24
        fused_block, _ = decoder_scores(denoiser, batch, ~batch["prompt_mask"], order)
    assert torch.equal(fused_block, block) and not fused_block.requires_grad
    denoiser.zero_grad()
    decoder_log_likelihood(denoiser, batch, [order], **options).sum().backward()
    ours = [p.grad.clone() for p in denoiser.parameters()]
    denoiser.zero_grad()
    explicit_forwards(denoiser, batch, block).sum().backward()
    for mine, reference in zip(ours, [p.grad for p in denoiser.parameters()]):
        torch.testing.assert_close(mine, reference, atol=1e-4, rtol=1e-3)  # float32 sums in another order
    assert any(float(g.abs().sum()) > 0 for g in ours)
    denoiser.zero_grad()


def test_the_pass_is_fused_only_where_the_training_forward_is_the_decoders():
    # Dropout makes the train-mode forward differ from the eval-mode one the decoder runs (and whose
    # choice of blocks the law is): then the blocks come from an eval-mode pass, scored apart.
    with_dropout = Denoiser(tiny_masked_lm("modernbert", vocab_size=VOCAB, seed=0), mask_token_id=MASK)
    assert forward_as_decoded(with_dropout.eval()) and forward_as_decoded(with_dropout.train())  # all rates 0
    with_dropout.model.config.attention_dropout = 0.1  # a rate read inside forward (functional dropout)
    assert forward_as_decoded(with_dropout.eval()) and not forward_as_decoded(with_dropout.train())
    with_dropout.model.config.attention_dropout = 0.0
    with_dropout.add_module("drop", torch.nn.Dropout(0.1))
    assert not forward_as_decoded(with_dropout.train())
    batch = batch_of(every_answer()[:4])
    with torch.enable_grad():
        assert not fuse_passes(with_dropout, ~batch["prompt_mask"], [spec("confidence", "steps=2")], max_rows=None,
                               checkpoint=False)


# ---------------------------------------------------------------- specs


def test_a_spec_reads_like_the_decoder_and_round_trips():
    order = DecoderOrder.parse("threshold:threshold=0.7:steps=3")
    assert (order.policy_name, order.steps, order.tokens_per_step) == ("threshold", 3, None)
    assert order.policy.threshold == 0.7 and order.decoder_options == {"threshold": 0.7, "steps": 3}
    assert DecoderOrder.parse(str(order)) == order
    assert DecoderOrder.parse("confidence").tokens_per_step == 1
    assert DecoderOrder.parse("confidence:tokens_per_step=all").tokens_per_step is None
    assert [str(o) for o in parse_decoder_orders("confidence:tokens_per_step=2,l2r:steps=3")] == [
        "confidence:tokens_per_step=2", "l2r:steps=3"]
    assert order.budget(torch.tensor([2, 9])).tolist() == [2, 3]


@pytest.mark.parametrize("bad, words", [
    ("random:steps=2", "independently of the state"),
    ("confidence:steps", "option=value"),
    ("confidence:tokens_per_step=2:steps=3", "not both"),
    ("confidence:temperature=0.5", "temperature"),
    ("threshold:threshold=2", "threshold must lie"),
    ("nonsense", "nonsense"),
])
def test_bad_specs_are_refused_with_a_reason(bad, words):
    with pytest.raises((ValueError, KeyError), match=words):
        DecoderOrder.parse(bad)


def test_budget_quota_matches_the_sampler_at_uneven_spreads():
    # 4 positions in 3 steps: quotas 2, 1, 1 (ceil(left / steps left)), as the sampler spreads them.
    batch = batch_of(every_answer()[:5])
    block, _ = decoder_blocks(sharp_denoiser(), batch, ~batch["prompt_mask"], spec("confidence", "steps=3"))
    counts = torch.stack([(block == k).sum(1) for k in range(3)], 1)  # [5, 3]
    assert counts.tolist() == [[2, 1, 1]] * 5
    assert math.isclose(float((block[:, 1:] >= 0).float().mean()), 1.0)


def test_a_planned_order_keeps_coupled_cells_apart_and_the_oracle_decodes_it_better():
    # latin_square_3 at 3 steps: l2r commits a row's three cells together (oracle validity 0.07); the plan
    # picks the order whose decoder law gives the squares the highest likelihood, and that order's
    # validity is higher (a diagonal first reaches about 0.27).
    toyset = load_toyset("latin_square_3")
    prompts, answers = toyset.sample(128, torch.Generator().manual_seed(0))
    input_ids = torch.cat([prompts, answers], 1)
    prompt_mask = torch.zeros_like(input_ids, dtype=torch.bool)
    prompt_mask[:, : prompts.shape[1]] = True
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "prompt_mask": prompt_mask}
    oracle = OracleDenoiser(toyset)
    best, rows = plan_order(oracle, batch, steps=3, candidates=16, generator=torch.Generator().manual_seed(0))
    assert rows[0]["order"] == "planned:order=0-1-2-3-4-5-6-7-8:steps=3"  # l2r is always a candidate
    assert max(r["loglik"] for r in rows) > rows[0]["loglik"] + 1.0
    validity = {name: evaluate(oracle, [toyset], [name], [1], 1000, decoder_options={name: options})[0]["validity"]
                for name, options in [("l2r", {"steps": 3}), ("planned", best.decoder_options)]}
    assert validity["planned"] > validity["l2r"] + 0.1, validity
