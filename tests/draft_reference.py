"""The draft head's distillation targets the old way, as a naive reference: every one of an answer's L rows
(row k shows its first k order steps, the rest masked) read at every answer column, [b, L, L, V], and the loss
that indexed them (row k at o_k the teacher, row max(c - 1, 0) at the window's columns the proposal)."""

import torch

from jointobj.decoding.layout import AnswerLayout
from jointobj.decoding.sampler import EXCLUDED_LOGIT
from jointobj.decoding.speculative import verification_order


@torch.no_grad()
def full_rows(denoiser, prompts, answers, order, generator):
    """The old targets: (order tokens [b, L], order [b, L], rows [b, L, L, V]: row k at o_s is [:, k, s])."""
    b, length = answers.shape
    layout = AnswerLayout.build(denoiser, prompts, length)
    perm = verification_order(order, b, length, None, generator, "cpu")
    order_tokens = answers.gather(1, perm)
    rows = torch.empty(b, length, length, denoiser.vocab_size)
    for k in range(length):  # one row at a time: the naive way
        in_order = torch.where(torch.arange(length) < k, order_tokens, denoiser.mask_token_id)
        gen = torch.empty_like(in_order).scatter_(1, perm, in_order)
        logits = layout.answer_logits(denoiser, input_ids=layout.compose(gen))  # [b, L, V] by answer position
        logits[..., denoiser.mask_token_id] = EXCLUDED_LOGIT
        rows[:, k] = logits.gather(1, perm[..., None].expand_as(logits))  # by order step
    return order_tokens, perm, rows


def old_loss(head, order_tokens, perm, rows, cuts):
    """The old draft_loss on the full rows: (loss, {"kl_per_token", "acceptance"})."""
    b, length = order_tokens.shape
    slot = torch.arange(length - int(cuts.min()))
    step = (cuts[:, None] + slot).clamp(max=length - 1)
    real = cuts[:, None] + slot < length
    index = torch.arange(b)[:, None]
    teacher = rows[index, step, step]
    proposal = rows[index, (cuts - 1).clamp(min=0)[:, None], step]
    logits = head.teacher_forced(order_tokens, perm, cuts, order_tokens.gather(1, step), perm.gather(1, step),
                                 proposal)
    log_p, log_q = teacher.log_softmax(-1), logits.log_softmax(-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    accept = torch.minimum(log_p.exp(), log_q.exp()).sum(-1).detach()
    return (kl * real).sum() / b, {"kl_per_token": float((kl.detach() * real).sum() / real.sum()),
                                   "acceptance": float((accept * real).sum() / real.sum())}
