"""distillation_targets / with_proposals hold O(b L V): the teacher diagonal and one proposal row per answer.

The reference is the old layout, built naively (tests/draft_reference.py): every one of an answer's L
rows (row k shows its first k order steps) read at every answer column, [b, L, L, V], and the old loss
that indexed it (row k at o_k for the teacher, row max(c - 1, 0) at the window's columns for the proposal).
The new targets and loss must give the same values on the same answers, order and cuts, on a tiny ModernBERT.
"""

import pytest
import torch

from jointobj import Denoiser
from jointobj.model.draft_head import attach_draft_head, find_draft_head
from jointobj.model.tiny import tiny_masked_lm
from jointobj.objectives.draft_distillation import distillation_targets, draft_loss, with_proposals
from jointobj.toysets.builtin import toy_tokenizer

from draft_reference import full_rows, old_loss

LENGTH = 6


def _denoiser() -> Denoiser:
    denoiser = Denoiser(tiny_masked_lm("modernbert", vocab_size=len(toy_tokenizer()), max_positions=16, seed=0),
                        tokenizer=toy_tokenizer()).eval()
    torch.manual_seed(0)
    attach_draft_head(denoiser, max_positions=16, width=16, layers=1, heads=2)
    with torch.no_grad():  # a head far from the marginals, so the loss depends on every input it reads
        find_draft_head(denoiser).out.weight.normal_(0, 1, generator=torch.Generator().manual_seed(1))
    return denoiser


@pytest.mark.parametrize("order", ["l2r", "random", (2, 0, 5, 3, 1, 4)])
def test_the_loss_and_the_rows_it_reads_equal_thefull_rows(order):
    # Fails if the teacher is read at another row or column, or the proposal from another row (row c
    # instead of c - 1, or the bare row for every cut), or if the order's random draw moves.
    denoiser = _denoiser()
    head = find_draft_head(denoiser)
    data = torch.Generator().manual_seed(7)
    prompts = torch.randint(5, denoiser.vocab_size - 1, (12, 2), generator=data)
    answers = torch.randint(5, denoiser.vocab_size - 1, (12, LENGTH), generator=data)
    cuts = torch.tensor([0, 1, 2, 3, 4, 5, 5, 3, 1, 0, 2, 4])  # every cut, the bare row's two included
    order_tokens, perm, rows = full_rows(denoiser, prompts, answers, order, torch.Generator().manual_seed(3))
    targets = distillation_targets(denoiser, prompts, answers, order, torch.Generator().manual_seed(3), chunk=16,
                                   cuts=cuts)
    assert torch.equal(targets.order_positions, perm) and torch.equal(targets.order_tokens, order_tokens)
    step = torch.arange(LENGTH)
    torch.testing.assert_close(targets.teacher, rows[:, step, step], atol=1e-5, rtol=0)
    torch.testing.assert_close(targets.proposal, rows[torch.arange(12), (cuts - 1).clamp(min=0)], atol=1e-5, rtol=0)
    loss, metrics = draft_loss(head, targets)
    reference, reference_metrics = old_loss(head, order_tokens, perm, rows, cuts)
    torch.testing.assert_close(loss, reference, atol=1e-5, rtol=1e-6)
    assert metrics == pytest.approx(reference_metrics, abs=1e-6)
    # the teacher alone, then the proposals added: the same targets
    later = with_proposals(denoiser, prompts, distillation_targets(denoiser, prompts, answers, order,
                                                                   torch.Generator().manual_seed(3)), cuts)
    torch.testing.assert_close(draft_loss(head, later)[0], loss, atol=1e-6, rtol=0)


def test_the_targets_hold_two_logits_per_answer_slot_not_one_per_row_and_column():
    # Fails if the targets keep every row at every column ([b, L, L, V]) or any other L-fold copy.
    denoiser = _denoiser()
    b, length, vocab = 5, 12, denoiser.vocab_size
    prompts = torch.full((b, 1), 5)
    answers = torch.randint(5, vocab - 1, (b, length), generator=torch.Generator().manual_seed(0))
    targets = distillation_targets(denoiser, prompts, answers, cuts=torch.arange(b))
    assert targets.teacher.shape == targets.proposal.shape == (b, length, vocab)
    held = sum(t.numel() for t in vars(targets).values() if isinstance(t, torch.Tensor))
    assert held <= 2 * b * length * vocab + 3 * b * length, held


def test_draft_loss_without_proposals_or_bad_cuts_is_a_clear_error():
    denoiser = _denoiser()
    prompts, answers = torch.full((2, 1), 5), torch.full((2, 3), 6)
    with pytest.raises(ValueError, match="no proposal rows"):
        draft_loss(find_draft_head(denoiser), distillation_targets(denoiser, prompts, answers))
    with pytest.raises(ValueError, match="cuts must be"):
        distillation_targets(denoiser, prompts, answers, cuts=torch.tensor([0, 3]))
