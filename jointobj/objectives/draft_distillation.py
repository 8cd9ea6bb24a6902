"""Distilling the verifier's law into the draft head (jointobj/model/draft_head.py).

    targets = distillation_targets(denoiser, prompts, answers, order="l2r")   # no grad; L rows per answer
    loss, metrics = draft_loss(head, targets, cuts)                           # KL(p || q), teacher-forced

The speculative decoder accepts slot j's draft with probability sum_v min(p_j, q_j) = 1 - TV(p_j, q_j),
p_j the model's own conditional in the verification order given everything before it. The head is
trained to match p_j on the path of an answer: for each answer (the model's own sequential samples,
or data) and order o, row k shows o's first k tokens and masks the rest (L rows, one forward,
no grad: the denoiser is frozen), and

    teacher at step k          p_k = softmax(row k's logits at o_k)
    proposal of a round at c   row max(c - 1, 0)'s logits at o_c, o_{c+1}, ...

the second exactly what the decoder hands the head: the next round's proposal comes from the row
that verified the last committed position, which shows every committed token but that one (the
first round's, and a first round that committed only slot 0, from the bare forward). For a cut c
the head drafts the rest of the answer teacher-forced on the answer's tokens, and the loss is

    sum_{j} KL(p_{c+j} || q_j(. | context, x_{c..c+j-1}))     averaged over answers and cuts,

whose minimum, q_j = p_j on every prefix, accepts every draft. [MASK] is excluded from both laws, as
the sampler draws. `metrics["acceptance"]` is the mean of sum_v min(p, q) over the window slots: the
expected acceptance of a single draft at each slot given that the earlier ones were accepted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from jointobj.decoding.layout import AnswerLayout
from jointobj.decoding.sampler import EXCLUDED_LOGIT
from jointobj.decoding.speculative import verification_order

__all__ = ["DistillationTargets", "distillation_targets", "draft_loss"]


@dataclass
class DistillationTargets:
    """Per answer, everything the loss reads, in verification-order coordinates.

    order_tokens     [b, L] long     the answer's tokens at o_0 .. o_{L-1}
    order_positions  [b, L] long     o itself
    rows             [b, L, L, V]    row k's logits ([MASK] excluded) at o_s: [:, k, s]
    """

    order_tokens: torch.Tensor
    order_positions: torch.Tensor
    rows: torch.Tensor

    def __len__(self) -> int:
        return self.order_tokens.shape[0]

    def subset(self, index: torch.Tensor) -> "DistillationTargets":
        return DistillationTargets(self.order_tokens[index], self.order_positions[index], self.rows[index])


@torch.no_grad()
def distillation_targets(denoiser: Any, prompts: torch.Tensor, answers: torch.Tensor, order: Any = "l2r",
                         generator: torch.Generator | None = None, chunk: int = 256) -> DistillationTargets:
    """prompts [b, P], answers [b, L] -> DistillationTargets (L forward rows per answer, `chunk` rows a forward).
    `order` as the speculative decoder takes it (a name or a permutation)."""
    b, length = answers.shape
    layout = AnswerLayout.build(denoiser, prompts, length)
    mask_id = int(denoiser.mask_token_id)
    perm = verification_order(order, b, length, None, generator, layout.device)  # [b, L]
    order_tokens = answers.to(layout.device).gather(1, perm)  # [b, L]
    step = torch.arange(length, device=layout.device)  # [L]
    shown = step[None, :, None] > step[None, None, :]  # [1, k, s]: row k shows order steps s < k
    rows = []
    for start in range(0, b, max(1, chunk // length)):
        part = slice(start, min(b, start + max(1, chunk // length)))
        tokens, positions = order_tokens[part], perm[part]  # [c, L]
        in_order = torch.where(shown, tokens[:, None, :], mask_id)  # [c, k, s]
        gen = torch.empty_like(in_order).scatter_(2, positions[:, None, :].expand_as(in_order), in_order)  # [c, k, L]
        owner = torch.arange(part.start, part.stop, device=layout.device).repeat_interleave(length)  # [c k]
        columns = positions.repeat_interleave(length, 0)  # [c k, L]: every row's logits at o_0 .. o_{L-1}
        logits = layout.answer_logits(denoiser, owner, input_ids=layout.compose(gen.flatten(0, 1), owner),
                                      columns=columns)  # [c k, L, V]
        logits[..., mask_id] = EXCLUDED_LOGIT
        rows.append(logits.view(-1, length, length, logits.shape[-1]))
    return DistillationTargets(order_tokens, perm, torch.cat(rows))


def draft_loss(head: Any, targets: DistillationTargets, cuts: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
    """The head's KL(p || q) over the rest of each answer after its cut (`cuts` [b] long, c in [0, L)), summed
    over slots, averaged over answers -> (loss, {"kl_per_token", "acceptance"} detached)."""
    b, length = targets.order_tokens.shape
    width = length - int(cuts.min())  # the longest window; shorter ones are padded at their end
    slot = torch.arange(width, device=cuts.device)  # [w]
    step = (cuts[:, None] + slot).clamp(max=length - 1)  # [b, w] the order step of each slot
    real = cuts[:, None] + slot < length  # [b, w]
    index = torch.arange(b, device=cuts.device)[:, None]
    teacher = targets.rows[index, step, step]  # [b, w, V] row k at o_k
    proposal = targets.rows[index, (cuts - 1).clamp(min=0)[:, None], step]  # [b, w, V]
    logits = head.teacher_forced(targets.order_tokens, targets.order_positions, cuts,
                                 targets.order_tokens.gather(1, step), targets.order_positions.gather(1, step),
                                 proposal)  # [b, w, V]
    log_p, log_q = teacher.log_softmax(-1), logits.log_softmax(-1)  # [b, w, V]
    p = log_p.exp()
    kl = (p * (log_p - log_q)).sum(-1)  # [b, w]
    loss = (kl * real).sum() / b
    with torch.no_grad():
        accept = torch.minimum(p, log_q.exp()).sum(-1)  # [b, w]
        metrics = {"kl_per_token": float((kl * real).sum() / real.sum()),
                   "acceptance": float((accept * real).sum() / real.sum())}
    return loss, metrics
