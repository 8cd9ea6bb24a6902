"""Lossless parallel decoding: draft from the parallel marginals, verify against the conditionals.

    from jointobj.decoding import build_decoder
    decoder = build_decoder("speculative", order="l2r", draft_length=None, drafts=1, temperature=1.0)
    out = decoder.sample(denoiser, prompt_ids, gen_length=8, generator=torch.Generator().manual_seed(0))
    out.tokens_per_step, out.rows_per_sample, out.log_prob   # measured rate, compute, exact log p_o(answer)

The target law is the model's own autoregressive distribution in a verification order o (a
permutation of the answer positions): p_o(x) = prod_k p(x_{o_k} | x_{o_<k} visible, rest masked),
each factor softmax(logits / T) with [MASK] excluded, as the one-token-per-step decoder draws
it. Every sample this decoder returns is an exact draw from p_o, yet several tokens commit
per sequential step.

A round, with c tokens of the order committed:

1. *draft*: the next w positions o_c .. o_{c+w-1} (w = `draft_length`, cut at the end of the
   current block; None = the rest of the block) get tokens drawn independently from proposal
   marginals q (softmax(logits / T) of an earlier forward, below);
2. *verify*: one batched forward of w rows, row j showing the committed tokens and the drafts
   before j (the rest masked), gives the target conditional p_j at o_{c+j};
3. *accept* drafts in order while u < p_j(x_j) / q_j(x_j); at the first rejection draw the
   token from norm(max(0, p_j - q_j)) and end the round. A rejected or a completed window
   commits p_j's token and everything accepted before it;
4. the proposal of the next round is the marginals of the row that verified the last committed
   position (it shows every committed token but that last one), so a round is one sequential step.

Any proposal keeps the law exact as long as the ratio uses the q the draft was drawn from and q
is fixed before the draft (standard speculative sampling); the first proposal comes from one
forward of the bare answer, counted as a step. In the first round that forward already shows
row 0's context, so row 0 is not run again (p_0 = q_0, and the first draft is always accepted).

Multi-draft (`drafts` = N): N independent drafts of the window, all drawn from the same q, are
verified together (N rows per window position, at most 1 + N (w - 1) rows, still one step:
drafts that agree on the tokens before slot j share that slot's row, which runs once). At each
position the drafts whose tokens agree with everything accepted so far are candidates, tried in
draft order by recursive rejection: accept candidate k with probability min(1, r_k(x_k) / q(x_k)),
r_1 = p_j; on rejection r_{k+1} = norm(max(0, r_k - q));
when every candidate is rejected the token is drawn from the last residual. Candidates are
i.i.d. draws from q given the history, so each rejection step is ordinary speculative sampling
on the residual and the committed token has law p_j exactly (multi-candidate speculative
sampling, Yang et al. 2024). A rejected token has zero residual mass afterwards, so no draft
survives a residual draw and the round ends there.

Learned drafts (`draft="head"`): the denoiser's draft head (jointobj/model/draft_head.py, an add-on)
drafts the window token by token from the committed tokens and the proposal logits above, each slot
conditioned on the head's own earlier drafts: q_j = q(. | context, x_<j) instead of the marginal. The
rule is unchanged, with that q_j: while the drafts before j are accepted they are the committed
history, so q_j and p_j condition on the same prefix and the committed token has law p_j exactly.
With N drafts each is an independent draw from the head; the drafts alive at j share the accepted
prefix, hence the same q_j, and their slot-j tokens are i.i.d. from it given that prefix, so the
recursive rejection above holds as it is (a sampled tree of the head's branches, prefix rows
shared). In the first round slot 0's target is the first marginal itself (p_0 is that row), no
longer equal to the head's q_0, so it is tested like any other slot.

Draft trees (`branches` = k; with draft="head" or the marginals): instead of N independent windows, a
tree whose every row node has k candidate tokens for its slot (jointobj/decoding/draft_tree.py builds
it: k rows per depth at most, 1 + k (w - 1) rows a round, all run in the round's one forward, each row
showing the node's path). The walk starts at the root; at the node reached, with target r_1 = p_j (the
node's row) and the drafter's law q at that node, the candidates x_1 .. x_k are tried in order:
accept x_i with probability min(1, r_i(x_i) / q_i(x_i)); on rejection r_{i+1} = norm(max(0, r_i - q_i))
(`residual`); when all are rejected the token is drawn from r_{k+1}. The accepted candidate's row node,
if it has one, is where the walk goes on; otherwise the round ends. What each step preserves: if x_i
is drawn from q_i given everything before it, the step is ordinary speculative sampling with target r_i
and proposal q_i, so the token it ends with (x_i, or a draw of the rest of the recursion) has law r_i;
by induction from the last step, the node commits a token of law r_1 = p_j exactly. The proposals q_i:

- branching "sample" (candidates drawn without replacement from q): q_1 = q and q_{i+1} = q_i with x_i
  removed and renormalised (`without`), the law x_{i+1} is drawn from given x_1 .. x_i (SpecInfer,
  Miao et al. 2024; Sequoia, Chen et al. 2024, sampling without replacement). The removal is consistent:
  x_i was rejected, so r_i(x_i) < q_i(x_i) and r_{i+1}(x_i) = 0 -- no rejected token keeps mass in any
  later target. Forgetting the removal (testing x_{i+1} against q_i) or the residual (testing it against
  p_j again) breaks the law (tests/decoding/test_speculative_tree.py shows both);
- branching "topk" (the k likeliest tokens of q, deterministic given the node): x_i is a draw from the
  point mass q_i = delta_{x_i}, so the rule becomes: accept x_i with probability r_i(x_i), else
  r_{i+1} = norm(max(0, r_i - delta_{x_i})) = r_i with x_i removed and renormalised -- the committed
  token is x_i with probability p_j(x_i) and otherwise a draw of p_j outside the candidates, law p_j.
  The head's q only chooses the candidates; testing them with p / q, as if sampled, breaks the law.

A node's candidates are drawn after the node was put in the tree, with fresh noise, and which of them
get rows only decides where the walk may continue, so the argument holds at every node reached and the
answer's law is the order-o law, as for a single draft. `branches` = 1 with "sample" is the single draft.
At T = 0 the candidates are the drafter's top k and a node accepts iff argmax p_j is among them (the
greedy ids, as below). Rows are counted per row node; the tree replaces `drafts` (set one of the two).

T = 0: drafts are argmax q and a draft is accepted iff it is argmax p_j, else argmax p_j is
committed: the same ids as the one-token-per-step greedy decoder in the same order.

Orders: "l2r", "r2l", "random" (a fresh uniform order per sample; the law is then p_o given the
order drawn), or an explicit permutation of range(gen_length) (the position verified first,
second, ...). `block_length` B: semi-autoregressive blocks of B positions, verified block after
block, each block in the order o restricted to it; drafts never cross a block boundary.

Cost (SampleOutput): `steps` counts every sequential forward including the first marginal one,
`row_steps` the forwards each sample took part in, `rows_per_sample` every row of every
forward, and `tokens_per_step` the measured rate. `log_prob` is log p_o(answer) at T, summed
from the p_j rows of the verification itself (T = 0: 0). `tokens_per_step` passed to the
factory does not set anything: the rate is measured, the window is `draft_length`.
"""

from __future__ import annotations

from typing import Sequence

import torch

from jointobj.decoding.draft_tree import BRANCHINGS, HeadDrafter, MarginalDrafter, grow_tree
from jointobj.decoding.layout import AnswerLayout
from jointobj.decoding.registry import DECODERS
from jointobj.decoding.sampler import (
    EXCLUDED_LOGIT,
    CommitLedger,
    SampleOutput,
    check_temperature,
    eval_mode,
    finish_sample,
    gumbel_noise,
    layout_request,
    resolve_eos,
    uniform,
)
from jointobj.diffusion.orders import ORDERS
from jointobj.model.draft_head import find_draft_head
from jointobj.utils.checks import check_whole_number

__all__ = ["SpeculativeDecoder", "verification_order"]

_NAMED_ORDERS = ("l2r", "r2l", "random")
DRAFTS = ("marginals", "head")  # where the drafts come from


def verification_order(order: str | Sequence[int], b: int, length: int, block_length: int | None,
                       generator: torch.Generator | None, device: torch.device | str) -> torch.Tensor:
    """[b, L] long: the answer position verified at each step of each sample (blocks first, then
    `order` inside each block). `order` is a name in ("l2r", "r2l", "random") or a permutation."""
    if isinstance(order, str):
        if order not in _NAMED_ORDERS:
            raise ValueError(f"unknown verification order {order!r}; use one of {', '.join(_NAMED_ORDERS)} "
                             "or an explicit permutation of range(gen_length)")
        rank = ORDERS.get(order)(torch.ones(b, length, dtype=torch.bool, device=device), generator)  # [b, L]
    else:
        explicit = [int(i) for i in order]
        if sorted(explicit) != list(range(length)):
            raise ValueError(f"order {explicit} is not a permutation of range({length}) (gen_length {length}); "
                             "list every answer position once, the one verified first first")
        rank = torch.empty(length, dtype=torch.long, device=device)
        rank[torch.tensor(explicit, device=device)] = torch.arange(length, device=device)
        rank = rank.expand(b, length)  # [b, L]
    block_id = torch.arange(length, device=device) // (block_length or length)  # [L]
    return (block_id * length + rank).argsort(dim=1)  # [b, L] position at each verification step


def _tempered_log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """[..., V] logits ([MASK] already excluded) -> [..., V] float64 log softmax(logits / T)."""
    return (logits.double() / temperature).log_softmax(-1)


class SpeculativeDecoder:
    """Draft-and-verify decoder with the exact law of the order-o autoregressive sampler (module doc).

    order          "l2r" | "r2l" | "random" | a permutation of range(gen_length)
    draft_length   w >= 1 drafted positions per round, or None for the rest of the block
    drafts         N >= 1 independent drafts verified together (multi-draft recursive rejection)
    temperature    T >= 0 of the target (and of the proposal); 0 = greedy
    block_length   semi-autoregressive blocks (None: one block)
    draft          "marginals" (independent drafts from the proposal) | "head" (the denoiser's draft head)
    branches       k >= 1: verify a tree with k candidates per node instead of independent drafts (None: none)
    branching      "sample" (the tree's candidates drawn without replacement) | "topk" (its k likeliest)
    """

    name = "speculative"

    def __init__(self, tokens_per_step: int | None = None, *, order: str | Sequence[int] = "l2r",
                 draft_length: int | None = None, drafts: int = 1, temperature: float = 1.0,
                 block_length: int | None = None, draft: str = "marginals", branches: int | None = None,
                 branching: str = "sample"):
        check_whole_number("tokens_per_step", tokens_per_step, "a measured rate")
        check_whole_number("draft_length", draft_length, "the rest of the block")
        check_whole_number("drafts", drafts)
        check_whole_number("block_length", block_length, "one block")
        check_temperature(temperature)
        if isinstance(order, str) and order not in _NAMED_ORDERS:
            raise ValueError(f"unknown verification order {order!r}; use one of {', '.join(_NAMED_ORDERS)} "
                             "or an explicit permutation of range(gen_length)")
        if draft not in DRAFTS:
            raise ValueError(f"unknown draft {draft!r}; use one of {', '.join(DRAFTS)}")
        check_whole_number("branches", branches, "independent drafts, no tree")
        if branching not in BRANCHINGS:
            raise ValueError(f"unknown branching {branching!r}; use one of {', '.join(BRANCHINGS)}")
        if branches is not None and drafts != 1:
            raise ValueError(f"drafts={drafts} and branches={branches} both set: a tree (branches) replaces "
                             "independent drafts; set one of them")
        self.branches = None if branches is None else int(branches)
        self.branching = branching
        self.draft = draft
        self.order = order if isinstance(order, str) else tuple(int(i) for i in order)
        self.draft_length = None if draft_length is None else int(draft_length)
        self.drafts = int(drafts)
        self.temperature = float(temperature)
        self.block_length = None if block_length is None else int(block_length)

    def __repr__(self) -> str:
        return (f"SpeculativeDecoder(order={self.order!r}, draft_length={self.draft_length}, drafts={self.drafts}, "
                f"temperature={self.temperature}, block_length={self.block_length}, draft={self.draft!r}, "
                f"branches={self.branches}, branching={self.branching!r})")

    # ------------------------------------------------------------ the rejection rule (tests inject broken ones)

    def acceptance(self, target: torch.Tensor, proposal: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        """[a, V] target r, [a, V] proposal q, [a] drafted token -> [a] r(x) / q(x) (accept while u < it)."""
        picked = token[:, None]
        return target.gather(1, picked).squeeze(1) / proposal.gather(1, picked).squeeze(1)

    def residual(self, target: torch.Tensor, proposal: torch.Tensor) -> torch.Tensor:
        """[a, V] -> [a, V] norm(max(0, r - q)): the law to draw from after rejecting a draft of q. Where r <= q
        everywhere (r = q up to rounding; a rejection then had probability ~0) r itself is kept."""
        excess = (target - proposal).clamp(min=0)  # [a, V]
        mass = excess.sum(-1, keepdim=True)  # [a, 1]
        return torch.where(mass > 0, excess / mass.clamp(min=torch.finfo(excess.dtype).tiny), target)

    def _verify_position(self, log_p: torch.Tensor, q: torch.Tensor | None, candidates: torch.Tensor,
                         alive: torch.Tensor, u: torch.Tensor | None,
                         generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """One position of a window, for a rows.

        log_p [a, V] target log p_j, q [a, V] proposal, candidates [a, N] drafted tokens, alive [a, N] drafts that
        agree with everything accepted, u [a, N] uniforms (q and u None at T = 0, log_p then the logits)
        -> (token [a], accepted [a] bool: some draft was)."""
        if u is None:  # T = 0: log_p holds the logits; the argmax decides
            token = log_p.argmax(-1)  # [a]
            return token, (alive & (candidates == token[:, None])).any(1)
        target = log_p.exp()  # [a, V]
        token = torch.full_like(candidates[:, 0], -1)  # [a], -1 until a candidate is accepted
        for k in range(candidates.shape[1]):
            tried = alive[:, k] & (token < 0)  # [a]
            accept = tried & (u[:, k] < self.acceptance(target, q, candidates[:, k]))  # [a]
            token = torch.where(accept, candidates[:, k], token)
            rejected = tried & ~accept
            target = torch.where(rejected[:, None], self.residual(target, q), target)  # [a, V]
        accepted = token >= 0
        fallback = (target.log() + gumbel_noise(target.shape, generator, target.device)).argmax(-1)  # [a] ~ target
        return torch.where(accepted, token, fallback), accepted

    def without(self, proposal: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        """[a, V] q, [a] a rejected candidate -> [a, V] q with that token removed, renormalised: the law of the next
        candidate drawn without replacement."""
        kept = proposal.scatter(1, token[:, None], 0.0)  # [a, V]
        mass = kept.sum(-1, keepdim=True)
        return kept / mass.clamp(min=torch.finfo(kept.dtype).tiny)

    def _verify_node(self, log_p: torch.Tensor, q: torch.Tensor | None, candidates: torch.Tensor,
                     valid: torch.Tensor, u: torch.Tensor | None,
                     generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """One tree node for a rows: log_p [a, V] target (the logits at T = 0), q [a, V] the node's draft law (None
        at T = 0), candidates [a, k] in the order tried, valid [a, k], u [a, k] -> (token [a], index [a] of the
        accepted candidate, -1: none, the token then drawn from the last residual). The tree docs of the module
        (branches) say which law each step keeps."""
        if u is None:  # T = 0: accepted iff a candidate is argmax p
            token = log_p.argmax(-1)  # [a]
            hit = valid & (candidates == token[:, None])  # [a, k]
            return token, torch.where(hit.any(1), hit.long().argmax(1), -1)
        target = log_p.exp()  # [a, V] r_1 = p
        point = self.branching == "topk"
        proposal = q
        token = torch.full_like(candidates[:, 0], -1)
        index = torch.full_like(candidates[:, 0], -1)
        for i in range(candidates.shape[1]):
            candidate = candidates[:, i]
            if point:  # the deterministic candidate's proposal is a point mass on it
                proposal = torch.zeros_like(target).scatter_(1, candidate[:, None], 1.0)
            tried = valid[:, i] & (token < 0)  # [a]
            accept = tried & (u[:, i] < self.acceptance(target, proposal, candidate))
            token = torch.where(accept, candidate, token)
            index = torch.where(accept, i, index)
            rejected = tried & ~accept
            target = torch.where(rejected[:, None], self.residual(target, proposal), target)
            if not point:
                proposal = torch.where(rejected[:, None], self.without(proposal, candidate), proposal)
        fallback = (target.log() + gumbel_noise(target.shape, generator, target.device)).argmax(-1)  # [a] ~ target
        return torch.where(index >= 0, token, fallback), index

    # ------------------------------------------------------------ learned drafts

    @staticmethod
    def _draft_with_head(head, gen: torch.Tensor, perm: torch.Tensor, committed: torch.Tensor,
                         positions: torch.Tensor, q_logits: torch.Tensor, n: int, temperature: float,
                         generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The head drafts N windows per row, token by token.

        gen [a, L] answers, perm [a, L] orders, committed [a] c, positions [a, w] the window, q_logits [a, w, V]
        the proposal -> (drafted [a, N, w], q [a, N, w, V] float64: each draft's conditional at each slot, the law
        its token was drawn from; None at T = 0, where the drafts are the head's greedy window, N times)."""
        a, w, vocab = q_logits.shape
        draws = 1 if temperature == 0 else n
        logits, state = head.prefill(gen.gather(1, perm), perm, committed, positions, q_logits)  # [a, V]
        if draws > 1:
            state, logits = state.repeat(draws), logits.repeat_interleave(draws, 0)  # [a N, V]
        drafted = torch.empty(a * draws, w, dtype=torch.long, device=gen.device)
        q = None if temperature == 0 else torch.empty(a * draws, w, vocab, dtype=torch.float64, device=gen.device)
        for j in range(w):
            if j:
                logits = head.step(state, j, drafted[:, j - 1])  # [a N, V]
            if temperature == 0:
                drafted[:, j] = logits.argmax(-1)
                continue
            log_q = _tempered_log_probs(logits, temperature)  # [a N, V]
            q[:, j] = log_q.exp()
            drafted[:, j] = (log_q + gumbel_noise(log_q.shape, generator, gen.device)).argmax(-1)
        if temperature == 0:
            return drafted[:, None].expand(a, n, w), None
        return drafted.view(a, n, w), q.view(a, n, w, vocab)

    # ------------------------------------------------------------ the loop

    @staticmethod
    def _first_with_same_prefix(drafted: torch.Tensor) -> torch.Tensor:
        """drafted [a, N, w] -> [a, N, w] long: for (draft n, slot j), the first draft whose tokens before j equal
        draft n's (n itself when none earlier does); identical rows are run once."""
        agree = drafted[:, :, None, :] == drafted[:, None, :, :]  # [a, N, N, w]
        before = torch.cat([torch.ones_like(agree[..., :1]), agree[..., :-1]], -1).cumprod(-1)  # [a, N, N, w]
        return before.long().argmax(2)  # [a, N, w] first n' (n' = n always agrees)

    @staticmethod
    def _answer_logits(denoiser, layout: AnswerLayout, answers: torch.Tensor, owner: torch.Tensor | None,
                       columns: torch.Tensor, mask_index: torch.Tensor) -> torch.Tensor:
        """answers [R, L] of samples `owner` [R] (None: every sample once) -> [R, k, V] logits at the answer
        positions `columns` [R, k], [MASK] excluded."""
        logits = layout.answer_logits(denoiser, owner, input_ids=layout.compose(answers, owner),
                                      columns=columns)  # [R, k, V]
        return logits.index_fill_(-1, mask_index, EXCLUDED_LOGIT)  # a fresh tensor: gathered at `columns`

    @staticmethod
    def _ahead(perm: torch.Tensor, start: torch.Tensor, span: int) -> torch.Tensor:
        """perm [R, L] orders, start [R] -> [R, span] the positions perm[start .. start + span - 1] (clamped)."""
        steps = (start[:, None] + torch.arange(span, device=perm.device)).clamp(max=perm.shape[1] - 1)  # [R, span]
        return perm.gather(1, steps)

    def _tree_round(self, denoiser, layout: AnswerLayout, ids: torch.Tensor, live: torch.Tensor, perm: torch.Tensor,
                    c: torch.Tensor, positions: torch.Tensor, q_logits: torch.Tensor, width: torch.Tensor,
                    first: torch.Tensor, head, generator: torch.Generator | None, mask_index: torch.Tensor,
                    span: int, log_prob: torch.Tensor, commit_step: torch.Tensor | None, row_steps: torch.Tensor):
        """One round with a draft tree (jointobj/decoding/draft_tree.py) for the a `live` samples: draft it, run one
        row per row node in one forward, walk it from the root. -> (answers [a, L], committed [a], supplier [a] the
        row giving the next proposal (-1: none ran), verified [R, w + 1, V] or None, R rows run)."""
        a, w = positions.shape
        k, temperature, device = self.branches, self.temperature, ids.device
        length = ids.shape[1]
        if head is not None:
            drafter = HeadDrafter(head, ids[live].gather(1, perm[live]), perm[live], c, positions, q_logits)
        else:
            drafter = MarginalDrafter(q_logits)
        tree = grow_tree(drafter, w, k, self.branching, temperature, generator)
        u = None if temperature == 0 else uniform((a, w, k), generator, device)  # one node per depth is visited

        # rows: row node (j, r) shows its path's tokens at slots < j; the root of the first round reuses q_0
        depth = torch.arange(w, device=device)
        need = tree.exists & (depth[None, :] < width[:, None])[:, :, None]  # [a, w, k]
        need[:, 0, 0] &= ~first[live]
        row_of = torch.where(need.flatten(), need.flatten().long().cumsum(0) - 1, -1).view(a, w, k)
        total_rows = int(need.sum())
        verified = None
        if total_rows:
            x = ids[live][:, None, None, :].expand(a, w, k, length).clone()  # [a, w, k, L]
            for s in range(w - 1):  # slot s's token is on the path of every node deeper than s
                at = positions[:, s].view(a, 1, 1, 1).expand(a, w - s - 1, k, 1)
                x[:, s + 1 :].scatter_(3, at, tree.path[:, s + 1 :, :, s, None].clamp(min=0))
            owner = live[:, None, None].expand(a, w, k)[need]  # [R]
            first_slot = (c[:, None] + depth)[:, :, None].expand(a, w, k)[need]  # [R] c + j
            verified = self._answer_logits(denoiser, layout, x[need], owner,
                                           self._ahead(perm[owner], first_slot, span), mask_index)  # [R, w + 1, V]
            row_steps[live] += need.flatten(1).any(1).long()

        # walk: at each depth the node reached verifies its candidates (recursive rejection, _verify_node)
        rows_index = torch.arange(a, device=device)
        node = torch.zeros(a, dtype=torch.long, device=device)  # beam slot of the node reached
        running = torch.ones(a, dtype=torch.bool, device=device)
        supplier = torch.full((a,), -1, dtype=torch.long, device=device)
        committed = torch.zeros(a, dtype=torch.long, device=device)
        gen = ids[live]
        for j in range(w):
            act = running & (j < width)
            if not bool(act.any()):
                break
            row = row_of[rows_index, j, node]  # [a], -1: p_j = q_j (first round's root)
            p_logits = q_logits[:, j]
            if total_rows:
                p_logits = torch.where((row >= 0)[:, None], verified[row.clamp(min=0), 0], p_logits)
            log_p = p_logits if temperature == 0 else _tempered_log_probs(p_logits, temperature)  # [a, V]
            token, index = self._verify_node(log_p, None if tree.q is None else tree.q[rows_index, j, node],
                                             tree.tokens[rows_index, j, node], tree.valid[rows_index, j, node],
                                             None if u is None else u[:, j], generator)
            who, where = rows_index[act], positions[act, j]
            gen[who, where] = token[act]
            if temperature > 0:
                log_prob[live[who]] += log_p[who, token[act]]
            if commit_step is not None:
                commit_step[live[who], where] = row_steps[live[who]] - 1
            supplier = torch.where(act, row, supplier)
            committed += act.long()
            following = tree.child[rows_index, j, node, index.clamp(min=0)]  # [a] the accepted candidate's row node
            running = act & (index >= 0) & (following >= 0)
            node = following.clamp(min=0)
        return gen, committed, supplier, verified, total_rows

    @torch.no_grad()
    def sample(self, denoiser, prompt_ids: torch.Tensor, gen_length: int, generator: torch.Generator | None = None,
               *, return_trace: bool = False, prompt_attention_mask: torch.Tensor | None = None,
               eos_token_id: int | None = None) -> SampleOutput:
        """Generate `gen_length` tokens after each prompt (prompt forms and EOS as jointobj/decoding/sampler.py
        says: prompts of different lengths, answers trimmed at EOS in `answer_ids`; decoding ignores EOS)."""
        layout = layout_request(denoiser, prompt_ids, gen_length, prompt_attention_mask)
        eos = resolve_eos(denoiser, eos_token_id)
        mask_id, device = int(denoiser.mask_token_id), layout.device
        b, length = layout.batch_size, layout.gen_length
        ids = layout.start(mask_id)  # [b, L] the answers
        mask_index = torch.tensor([mask_id], device=device)
        perm = verification_order(self.order, b, length, self.block_length, generator, device)  # [b, L]
        block = self.block_length or length
        window = self.draft_length or length
        temperature = self.temperature
        head = None
        if self.draft == "head":
            head = find_draft_head(denoiser)
            if head is None:
                raise ValueError("draft='head' needs a draft head on the denoiser: attach one "
                                 "(jointobj.model.draft_head.attach_draft_head), train it "
                                 "(jointobj.training.draft_head), or load a directory saved with one")

        log_prob = torch.zeros(b, dtype=torch.float64, device=device)
        row_steps = torch.ones(b, dtype=torch.long, device=device)
        commit_step = torch.full((b, length), -1, dtype=torch.long, device=device) if return_trace else None
        done = torch.zeros(b, dtype=torch.long, device=device)  # c: positions of the order committed
        first = torch.ones(b, dtype=torch.bool, device=device)  # the proposal shows exactly the committed tokens

        # Logits are kept only for the positions a round can read, relative to the order: proposal[i, s] holds
        # the marginal at perm[i, c + s] (s < w; one more after the first forward), and a verification row of
        # slot j its conditional at perm[c + j] (t = 0) and the next round's proposal (t = 1 .. w).
        span = min(window, block) + 1  # a window never crosses a block
        with eval_mode(denoiser):
            start = torch.zeros(b, dtype=torch.long, device=device)
            proposal = self._answer_logits(denoiser, layout, ids, None, self._ahead(perm, start, span),
                                           mask_index)  # [b, w + 1, V] the first marginals
            steps, rows = 1, b
            while bool((done < length).any()):
                live = (done < length).nonzero().squeeze(1)  # [a]
                a = len(live)
                c = done[live]  # [a]
                block_end = torch.clamp((c // block + 1) * block, max=length)  # [a]
                width = torch.clamp(block_end - c, max=window)  # [a] w_b
                w = int(width.max())
                n = self.drafts
                slot = torch.arange(w, device=device)  # [w]
                in_window = slot < width[:, None]  # [a, w]
                positions = self._ahead(perm[live], c, w)  # [a, w]
                vocab = proposal.shape[-1]
                q_logits = proposal[live, :w]  # [a, w, V] the marginals at positions

                if self.branches is not None:
                    gen, committed, supplier, verified, total_rows = self._tree_round(
                        denoiser, layout, ids, live, perm, c, positions, q_logits, width, first, head, generator,
                        mask_index, span, log_prob, commit_step, row_steps)
                    if total_rows:
                        steps, rows = steps + 1, rows + total_rows
                else:
                    # draft N windows: from q (the marginals, shared by every draft: q [a, 1, w, V]) or from the head
                    # (each draft its own conditionals: q [a, N, w, V]); q is None at T = 0
                    if head is not None:
                        drafted, q = self._draft_with_head(head, ids[live], perm[live], c, positions, q_logits, n,
                                                           temperature, generator)
                    elif temperature == 0:
                        drafted = q_logits.argmax(-1)[:, None].expand(a, n, w)  # [a, N, w]
                        q = None
                    else:
                        log_q = _tempered_log_probs(q_logits, temperature)  # [a, w, V]
                        q = log_q.exp()[:, None]  # [a, 1, w, V]
                        noise = gumbel_noise((a, n, w, vocab), generator, device)  # [a, N, w, V]
                        drafted = (log_q[:, None] + noise).argmax(-1)  # [a, N, w]
                    if temperature > 0:
                        u = uniform((a, n, w), generator, device)  # [a, N, w]

                    # rows: (draft n, slot j) shows the drafts of n before j. Drafts that agree before j share
                    # one row (the first of them runs it; slot 0 is always shared); skipped when first.
                    canonical = self._first_with_same_prefix(drafted)  # [a, N, w]
                    need = in_window[:, None, :] & (canonical == torch.arange(n, device=device)[:, None])  # [a, N, w]
                    need[:, 0, 0] &= ~first[live]
                    row_of = torch.where(need.flatten(), need.flatten().long().cumsum(0) - 1, -1).view(a, n, w)
                    row_of = row_of.gather(1, canonical)  # [a, N, w] the row each (draft, slot) reads
                    total_rows = int(need.sum())
                    if total_rows:
                        x = ids[live][:, None, None, :].expand(a, n, w, length).clone()  # [a, N, w, L]
                        for s in range(w - 1):  # slot s's draft is visible to rows j > s
                            at = positions[:, s].view(a, 1, 1, 1).expand(a, n, w - s - 1, 1)
                            token_s = drafted[:, :, s].view(a, n, 1, 1).expand(a, n, w - s - 1, 1)
                            x[:, :, s + 1 :].scatter_(3, at, token_s)
                        owner = live[:, None, None].expand(a, n, w)[need]  # [R] the sample of each row
                        first_slot = (c[:, None] + slot)[:, None, :].expand(a, n, w)[need]  # [R] c + j
                        verified = self._answer_logits(denoiser, layout, x[need], owner,
                                                       self._ahead(perm[owner], first_slot, span),
                                                       mask_index)  # [R, w + 1, V]
                        took_part = need.flatten(1).any(1)  # [a]
                        row_steps[live] += took_part.long()
                        steps, rows = steps + 1, rows + total_rows

                    # accept in order
                    rows_index = torch.arange(a, device=device)
                    alive = torch.ones(a, n, dtype=torch.bool, device=device)  # [a, N]
                    running = torch.ones(a, dtype=torch.bool, device=device)  # the round goes on
                    supplier = torch.full((a,), -1, dtype=torch.long, device=device)  # row giving the next proposal
                    committed = torch.zeros(a, dtype=torch.long, device=device)
                    gen = ids[live]  # [a, L]
                    for j in range(w):
                        act = running & (j < width)  # [a]
                        if not bool(act.any()):
                            break
                        lead = alive.long().argmax(1)  # [a] first draft still alive
                        row = row_of[rows_index, lead, j]  # [a], -1: p_j = q_j (first round, slot 0)
                        p_logits = q_logits[:, j]  # [a, V]
                        if total_rows:
                            picked = verified[row.clamp(min=0), 0]  # [a, V] the conditional at positions[:, j]
                            p_logits = torch.where((row >= 0)[:, None], picked, p_logits)
                        log_p = p_logits if temperature == 0 else _tempered_log_probs(p_logits, temperature)  # [a, V]
                        # the alive drafts share the accepted prefix, so the lead's q_j is every candidate's
                        q_j = None if q is None else q[rows_index, lead.clamp(max=q.shape[1] - 1), j]  # [a, V]
                        token, accepted = self._verify_position(log_p, q_j, drafted[:, :, j], alive,
                                                                None if q is None else u[:, :, j], generator)
                        who, where = rows_index[act], positions[act, j]  # the rows that commit position j now
                        gen[who, where] = token[act]
                        if temperature > 0:
                            log_prob[live[who]] += log_p[who, token[act]]
                        if commit_step is not None:
                            commit_step[live[who], where] = row_steps[live[who]] - 1
                        supplier = torch.where(act, row, supplier)
                        committed += act.long()
                        alive &= drafted[:, :, j] == token[:, None]
                        running = act & accepted
                ids[live] = gen
                done[live] = c + committed
                first[live] = False
                # The next proposal, relative to the new c: the supplier row's t = 1 .. w, or, where slot 0 of the
                # first round committed alone (no row ran for it), the first marginals moved on by one.
                fresh = supplier >= 0  # [a]
                if bool((~fresh).any()):
                    stay = live[~fresh]
                    proposal[stay, : span - 1] = proposal[stay, 1:].clone()
                if bool(fresh.any()):
                    proposal[live[fresh], : span - 1] = verified[supplier[fresh], 1:]
                verified = None  # freed before the next round's forward
        return finish_sample(layout, ids, CommitLedger(log_prob, row_steps, commit_step), steps, rows, eos)


@DECODERS.register("speculative")
def speculative_decoder(tokens_per_step: int | None = None, **options) -> SpeculativeDecoder:
    """SpeculativeDecoder: exact samples of the order-o autoregressive law, several tokens per step."""
    return SpeculativeDecoder(tokens_per_step, **options)


speculative_decoder.option_names = {"order", "draft_length", "drafts", "temperature", "block_length", "draft",
                                    "branches", "branching"}
