"""TokenCELoss(base_kl_weight=beta): the KL to the base model (adapter off) at the noised states, against a
naive loop over a separate copy of the base; what it refuses; and that it keeps a fine-tune near its base."""

import copy

import pytest
import torch
import torch.nn.functional as F

from jointobj import Denoiser, TokenCELoss
from jointobj.model.tiny import tiny_masked_lm

from helpers import padded_batch

VOCAB, MASK, PAD = 40, 1, 0


def base_and_tuned(seed: int = 0) -> tuple[Denoiser, Denoiser]:
    """A tiny base, and a copy with a LoRA adapter whose B matrices are random (so the two differ)."""
    base = Denoiser(tiny_masked_lm("bert", vocab_size=VOCAB, seed=seed), mask_token_id=MASK).eval()
    tuned = Denoiser(copy.deepcopy(base.model), mask_token_id=MASK).add_lora(lora_dropout=0.0)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, parameter in tuned.model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(4.0 * torch.randn(parameter.shape, generator=generator))
    return base, tuned.eval()


def naive_base_kl(base_logits, logits, batch, noised):
    """sum_b w(t_b) sum_i 1[masked] KL(p_base || p) / #scorable, one position at a time."""
    total = 0.0
    for b in range(logits.shape[0]):
        for i in range(logits.shape[1]):
            if noised.masked[b, i]:
                p_base = F.softmax(base_logits[b, i], -1)
                total += noised.weight[b] * (p_base * (p_base.log() - F.log_softmax(logits[b, i], -1))).sum()
    scorable = (batch["attention_mask"].bool() & ~batch["prompt_mask"]).sum()
    return total / scorable


def test_matches_a_naive_loop_over_a_separate_base_copy_with_its_gradient():
    base, tuned = base_and_tuned()
    batch = padded_batch([9, 7, 9], [2, 1, 3], VOCAB, PAD, seed=4)
    beta = 2.5
    anchored = TokenCELoss(base_kl_weight=beta)(tuned, batch, generator=torch.Generator().manual_seed(7))
    plain = TokenCELoss()
    noised = plain.corrupt(batch, MASK, torch.Generator().manual_seed(7))  # the same draw as above
    logits = tuned(input_ids=noised.input_ids, attention_mask=batch["attention_mask"])
    with torch.no_grad():
        base_logits = base(input_ids=noised.input_ids, attention_mask=batch["attention_mask"])
    reference = plain.score(logits, batch, noised).loss + beta * naive_base_kl(base_logits, logits, batch, noised)
    torch.testing.assert_close(anchored.loss, reference, atol=1e-5, rtol=1e-5)
    assert float(anchored.metrics["base_kl"]) > 1e-3  # the adapter moved the logits: the term is not 0

    lora = [p for n, p in tuned.model.named_parameters() if "lora_" in n]
    got = torch.autograd.grad(anchored.loss, lora)
    want = torch.autograd.grad(reference, lora)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)


def test_the_start_term_is_the_unweighted_kl_at_the_fully_masked_answer():
    # Rows 0 and 3 share their prompt and length (one start state, counted twice); rows 0 and 4 share the
    # prompt's ids but not its length (two start states).
    base, tuned = base_and_tuned(seed=6)
    batch = padded_batch([9, 6, 8, 9, 7], [2, 1, 3, 2, 2], VOCAB, PAD, pad_to=9, seed=6)
    batch["input_ids"][3, :2] = batch["input_ids"][4, :2] = batch["input_ids"][0, :2]
    gamma = 4.0
    got = TokenCELoss(base_kl_start_weight=gamma)(tuned, batch, generator=torch.Generator().manual_seed(1))
    plain = TokenCELoss()(tuned, batch, generator=torch.Generator().manual_seed(1))
    scorable = batch["attention_mask"].bool() & ~batch["prompt_mask"]
    start = batch["input_ids"].masked_fill(scorable, MASK)
    logits = tuned(input_ids=start, attention_mask=batch["attention_mask"])
    with torch.no_grad():
        base_logits = base(input_ids=start, attention_mask=batch["attention_mask"])
    total = 0.0
    for b, i in scorable.nonzero().tolist():  # one position at a time, each weighing 1
        p_base = F.softmax(base_logits[b, i], -1)
        total += (p_base * (p_base.log() - F.log_softmax(logits[b, i], -1))).sum()
    reference = plain.loss + gamma * total / scorable.sum()
    torch.testing.assert_close(got.loss, reference, atol=1e-5, rtol=1e-5)
    assert float(got.metrics["base_kl_start"]) > 1e-4
    state, _ = TokenCELoss.start_state(batch, MASK)
    assert state.weight.tolist().count(2.0) == 1 and len(state.weight) == 4  # one forward row fewer


def test_is_zero_with_a_fresh_adapter_and_leaves_the_loss_as_token_ce():
    base = Denoiser(tiny_masked_lm("modernbert", vocab_size=VOCAB, seed=1), mask_token_id=MASK).eval()
    tuned = Denoiser(copy.deepcopy(base.model), mask_token_id=MASK).add_lora().eval()  # lora_B = 0
    batch = padded_batch([8, 8], [2, 2], VOCAB, PAD, seed=1)
    anchored = TokenCELoss(base_kl_weight=10.0)(tuned, batch, generator=torch.Generator().manual_seed(2))
    plain = TokenCELoss()(tuned, batch, generator=torch.Generator().manual_seed(2))
    assert float(anchored.metrics["base_kl"]) == pytest.approx(0.0, abs=1e-6)
    torch.testing.assert_close(anchored.loss, plain.loss, atol=1e-6, rtol=1e-6)


class EngineLike(torch.nn.Module):
    """What DeepSpeed's engine (or DDP) looks like to the objective: the model as `.module`, called through."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def test_finds_the_adapter_through_an_engine_wrapper():
    _, tuned = base_and_tuned(seed=3)
    batch = padded_batch([6, 6], [1, 1], VOCAB, PAD, seed=3)
    loss = TokenCELoss(base_kl_weight=1.0)
    direct = loss(tuned, batch, generator=torch.Generator().manual_seed(0))
    routed = loss(tuned.routed_through(EngineLike(tuned.model)), batch, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(routed.loss, direct.loss)
    torch.testing.assert_close(routed.metrics["base_kl"], direct.metrics["base_kl"])


def test_adapter_is_back_on_after_the_base_forward():
    _, tuned = base_and_tuned(seed=5)
    ids = torch.randint(2, VOCAB, (2, 6), generator=torch.Generator().manual_seed(5))
    before = tuned(input_ids=ids)
    with tuned.adapter_disabled():
        off = tuned(input_ids=ids)
    assert not torch.allclose(before, off)
    torch.testing.assert_close(tuned(input_ids=ids), before)


def test_a_denoiser_without_adapter_is_told_to_add_one():
    plain = Denoiser(tiny_masked_lm("bert", vocab_size=VOCAB, seed=0), mask_token_id=MASK)
    batch = padded_batch([6], [1], VOCAB, PAD)
    with pytest.raises(ValueError, match=r"no LoRA adapter.*add_lora\(\).*--lora_r > 0"):
        TokenCELoss(base_kl_weight=1.0)(plain, batch)


@pytest.mark.parametrize("weight", [-1.0, float("nan"), "1", True])
@pytest.mark.parametrize("name", ["base_kl_weight", "base_kl_start_weight"])
def test_bad_weights_are_refused(name, weight):
    with pytest.raises(ValueError, match=name):
        TokenCELoss(**{name: weight})


def test_cannot_be_combined_with_self_conditioning():
    with pytest.raises(ValueError, match="base_kl_weight and self_condition_prob"):
        TokenCELoss(base_kl_weight=1.0, self_condition_prob=0.5)
    with pytest.raises(ValueError, match="base_kl_start_weight and self_condition_prob"):
        TokenCELoss(base_kl_start_weight=1.0, self_condition_prob=0.5)


def kl_to_base(base: Denoiser, tuned: Denoiser, batch: dict) -> float:
    """Mean KL(base || tuned) over the answer positions of `batch` with every answer token masked."""
    probe = batch["input_ids"].clone()
    probe[:, 2:] = MASK
    with torch.no_grad():
        tuned_log_probs = tuned(input_ids=probe)[:, 2:].log_softmax(-1)
        base_log_probs = base(input_ids=probe)[:, 2:].log_softmax(-1)
    return float(F.kl_div(tuned_log_probs, base_log_probs, log_target=True, reduction="none").sum(-1).mean())


def kl_after_training(beta: float, steps: int = 20) -> tuple[float, float]:
    """An adapter that moved the model away from its base (random B), trained `steps` Adam steps on TokenCE
    with weight beta on the anchor: the KL to the base before and after."""
    base, tuned = base_and_tuned(seed=2)
    batch = padded_batch([8] * 16, [2] * 16, VOCAB, PAD, seed=2)
    before = kl_to_base(base, tuned, batch)
    loss = TokenCELoss(base_kl_weight=beta)
    optimizer = torch.optim.Adam([p for p in tuned.model.parameters() if p.requires_grad], lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        optimizer.zero_grad()
        loss(tuned, batch, generator=generator).loss.backward()
        optimizer.step()
    return before, kl_to_base(base, tuned, batch)


def test_the_anchor_pulls_a_fine_tune_back_to_its_base():
    start, free = kl_after_training(0.0)
    _, anchored = kl_after_training(20.0)
    assert start > 1e-3 and free > start  # the random adapter moved the model; TokenCE alone moves it further
    assert anchored < 0.5 * start and anchored < 0.3 * free  # a detached KL (no gradient) fails this


def test_a_mixture_that_skips_token_ce_refuses_its_kl_rather_than_dropping_it():
    from jointobj.objectives.mixture import MixtureLoss

    with pytest.raises(ValueError, match="token_ce_weight 0 skips the token_ce term"):
        MixtureLoss(token_ce_weight=0.0, token_ce={"base_kl_start_weight": 100.0})
    MixtureLoss(token_ce_weight=0.5, token_ce={"base_kl_start_weight": 100.0})  # the main job's: fine


def test_an_infinite_weight_is_refused():
    with pytest.raises(ValueError, match="finite number"):
        TokenCELoss(base_kl_start_weight=float("inf"))


def test_both_terms_together_are_the_sum_of_each_alone():
    # Both read their states in one forward of the fine-tune and one of the base; each alone in its own.
    _, tuned = base_and_tuned(seed=7)
    batch = padded_batch([9, 6, 8, 9], [2, 1, 3, 2], VOCAB, PAD, pad_to=9, seed=7)
    batch["input_ids"][3, :2] = batch["input_ids"][0, :2]
    run = lambda **weights: TokenCELoss(**weights)(tuned, batch, generator=torch.Generator().manual_seed(3))  # noqa: E731
    both, plain = run(base_kl_weight=2.0, base_kl_start_weight=5.0), run()
    noised, start = run(base_kl_weight=2.0), run(base_kl_start_weight=5.0)
    torch.testing.assert_close(both.loss, noised.loss + start.loss - plain.loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both.metrics["base_kl"], noised.metrics["base_kl"], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(both.metrics["base_kl_start"], start.metrics["base_kl_start"], atol=1e-6, rtol=1e-5)
