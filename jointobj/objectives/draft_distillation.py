"""Distilling the verifier's law into the draft head (jointobj/model/draft_head.py).

    targets = distillation_targets(denoiser, prompts, answers, order="l2r", cuts=cuts)  # no grad; L + 1 rows
    loss, metrics = draft_loss(head, targets)                                           # KL(p || q), teacher-forced

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

whose minimum, q_j = p_j on every prefix, accepts every draft. A step reads only the diagonal (row k at
o_k) and one proposal row per answer, so the targets hold just those, [b, L, V] each (not every row at
every column, [b, L, L, V]: ~33 GB at V = 126k, L = 32, b = 64): the teacher's L rows are read at their
own column, and the cut's proposal row (`with_proposals`, once the cuts are drawn) is one more forward
row per answer, the same logits the full rows held. [MASK] is excluded from both laws, as
the sampler draws. `metrics["acceptance"]` is the mean of sum_v min(p, q) over the window slots: the
expected acceptance of a single draft at each slot given that the earlier ones were accepted.

The registered objective `draft_distillation` (DraftDistillationLoss) runs this on the Trainer path
(recipes/draft_head.py, DeepSpeed ZeRO-2, checkpointed and resumable): per batch, the answers are the
model's own samples of its sequential law for the batch's prompts (`own_samples`, drawn fresh each
step from the current weights) or the batch's own answers (teacher-forced data), one uniform cut per
answer, and the loss above. The denoiser is frozen unless `train_denoiser` (then its adapter trains
on `added_token_ce_weight` x the per-token CE of the data while the head distils its current law;
the targets never carry a gradient into the denoiser, so the law the head imitates is the model's own).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from jointobj.decoding.layout import AnswerLayout
from jointobj.decoding.registry import build_decoder
from jointobj.decoding.sampler import EXCLUDED_LOGIT
from jointobj.decoding.speculative import verification_order
from jointobj.diffusion.batch import Batch, check_batch, prompt_and_answer_lengths
from jointobj.diffusion.randomness import draw_device
from jointobj.model.draft_head import DraftHead, attach_draft_head, find_draft_head
from jointobj.objectives.base import (
    LOSSES,
    LossOutput,
    Objective,
    build_part,
    check_finite,
    refuse_zero3_on_several_ranks,
)
from jointobj.objectives.token_ce import TokenCELoss
from jointobj.utils.checks import check_whole_number

__all__ = ["ANSWERS", "DistillationTargets", "DraftDistillationLoss", "distillation_targets", "draft_loss",
           "own_samples", "uniform_cuts", "with_proposals"]

ANSWERS = ("samples", "data")  # the model's own sequential samples, or the batch's answers (teacher-forced data)


@dataclass
class DistillationTargets:
    """Per answer, everything the loss reads, in verification-order coordinates: O(b L V), not L times more.

    order_tokens     [b, L] long     the answer's tokens at o_0 .. o_{L-1}
    order_positions  [b, L] long     o itself
    teacher          [b, L, V]       row k's logits ([MASK] excluded) at o_k: the teacher of step k
    cuts             [b] long | None the cut of each answer (None: no proposal yet, `with_proposals` adds one)
    proposal         [b, L, V] | None  row max(cut - 1, 0)'s logits ([MASK] excluded) at o_0 .. o_{L-1}
    """

    order_tokens: torch.Tensor
    order_positions: torch.Tensor
    teacher: torch.Tensor
    cuts: torch.Tensor | None = None
    proposal: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.order_tokens.shape[0]

    def subset(self, index: torch.Tensor) -> "DistillationTargets":
        return DistillationTargets(self.order_tokens[index], self.order_positions[index], self.teacher[index],
                                   None if self.cuts is None else self.cuts[index],
                                   None if self.proposal is None else self.proposal[index])


def _row_logits(denoiser: Any, layout: AnswerLayout, order_tokens: torch.Tensor, perm: torch.Tensor,
                owner: torch.Tensor, shown: torch.Tensor, columns: torch.Tensor, per_forward: int) -> torch.Tensor:
    """Rows showing the first `shown` [r] order steps of answer `owner` [r] (the rest masked) -> their logits at
    answer positions `columns` [r, k], [MASK] excluded: [r, k, V], `per_forward` rows a forward, no grad."""
    mask_id, length = int(denoiser.mask_token_id), perm.shape[1]
    step = torch.arange(length, device=perm.device)  # [L]
    out = []
    for start in range(0, len(owner), per_forward):
        part = slice(start, start + per_forward)
        who = owner[part]  # [c]
        in_order = torch.where(step[None, :] < shown[part, None], order_tokens[who], mask_id)  # [c, L] by order step
        gen = torch.empty_like(in_order).scatter_(1, perm[who], in_order)  # [c, L] by answer position
        logits = layout.answer_logits(denoiser, who, input_ids=layout.compose(gen, who),
                                      columns=columns[part])  # [c, k, V]
        logits[..., mask_id] = EXCLUDED_LOGIT
        out.append(logits)
    return torch.cat(out)


@torch.no_grad()
def distillation_targets(denoiser: Any, prompts: torch.Tensor, answers: torch.Tensor, order: Any = "l2r",
                         generator: torch.Generator | None = None, chunk: int = 256, *,
                         cuts: torch.Tensor | None = None) -> DistillationTargets:
    """prompts [b, P], answers [b, L] -> DistillationTargets: the teacher (L forward rows per answer, each read at
    its own order step's column, about `chunk` rows a forward), and with `cuts` [b] the proposal rows too
    (`with_proposals`). `order` as the speculative decoder takes it (a name or a permutation)."""
    b, length = answers.shape
    layout = AnswerLayout.build(denoiser, prompts, length)
    perm = verification_order(order, b, length, None, generator, layout.device)  # [b, L]
    order_tokens = answers.to(layout.device).gather(1, perm)  # [b, L]
    owner = torch.arange(b, device=layout.device).repeat_interleave(length)  # [b L]: row k of answer i
    shown = torch.arange(length, device=layout.device).repeat(b)  # [b L]: row k shows order steps s < k
    teacher = _row_logits(denoiser, layout, order_tokens, perm, owner, shown, perm.reshape(-1, 1),
                          max(1, chunk // length) * length)  # [b L, 1, V]
    targets = DistillationTargets(order_tokens, perm, teacher.view(b, length, -1))
    return targets if cuts is None else with_proposals(denoiser, prompts, targets, cuts, chunk)


@torch.no_grad()
def with_proposals(denoiser: Any, prompts: torch.Tensor, targets: DistillationTargets, cuts: torch.Tensor,
                   chunk: int = 256) -> DistillationTargets:
    """The targets with each answer's proposal for its cut (`cuts` [b] long, c in [0, L)): row max(c - 1, 0),
    showing order steps s < max(c - 1, 0), at every answer column: one more forward row per answer."""
    b, length = targets.order_tokens.shape
    cuts = cuts.to(targets.order_tokens.device)
    if cuts.shape != (b,) or cuts.dtype != torch.long or bool((cuts < 0).any() | (cuts >= length).any()):
        raise ValueError(f"cuts must be a long tensor of {b} cuts in [0, {length}), one per answer, got "
                         f"{tuple(cuts.shape)} {cuts.dtype}")
    layout = AnswerLayout.build(denoiser, prompts, length)
    proposal = _row_logits(denoiser, layout, targets.order_tokens, targets.order_positions,
                           torch.arange(b, device=cuts.device), (cuts - 1).clamp(min=0), targets.order_positions,
                           max(1, chunk // length))  # [b, L, V]
    return DistillationTargets(targets.order_tokens, targets.order_positions, targets.teacher, cuts, proposal)


def draft_loss(head: Any, targets: DistillationTargets) -> tuple[torch.Tensor, dict[str, Any]]:
    """The head's KL(p || q) over the rest of each answer after its cut (targets.cuts), summed over slots,
    averaged over answers -> (loss, {"kl_per_token", "acceptance"} detached)."""
    if targets.cuts is None or targets.proposal is None:
        raise ValueError("the targets have no proposal rows: compute them with cuts "
                         "(distillation_targets(..., cuts=cuts) or with_proposals(denoiser, prompts, targets, cuts))")
    cuts = targets.cuts
    b, length = targets.order_tokens.shape
    width = length - int(cuts.min())  # the longest window; shorter ones are padded at their end
    slot = torch.arange(width, device=cuts.device)  # [w]
    step = (cuts[:, None] + slot).clamp(max=length - 1)  # [b, w] the order step of each slot
    real = cuts[:, None] + slot < length  # [b, w]
    index = torch.arange(b, device=cuts.device)[:, None]
    teacher = targets.teacher[index, step]  # [b, w, V] row k at o_k
    proposal = targets.proposal[index, step]  # [b, w, V] row max(c - 1, 0) at o_k
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


@torch.no_grad()
def own_samples(denoiser: Any, prompts: torch.Tensor, gen_length: int, order: Any = "l2r",
                generator: torch.Generator | None = None) -> torch.Tensor:
    """prompts [b, P] -> answers [b, L] drawn from the model's own one-token-per-step law in `order` at T = 1
    (with the exact speculative decoder and marginal drafts: the same law, fewer forwards)."""
    decoder = build_decoder("speculative", order=order, temperature=1.0)
    return decoder.sample(denoiser, prompts, gen_length, generator).gen_ids


def uniform_cuts(b: int, length: int, generator: torch.Generator | None, device: torch.device | str) -> torch.Tensor:
    """[b] long: one cut per answer, uniform on 0 .. L-1 (the committed prefix a round starts from), drawn on
    the generator's device (a CPU generator: torch.randint's own stream) and moved to `device`."""
    return torch.randint(0, length, (b,), generator=generator, device=draw_device(generator, device)).to(device)


@contextlib.contextmanager
def _evaluating(module: nn.Module):
    """The module in eval mode inside (the conditionals the decoder verifies with), its own mode after."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


@LOSSES.register("draft_distillation")
class DraftDistillationLoss(Objective):
    """Distil the denoiser's own sequential law into its draft head (module doc), on the Trainer path.

    answers: "samples" (the model's own l2r-law samples for the batch's prompts, drawn each step) or "data"
    (the batch's answers, teacher-forced). order: the verification order the head drafts for (a name or a
    permutation, as the speculative decoder takes it). width, layers, heads, max_positions: a head `prepare`
    attaches when the denoiser has none (defaults 64, 2, 4 and the model's positions); given for a denoiser
    that has one, they must match it. train_denoiser: False (default) freezes every denoiser weight, the
    adapter's included, and trains the head alone; True trains the adapter too, on added_token_ce_weight
    (> 0) x the per-token CE of the data (`token_ce`: a TokenCELoss or a dict of its keyword arguments).
    seed: passed to a token_ce built here.
    """

    def __init__(self, answers: str = "samples", order: str | Sequence[int] = "l2r", *, width: int | None = None,
                 layers: int | None = None, heads: int | None = None, max_positions: int | None = None,
                 train_denoiser: bool = False, added_token_ce_weight: float = 1.0,
                 token_ce: TokenCELoss | Mapping[str, Any] | None = None, seed: int = 0):
        super().__init__()
        if answers not in ANSWERS:
            raise ValueError(f"answers must be one of {', '.join(ANSWERS)} (the model's own samples, or the data's "
                             f"answers teacher-forced), got {answers!r}")
        if isinstance(order, str):
            verification_order(order, 1, 1, None, None, "cpu")  # an unknown name fails now, listing the known ones
        self.answers, self.order = answers, order if isinstance(order, str) else [int(i) for i in order]
        self.head_settings = {name: check_whole_number(name, value, "the default, or the existing head's")
                              for name, value in (("width", width), ("layers", layers), ("heads", heads),
                                                  ("max_positions", max_positions))}
        if not isinstance(train_denoiser, bool):
            raise ValueError(f"train_denoiser must be true or false, got {train_denoiser!r}")
        if isinstance(added_token_ce_weight, bool) or not isinstance(added_token_ce_weight, (int, float)) \
                or not added_token_ce_weight >= 0:
            raise ValueError(f"added_token_ce_weight must be a number >= 0, got {added_token_ce_weight!r}")
        if train_denoiser and added_token_ce_weight == 0:
            raise ValueError("train_denoiser needs added_token_ce_weight > 0: the distillation targets carry no "
                             "gradient into the denoiser (the head imitates the model, never the reverse), so the "
                             "adapter would receive none")
        if token_ce is not None and not train_denoiser:
            raise ValueError("token_ce is the adapter's loss when train_denoiser is true; with the denoiser frozen "
                             "nothing uses it: drop it or set train_denoiser: true")
        self.train_denoiser, self.added_token_ce_weight = train_denoiser, float(added_token_ce_weight)
        self.token_ce = build_part(token_ce, TokenCELoss, "token_ce", seed=seed) if train_denoiser else None

    def extra_repr(self) -> str:
        return (f"answers={self.answers!r}, order={self.order!r}, train_denoiser={self.train_denoiser}, "
                f"added_token_ce_weight={self.added_token_ce_weight}")

    def prepare(self, denoiser) -> None:
        """Attach a draft head when the denoiser has none, and freeze the denoiser unless train_denoiser
        (before the optimizer is built, so it holds exactly the weights that train)."""
        refuse_zero3_on_several_ranks(denoiser, "draft_distillation",
                                      "its sampler's and its target rows' forward counts differ between ranks")
        super().prepare(denoiser)
        head = find_draft_head(denoiser)
        asked = {name: value for name, value in self.head_settings.items() if value is not None}
        if head is None:
            positions = asked.get("max_positions", getattr(denoiser, "max_positions", None))
            if positions is None:
                raise ValueError("the model does not say how many positions it has; pass max_positions (the longest "
                                 "answer the head drafts) in objective_kwargs")
            attach_draft_head(denoiser, max_positions=positions, width=asked.get("width", 64),
                              layers=asked.get("layers", 2), heads=asked.get("heads", 4))
            head = find_draft_head(denoiser)  # through an adapter, the copy it trains (not the module attached)
        else:
            differ = {name: (getattr(head, name), value) for name, value in asked.items()
                      if getattr(head, name) != value}
            if differ:
                listed = ", ".join(f"{name} {have} (asked {value})" for name, (have, value) in differ.items())
                raise ValueError(f"the denoiser already has a draft head with {listed}; drop those objective_kwargs "
                                 "to train it as it is, or start from a model without a head")
        if not self.train_denoiser:
            for parameter in denoiser.parameters():
                parameter.requires_grad_(False)
        for parameter in head.parameters():
            parameter.requires_grad_(True)
        trained_on = {"objective": "draft_distillation", "answers": self.answers, "order": self.order,
                      "train_denoiser": self.train_denoiser}
        for module in denoiser.modules():  # peft's wrapper holds two copies; jointobj.json reads the first
            if isinstance(module, DraftHead):
                module.trained_on = trained_on

    def forward(self, denoiser, batch: Batch, generator: torch.Generator | None = None) -> LossOutput:
        refuse_zero3_on_several_ranks(denoiser, "draft_distillation",
                                      "its sampler's and its target rows' forward counts differ between ranks")
        head = find_draft_head(denoiser)
        if head is None:
            raise ValueError("the denoiser has no draft head; call the objective's prepare(denoiser) first (the "
                             "trainer does) or attach one (jointobj.model.draft_head.attach_draft_head)")
        ids = batch["input_ids"]
        scorable = check_batch(batch)
        lp, la = prompt_and_answer_lengths(batch, scorable)  # [b], [b]
        if int(la.max()) > head.max_positions:
            raise ValueError(f"an answer of {int(la.max())} tokens is longer than the draft head's "
                             f"{head.max_positions} positions; attach a head with max_positions >= the longest answer")
        groups = []  # (rows, prompts, teacher targets) per group of equal prompt and answer lengths
        with _evaluating(denoiser.model):  # the model's conditionals as the decoder sees them, no grad
            for p, a in torch.stack([lp, la], 1).unique(dim=0).tolist():
                rows = ((lp == p) & (la == a)).nonzero().flatten()  # [r]
                prompts = ids[rows, :p]  # [r, P]
                answers = (own_samples(denoiser, prompts, a, self.order, generator) if self.answers == "samples"
                           else ids[rows, p : p + a])  # [r, a]
                targets = distillation_targets(denoiser, prompts, answers, self.order, generator)  # the teacher
                groups.append((rows, prompts, targets))
        loss, kl, accepted, slots = ids.new_zeros((), dtype=torch.float32), 0.0, 0.0, 0
        for rows, prompts, targets in groups:  # the cuts drawn after every group's answers and order, as before
            length = targets.order_tokens.shape[1]
            cuts = uniform_cuts(len(rows), length, generator, ids.device)  # [r]
            with _evaluating(denoiser.model):
                targets = with_proposals(denoiser, prompts, targets, cuts)  # the one proposal row a cut reads
            part, metrics = draft_loss(head, targets)  # averaged over the group's answers
            loss = loss + part * len(rows) / len(ids)
            real = int((length - cuts).sum())  # the group's drafted slots
            kl, accepted, slots = kl + metrics["kl_per_token"] * real, accepted + metrics["acceptance"] * real, \
                slots + real
        metrics = {"kl_per_token": kl / slots, "acceptance": accepted / slots}
        if self.train_denoiser:
            token_ce = self.token_ce(denoiser, batch, generator=generator)
            loss = loss + self.added_token_ce_weight * token_ce.loss
            metrics["token_ce"] = token_ce.loss.detach()
        check_finite(loss, "draft distillation loss", ids)
        return LossOutput(loss, metrics)
