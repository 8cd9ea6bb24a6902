"""A draft tree for the speculative decoder: k branches at every node, the k likeliest paths grown.

    tree = grow_tree(HeadDrafter(head, ...) or MarginalDrafter(q_logits), width=w, branches=k,
                     branching="sample", temperature=T, generator=g)

A node at depth j is a prefix of j drafted window tokens (the root: none). A *row node* is one the
verifier runs a row for: its row shows the committed tokens and the node's prefix and gives the
target p_j at window slot j. Every row node gets k candidate tokens for slot j from the drafter's
conditional q(. | committed, prefix) at that node:

- branching "sample": drawn without replacement from q, in draw order (Gumbel-top-k: the k largest
  of log q + Gumbel noise, by decreasing key, are distributed as k successive draws without
  replacement; Kool et al. 2019, "Stochastic beams and where to find them");
- branching "topk": the k most probable tokens of q (deterministic given the node); T = 0 always
  drafts this way.

Which candidates become the row nodes of depth j + 1 (at most k, a beam; so a window of w slots costs
at most 1 + k (w - 1) rows per round, as many as k independent drafts would without sharing) is chosen
where the verifier is expected to go:

- "topk": the k likeliest paths (sum of the drafter's log q along the path; a deterministic candidate x
  is accepted with probability p(x), close to q(x) for a good drafter: EAGLE-2's reranking);
- "sample": the paths with the fewest steps to a candidate drawn later than first, then the likeliest.
  The first-drawn candidate is accepted with probability sum_x min(p, q), whatever its own q (near 1 for
  a good drafter), so the path of first draws -- the single draft's path -- always keeps its rows
  (coupled to one draft on the same first draws, a tree commits at least as many tokens a round);
  ranking by q alone spends the rows on paths the verifier rarely takes (measured: latin_square_3
  oracle with a trained head, k = 2 fell from 4.4 to 3.3 tokens per step).

Candidates outside the beam are still verified at their node (they need no row of their own); when
one is accepted the round ends there.

Why the law stays exact whatever the shape (jointobj/decoding/speculative.py proves the rule at a
node): a node's candidates are drawn after the node was chosen, with fresh noise, so given
everything drawn before them they are a sample of the node's own draft law; the choice of which
candidates get rows uses their values but only decides where the round may go on, never which
token is committed at the node. Leaving `generator` None draws from torch's default generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from jointobj.decoding.sampler import gumbel_noise

__all__ = ["BRANCHINGS", "DraftTree", "HeadDrafter", "MarginalDrafter", "grow_tree"]

BRANCHINGS = ("sample", "topk")  # how a node's k candidates are drafted


@dataclass
class DraftTree:
    """One round's tree for a samples, beam k, window w (row node (j, r): depth j, beam slot r).

    path    [a, w, k, w] long   the node's tokens at window slots < j (-1 elsewhere)
    exists  [a, w, k] bool      the row node exists
    tokens  [a, w, k, k] long   its candidates for slot j, in the order they are tried
    valid   [a, w, k, k] bool   the candidate exists (the node exists and q gives it mass)
    child   [a, w, k, k] long   the beam slot of the candidate's row node at depth j + 1, -1: none
    q       [a, w, k, V] float64 the node's draft law at T (None at T = 0)
    """

    path: torch.Tensor
    exists: torch.Tensor
    tokens: torch.Tensor
    valid: torch.Tensor
    child: torch.Tensor
    q: torch.Tensor | None


class MarginalDrafter:
    """Every node at depth j drafts from the proposal marginals of slot j ([a, w, V] logits)."""

    def __init__(self, q_logits: torch.Tensor):
        self.q_logits = q_logits

    def root(self, k: int) -> torch.Tensor:
        return self.q_logits[:, 0, None].expand(-1, k, -1)  # [a, k, V]

    def expand(self, parent: torch.Tensor, token: torch.Tensor, depth: int) -> torch.Tensor:
        """parent [a, k] beam slots, token [a, k] the chosen candidates -> [a, k, V] logits of the new nodes."""
        return self.q_logits[:, depth, None].expand(-1, parent.shape[1], -1)


class HeadDrafter:
    """The draft head's conditional at each node: its key/value cache follows the node's path."""

    def __init__(self, head, order_tokens: torch.Tensor, order_positions: torch.Tensor, committed: torch.Tensor,
                 positions: torch.Tensor, q_logits: torch.Tensor):
        self.head = head
        self.logits, self.state = head.prefill(order_tokens, order_positions, committed, positions, q_logits)
        self.a = q_logits.shape[0]

    def root(self, k: int) -> torch.Tensor:
        self.k = k
        self.state = self.state.repeat(k)  # [a k] one copy per beam slot (only slot 0 is the root)
        return self.logits[:, None].expand(-1, k, -1)  # [a, k, V]

    def expand(self, parent: torch.Tensor, token: torch.Tensor, depth: int) -> torch.Tensor:
        flat = (torch.arange(self.a, device=parent.device)[:, None] * self.k + parent).flatten()  # [a k]
        self.state = self.state.select(flat)  # each new node's parent's cache
        logits = self.head.step(self.state, depth, token.flatten())  # [a k, V]; state now holds the new nodes
        return logits.view(self.a, self.k, -1)


def _log_q(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """[..., V] -> [..., V] float64 log softmax(logits / T) (T = 0: log softmax(logits), for ranking only)."""
    return (logits.double() / (temperature or 1.0)).log_softmax(-1)


def grow_tree(drafter, width: int, branches: int, branching: str, temperature: float,
              generator: torch.Generator | None) -> DraftTree:
    """The beam tree of `width` slots with `branches` candidates per row node (module doc)."""
    if branching not in BRANCHINGS:
        raise ValueError(f"unknown branching {branching!r}; use one of {', '.join(BRANCHINGS)}")
    k, w = branches, width
    logits = drafter.root(k)  # [a, k, V]
    a, _, vocab = logits.shape
    device = logits.device
    path = torch.full((a, w, k, w), -1, dtype=torch.long, device=device)
    exists = torch.zeros(a, w, k, dtype=torch.bool, device=device)
    exists[:, 0, 0] = True
    tokens = torch.zeros(a, w, k, k, dtype=torch.long, device=device)
    valid = torch.zeros(a, w, k, k, dtype=torch.bool, device=device)
    child = torch.full((a, w, k, k), -1, dtype=torch.long, device=device)
    q = None if temperature == 0 else torch.zeros(a, w, k, vocab, dtype=torch.float64, device=device)
    score = torch.zeros(a, k, dtype=torch.float64, device=device)  # log q of each row node's path
    deviations = torch.zeros(a, k, dtype=torch.long, device=device)  # its steps to a candidate drawn later than first
    sample = branching == "sample" and temperature > 0
    for j in range(w):
        log_q = _log_q(logits, temperature)  # [a, k, V]
        if q is not None:
            q[:, j] = log_q.exp()
        keys = log_q + gumbel_noise(log_q.shape, generator, device) if sample else log_q
        count = min(k, vocab)
        drafted = keys.topk(count, dim=-1).indices  # [a, k, count] in the order tried
        tokens[:, j, :, :count] = drafted
        picked = log_q.gather(2, drafted)  # [a, k, count]
        valid[:, j, :, :count] = exists[:, j, :, None] & (picked.exp() > 0)
        if j == w - 1:
            break
        ok = valid[:, j, :, :count].flatten(1)  # [a, k count]
        paths = torch.where(ok, (score[:, :, None] + picked).flatten(1), -torch.inf)  # [a, k count]
        rank = torch.arange(count, device=device)
        moved = (deviations[:, :, None] + (rank > 0)).flatten(1)  # [a, k count] rank > 0 steps on the path
        moved = torch.where(ok, moved, w + 1)  # no candidate: last
        order = paths.argsort(dim=1, descending=True, stable=True)  # likeliest first
        if sample:  # fewest deviations from the first-drawn path first, then likeliest
            order = order.gather(1, moved.gather(1, order).argsort(dim=1, stable=True))
        best = order[:, :k]  # [a, k] the paths continued one level down
        values = paths.gather(1, best)
        chosen = values > -torch.inf  # [a, k]
        parent = best // count  # [a, k] the node each path extends
        beam = torch.arange(chosen.shape[1], device=device).expand(a, -1)
        slots = torch.full((a, k * count), -1, dtype=torch.long, device=device)
        slots.scatter_(1, best, torch.where(chosen, beam, -1))
        child[:, j, :, :count] = slots.view(a, k, count)
        exists[:, j + 1] = chosen
        new_token = drafted.flatten(1).gather(1, best)  # [a, k]
        path[:, j + 1] = path[:, j].gather(1, parent[:, :, None].expand(-1, -1, w))
        path[:, j + 1, :, j] = new_token
        score, deviations = values, moved.gather(1, best)
        logits = drafter.expand(parent, new_token, j + 1)  # [a, k, V] (unchosen slots: junk, never verified)
    return DraftTree(path, exists, tokens, valid, child, q)
