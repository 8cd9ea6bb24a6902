"""The learned draft head: a tiny causal transformer that drafts a speculative window jointly.

    from jointobj.model.draft_head import attach_draft_head
    head = attach_draft_head(denoiser, width=64, layers=2)   # before or after add_lora: saved with the adapter
    decoder = build_decoder("speculative", draft="head")     # jointobj/decoding/speculative.py drafts with it

The speculative decoder verifies a window of w positions in a verification order o; the law it
checks at slot j is the model's own conditional p(x_{o_{c+j}} | everything before it in o). The
marginals of one earlier forward ignore the window's other drafts, which caps the rate. This
head reads, for one round,

- the committed answer tokens, in the order they were committed (the context), and
- the proposal logits at each window slot (the verifier's forward of the previous round: the
  previous pass's distributions, as SPOT reads them; no hidden states, so it also drafts for the
  exact oracle, which has none),

and drafts the window token by token: slot j's logits are the proposal logits at slot j plus a
correction computed causally from the context and the drafts of slots < j. The last layer starts
at zero, so a fresh head drafts exactly the marginals (the marginal-draft decoder's law).

Sequence layout (one row per sample): index t carries the answer position placed at t, the token
and position placed at t - 1 (so row t never sees its own token), and, in the window, the proposal
probabilities of its slot. The context is left-padded to a common length C, so window slot j sits
at index C + j in every row: `prefill` runs the context and slot 0 in parallel, `step` runs one
slot with a key/value cache (drafting costs one position per drafted token), and
`teacher_forced` runs a whole window in parallel for training. The three agree (tests).

It is an add-on (jointobj/model/add_ons.py): `draft_head.safetensors` and its settings (vocabulary,
positions, width, layers, heads) are saved beside the model or its adapter and read back by
`Denoiser.from_pretrained`. On a model without add-on support (the oracle) attach it with
`attach_draft_head(oracle, ...)`: it becomes the module's `draft_head` attribute.

Cost: `flops_per_round` counts the multiply-adds of one round (prefill + steps) with
torch.utils.flop_counter, for comparison with one denoiser forward.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from jointobj.model.add_ons import ADD_ONS, AddOn, put_on_model, trained_add_on

__all__ = ["DRAFT_HEAD", "DraftHead", "DraftState", "attach_draft_head", "find_draft_head"]

DRAFT_HEAD = "draft_head"  # attribute on the bare model, and its name in LoraConfig.modules_to_save


class _Block(nn.Module):
    """Pre-norm causal self-attention + MLP (2x) over [a, n, d], with an optional key/value cache."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def forward(self, x: torch.Tensor, allowed: torch.Tensor,
                cache: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, tuple]:
        """x [a, n, d] new positions, allowed [a, n, m + n] bool (query may read key), cache (k, v) [a, h, m, dh]
        of the m earlier positions -> (x [a, n, d], the cache with these n appended)."""
        a, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(a, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if cache is not None:  # [a, h, m + n, dh]
            k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None])  # [a, h, n, dh]
        x = x + self.proj(attended.transpose(1, 2).reshape(a, n, d))
        return x + self.mlp(self.norm2(x)), (k, v)


class DraftState:
    """One round's drafting state for a rows: the caches, the key validity, the window's inputs."""

    def __init__(self, caches: list, valid: torch.Tensor, window_positions: torch.Tensor,
                 marginal_logits: torch.Tensor, previous_position: torch.Tensor):
        self.caches = caches  # per layer (k, v) [a, h, t, dh]
        self.valid = valid  # [a, t] keys that are real (not left padding)
        self.window_positions = window_positions  # [a, w]
        self.marginal_logits = marginal_logits  # [a, w, V]
        self.previous_position = previous_position  # [a] the answer position at the last index run

    def repeat(self, n: int) -> "DraftState":
        """The state for n drafts per row: [a, ...] -> [a * n, ...], row-major (row i's drafts together)."""
        return self.select(torch.arange(self.valid.shape[0], device=self.valid.device).repeat_interleave(n))

    def select(self, rows: torch.Tensor) -> "DraftState":
        """The state of the given rows ([r] long, repeats allowed): [a, ...] -> [r, ...] (a draft tree's nodes
        follow their parents' caches this way)."""
        return DraftState([(k[rows], v[rows]) for k, v in self.caches], self.valid[rows], self.window_positions[rows],
                          self.marginal_logits[rows], self.previous_position[rows])


@ADD_ONS.register(DRAFT_HEAD)
class DraftHead(AddOn):
    """Drafts window slot j from the context, the proposal at j and the drafts of slots < j (module doc).

    vocab_size      V of the denoiser's logits
    max_positions   answer positions it can place (the longest answer)
    width, layers, heads   the transformer (width divisible by heads)
    """

    def __init__(self, vocab_size: int, max_positions: int, width: int = 64, layers: int = 2, heads: int = 4,
                 trained_on: dict[str, Any] | None = None):
        super().__init__()
        if min(vocab_size, max_positions, width, layers, heads) < 1 or width % heads:
            raise ValueError(f"vocab_size, max_positions, width, layers, heads must be >= 1 and width divisible by "
                             f"heads, got {vocab_size}, {max_positions}, {width}, {layers}, {heads}")
        self.vocab_size, self.max_positions = int(vocab_size), int(max_positions)
        self.width, self.layers, self.heads = int(width), int(layers), int(heads)
        self.trained_on = trained_on  # what it distilled: {toysets, order, samples, steps}, once trained
        self.position = nn.Embedding(max_positions, width)  # where index t places its token
        self.previous_position = nn.Embedding(max_positions + 1, width)  # where t - 1 placed (max_positions: none)
        self.previous_token = nn.Embedding(vocab_size + 1, width)  # what t - 1 placed (vocab_size: none)
        self.marginal = nn.Linear(vocab_size, width)  # the proposal probabilities of a window slot
        self.blocks = nn.ModuleList(_Block(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, vocab_size)
        nn.init.zeros_(self.out.weight)  # a fresh head drafts the marginals themselves
        nn.init.zeros_(self.out.bias)

    def settings(self) -> dict[str, Any]:
        return {"vocab_size": self.vocab_size, "max_positions": self.max_positions, "width": self.width,
                "layers": self.layers, "heads": self.heads, "trained_on": self.trained_on}

    @classmethod
    def attach(cls, denoiser: Any, settings: dict[str, Any]) -> "DraftHead":
        return attach_draft_head(denoiser, **settings)

    # ------------------------------------------------------------ inputs

    def _inputs(self, positions: torch.Tensor, previous_tokens: torch.Tensor, previous_positions: torch.Tensor,
                marginal_logits: torch.Tensor | None) -> torch.Tensor:
        """[a, n] positions, [a, n] previous tokens (-1: none), [a, n] previous positions (-1: none),
        [a, n, V] proposal logits or None (context) -> [a, n, d]."""
        none_token, none_position = self.vocab_size, self.max_positions
        x = (self.position(positions.clamp(min=0))
             + self.previous_token(torch.where(previous_tokens < 0, none_token, previous_tokens))
             + self.previous_position(torch.where(previous_positions < 0, none_position, previous_positions)))
        if marginal_logits is not None:
            weight = self.marginal.weight
            x = x + self.marginal(marginal_logits.to(weight.dtype).softmax(-1))
        return x

    def _run(self, x: torch.Tensor, allowed: torch.Tensor, caches: list | None) -> tuple[torch.Tensor, list]:
        new_caches = []
        for layer, block in enumerate(self.blocks):
            x, cache = block(x, allowed, None if caches is None else caches[layer])
            new_caches.append(cache)
        return x, new_caches

    def _logits(self, hidden: torch.Tensor, marginal_logits: torch.Tensor) -> torch.Tensor:
        """[a, n, d], [a, n, V] -> [a, n, V] float32: the proposal logits plus the learned correction."""
        return marginal_logits.float() + self.out(self.norm(hidden)).float()

    @staticmethod
    def _context_layout(context_tokens: torch.Tensor, context_positions: torch.Tensor, committed: torch.Tensor):
        """Left-pad each row's first `committed` [a] order entries ([a, L] tokens and positions) to
        C = max committed -> (tokens [a, C], positions [a, C], valid [a, C])."""
        a = context_tokens.shape[0]
        width = int(committed.max()) if a else 0
        index = torch.arange(width, device=committed.device)[None, :] - (width - committed)[:, None]  # [a, C]
        valid = index >= 0
        safe = index.clamp(min=0)
        tokens = torch.where(valid, context_tokens.gather(1, safe), -1) if width else context_tokens[:, :0]
        positions = torch.where(valid, context_positions.gather(1, safe), -1) if width else context_positions[:, :0]
        return tokens, positions, valid

    @staticmethod
    def _allowed(valid_keys: torch.Tensor, queries: int) -> torch.Tensor:
        """valid [a, m + n] keys, the last n of them the queries -> [a, n, m + n] bool: causal, real keys, and
        every query reads itself (a padded query then has one key, never none)."""
        total = valid_keys.shape[1]
        query_index = torch.arange(total - queries, total, device=valid_keys.device)  # [n]
        key_index = torch.arange(total, device=valid_keys.device)  # [m + n]
        causal = key_index[None, :] <= query_index[:, None]  # [n, m + n]
        return (causal[None] & valid_keys[:, None, :]) | (key_index[None, :] == query_index[:, None])[None]

    # ------------------------------------------------------------ drafting, one slot at a time

    def prefill(self, order_tokens: torch.Tensor, order_positions: torch.Tensor, committed: torch.Tensor,
                window_positions: torch.Tensor, marginal_logits: torch.Tensor) -> tuple[torch.Tensor, DraftState]:
        """Run the context and slot 0.

        order_tokens [a, L] the answer tokens in verification order (read below `committed`),
        order_positions [a, L] the answer position of each order step, committed [a] c,
        window_positions [a, w], marginal_logits [a, w, V] the proposal at each slot
        -> (slot 0's logits [a, V], the state for `step`)."""
        tokens, positions, valid = self._context_layout(order_tokens, order_positions, committed)  # [a, C]
        a, width = tokens.shape
        none = torch.full((a, 1), -1, dtype=torch.long, device=tokens.device)
        previous_tokens = torch.cat([none, tokens], 1)  # [a, C + 1] what index t - 1 placed
        previous_positions = torch.cat([none, positions], 1)
        context = self._inputs(positions, previous_tokens[:, :width], previous_positions[:, :width], None)  # [a, C, d]
        slot0 = self._inputs(window_positions[:, :1], previous_tokens[:, width:], previous_positions[:, width:],
                             marginal_logits[:, :1])  # [a, 1, d]
        x = torch.cat([context, slot0], 1)  # [a, C + 1, d]
        valid = torch.cat([valid, torch.ones(a, 1, dtype=torch.bool, device=valid.device)], 1)  # [a, C + 1]
        hidden, caches = self._run(x, self._allowed(valid, width + 1), None)
        state = DraftState(caches, valid, window_positions, marginal_logits, window_positions[:, 0])
        return self._logits(hidden[:, -1:], marginal_logits[:, :1])[:, 0], state

    def step(self, state: DraftState, slot: int, drafted: torch.Tensor) -> torch.Tensor:
        """Slot `slot` (>= 1) given the token drafted at slot - 1 ([a] long) -> its logits [a, V]; updates state."""
        position = state.window_positions[:, slot : slot + 1]  # [a, 1]
        x = self._inputs(position, drafted[:, None], state.previous_position[:, None],
                         state.marginal_logits[:, slot : slot + 1])  # [a, 1, d]
        state.valid = torch.cat([state.valid, torch.ones_like(state.valid[:, :1])], 1)
        hidden, state.caches = self._run(x, self._allowed(state.valid, 1), state.caches)
        state.previous_position = position[:, 0]
        return self._logits(hidden, state.marginal_logits[:, slot : slot + 1])[:, 0]

    # ------------------------------------------------------------ training, a whole window at once

    def teacher_forced(self, order_tokens: torch.Tensor, order_positions: torch.Tensor, committed: torch.Tensor,
                       window_tokens: torch.Tensor, window_positions: torch.Tensor,
                       marginal_logits: torch.Tensor) -> torch.Tensor:
        """As prefill + step over every slot, with the window's tokens given ([a, w]): -> [a, w, V] logits."""
        tokens, positions, valid = self._context_layout(order_tokens, order_positions, committed)  # [a, C]
        a, width = tokens.shape
        w = window_tokens.shape[1]
        none = torch.full((a, 1), -1, dtype=torch.long, device=tokens.device)
        all_tokens = torch.cat([none, tokens, window_tokens], 1)  # [a, 1 + C + w]
        all_positions = torch.cat([none, positions, window_positions], 1)
        context = self._inputs(positions, all_tokens[:, :width], all_positions[:, :width], None)  # [a, C, d]
        window = self._inputs(window_positions, all_tokens[:, width : width + w],
                              all_positions[:, width : width + w], marginal_logits)  # [a, w, d]
        valid = torch.cat([valid, torch.ones(a, w, dtype=torch.bool, device=valid.device)], 1)  # [a, C + w]
        hidden, _ = self._run(torch.cat([context, window], 1), self._allowed(valid, width + w), None)
        return self._logits(hidden[:, width:], marginal_logits)


# ---------------------------------------------------------------- finding and attaching


def find_draft_head(model: nn.Module) -> DraftHead | None:
    """The draft head of a (possibly wrapped) model or denoiser, or None; through a PeftModel, the copy the
    adapter trains and saves (its methods are called, not its forward)."""
    return trained_add_on(model, DRAFT_HEAD)


def attach_draft_head(denoiser: Any, vocab_size: int | None = None, max_positions: int = 64, width: int = 64,
                      layers: int = 2, heads: int = 4, trained_on: dict[str, Any] | None = None) -> DraftHead:
    """Put a fresh DraftHead on the denoiser: on a Denoiser's bare model (trained and saved with its adapter,
    jointobj/model/add_ons.py), or as the `draft_head` attribute of any other module (the oracle).
    `vocab_size` defaults to the denoiser's logits' (from its config, else `denoiser.vocab_size`)."""
    if find_draft_head(denoiser) is not None:
        raise ValueError("the model already has a draft head; one model carries one head")
    if vocab_size is None:
        vocab_size = getattr(getattr(denoiser, "config", None), "vocab_size", None) or getattr(denoiser, "vocab_size",
                                                                                                None)
    if not isinstance(vocab_size, int):
        raise ValueError("could not read the denoiser's vocabulary size; pass vocab_size= (the logits' last dim)")
    device = getattr(denoiser, "device", torch.device("cpu"))
    head = DraftHead(vocab_size, max_positions, width, layers, heads, trained_on).to(device)
    if hasattr(denoiser, "has_adapter"):  # a Denoiser: the add-on route
        return put_on_model(denoiser, DRAFT_HEAD, head)
    setattr(denoiser, DRAFT_HEAD, head)
    return head
