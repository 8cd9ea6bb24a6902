"""OracleDenoiser: the exact denoiser of one or several toy sets, by enumeration.

    from jointobj.toysets.builtin import load_toyset
    from jointobj.toysets.oracle import OracleDenoiser
    oracle = OracleDenoiser(load_toyset("likes_tennis"), load_toyset("cities"))
    logits = oracle(input_ids=ids, attention_mask=mask)   # [b, l, V] float32

It has the Denoiser calling convention, so any decoder can run on it; what the decoder
reaches with the oracle is the best any model could do with that decoder (e.g. one fully
parallel step on likes_tennis: 25% valid). A trained model's gap to the oracle is a
training gap; the oracle's gap to 100% is the decoder's marginal trap.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from jointobj.toysets.builtin import ToySet
from jointobj.toysets.combined import load_toysets

__all__ = ["IMPOSSIBLE_LOGIT", "OracleDenoiser"]

# Logit of a token with probability 0. Finite, so that softmax stays defined and p * log p
# is 0 rather than NaN; exp(-1e4) underflows to exactly 0 in float32.
IMPOSSIBLE_LOGIT = -1e4
_CHUNK_ELEMENTS = 1 << 22  # bound on rows * support (* answer_len when gathering) per chunk
_SMALL_SUPPORT = 32  # supports up to this size are gathered for all rows at once
_REMEMBERED_VISIBLE = 2  # large supports: marginals of contexts showing this few answer tokens are kept


class OracleDenoiser(nn.Module):
    """Exact `log p(x_i | prompt, visible answer tokens)` for rows of one or several toy sets.

    Each row is `prompt + answer` of the set named by its first token (the tag), right-padded
    to the batch length. Output logits `[b, l, V]` float32:

    - answer positions holding `[MASK]`: the log marginal of the conditional support given
      the visible answer tokens (impossible tokens get IMPOSSIBLE_LOGIT);
    - visible positions (prompt and committed answer tokens): all mass on their own token;
    - positions past prompt + answer (padding): zeros.

    **Inconsistent contexts.** A parallel decoder can commit tokens that no supported answer
    matches (e.g. "i likes [MASK]"). The oracle then conditions on the supported answers with
    the fewest mismatches against the visible tokens, weighted by their probabilities: the
    limit of seeing the visible tokens through a noisy channel whose error rate goes to 0.
    When the context is consistent (zero mismatches possible) this is exact conditioning.

    An unknown tag, a prompt the set does not contain, or a row shorter than its set is a
    ValueError naming the row. Toy sets may also be given by name.
    """

    def __init__(self, *toysets: ToySet | str):
        super().__init__()
        if not toysets:
            raise ValueError("OracleDenoiser needs at least one toy set, e.g. OracleDenoiser(load_toyset('cities'))")
        sets = load_toysets(toysets)  # on one vocabulary (jointobj.toysets.combined)
        self.tokenizer = sets[0].tokenizer
        self.vocab_size = len(self.tokenizer)
        self.mask_token_id = self.tokenizer.mask_token_id
        if self.mask_token_id is None:
            raise ValueError("the toy sets' tokenizer has no mask token; set tokenizer.mask_token = '[MASK]'")
        self.pad_token_id = self.tokenizer.pad_token_id
        self.toysets: dict[int | None, ToySet] = {}
        for toyset in sets:
            tag = toyset.tag_id
            if tag is None and len(sets) > 1:
                raise ValueError(f"toy set {toyset.name!r} has no tag (no prompt, or prompts that do not share a "
                                 "first token), so the oracle cannot tell its rows apart; give it a tag or use it "
                                 "alone")
            if tag in self.toysets:
                raise ValueError(f"toy sets {self.toysets[tag].name!r} and {toyset.name!r} share the tag "
                                 f"{self.tokenizer.convert_ids_to_tokens(tag)!r}; each set needs its own")
            self.toysets[tag] = toyset
        # caches keyed by id(toyset): the sets are held in self.toysets, so ids stay valid
        self._onehots: dict[tuple, Any] = {}  # per-prompt support one-hots and answer sets
        self._vocabs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # per-set answer tokens
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)  # lets .to(device) / .device work

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, *, positions: torch.Tensor | None = None,
                **unused) -> torch.Tensor:
        """[b, l] ids (and optional [b, l] attention mask) -> [b, l, V] float32 logits; with
        `positions` ([b, l] bool) the [t, V] logits of those positions, as Denoiser.forward."""
        if positions is not None:
            return self(input_ids, attention_mask, inputs_embeds)[positions]  # [t, V]
        if inputs_embeds is not None or input_ids is None:
            raise ValueError("the oracle reads token ids; pass input_ids (soft inputs need a trained model)")
        device = input_ids.device
        ids = input_ids.cpu().long()  # [b, l]
        b, l = ids.shape
        real = torch.full((b,), l) if attention_mask is None else attention_mask.cpu().bool().sum(1)  # [b]
        logits = torch.zeros(b, l, self.vocab_size)  # [b, l, V]
        tags = ids[:, 0] if l > 0 else torch.full((b,), -1)
        claimed = torch.zeros(b, dtype=torch.bool)
        for tag, toyset in self.toysets.items():
            rows = torch.arange(b) if tag is None else (tags == tag).nonzero().flatten()  # [r]
            if len(rows) == 0:
                continue
            claimed[rows] = True
            short = rows[real[rows] < toyset.length]
            if len(short) or l < toyset.length:
                row = int(short[0]) if len(short) else int(rows[0])
                raise ValueError(f"row {row} is a {toyset.name!r} row but has {int(real[row])} real tokens; the set "
                                 f"needs {toyset.length} (prompt {toyset.prompt_length} + answer "
                                 f"{toyset.answer_length})")
            logits[rows, : toyset.length] = self._set_logits(toyset, ids[rows, : toyset.length], rows.tolist())
        if not claimed.all():
            row = int((~claimed).nonzero()[0])
            token = self.tokenizer.convert_ids_to_tokens(int(tags[row])) if l else "(empty row)"
            known = ", ".join(f"{t.name} ({self.tokenizer.convert_ids_to_tokens(tag)})"
                              for tag, t in self.toysets.items())
            raise ValueError(f"row {row} starts with {token!r}, which is no toy set's tag; this oracle knows {known}")
        return logits.to(device)

    def _set_logits(self, toyset: ToySet, ids: torch.Tensor, row_names: list[int]) -> torch.Tensor:
        """[r, L] rows of one set -> [r, L, V] float32 logits."""
        lp = toyset.prompt_length
        prompt_index = toyset.prompt_index(ids[:, :lp], row_names=row_names)  # [r]
        visible_answer = ids[:, lp:]  # [r, la]
        masked = visible_answer == self.mask_token_id  # [r, la]
        logits = torch.full((*ids.shape, self.vocab_size), IMPOSSIBLE_LOGIT)  # [r, L, V]
        logits.scatter_(2, ids[..., None].clamp(0, self.vocab_size - 1), 0.0)  # visible: one-hot
        if masked.any():
            rows = masked.any(1).nonzero().flatten()  # only rows with something to predict
            tokens, probs = self._local_marginals(toyset, prompt_index[rows], visible_answer[rows], ~masked[rows])
            log_probs = torch.where(probs > 0, probs.log(), IMPOSSIBLE_LOGIT)  # [m, la, U]
            answer_logits = torch.full((len(rows), toyset.answer_length, self.vocab_size), IMPOSSIBLE_LOGIT)
            answer_logits[..., tokens] = log_probs  # [m, la, V]
            where = masked[rows]  # [m, la]
            logits[rows, lp:] = torch.where(where[..., None], answer_logits, logits[rows, lp:])
        return logits

    def marginals(self, toyset: ToySet, prompt_index: torch.Tensor, answer_ids: torch.Tensor,
                  visible: torch.Tensor) -> torch.Tensor:
        """Per-position marginals of p(answer | prompt, visible tokens), fewest-mismatch rule.

        prompt_index [r] long, answer_ids [r, la] long, visible [r, la] bool -> [r, la, V] float32.
        """
        tokens, local = self._local_marginals(toyset, prompt_index, answer_ids, visible)  # [U], [r, la, U]
        out = torch.zeros(*local.shape[:2], self.vocab_size)  # [r, la, V]
        out[..., tokens] = local
        return out

    def _local_marginals(self, toyset: ToySet, prompt_index: torch.Tensor, answer_ids: torch.Tensor,
                         visible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Marginals over the set's own answer tokens only: (tokens [U], probs [r, la, U] float32).

        Small supports are done for all rows at once by gathering them; large ones prompt by
        prompt with two matmuls against a cached one-hot of the support.
        """
        tokens, to_local = self._answer_vocab(toyset)  # [U], [V]
        local_ids = to_local[answer_ids.clamp(0, self.vocab_size - 1)]  # [r, la]; U = not an answer token
        counts = toyset.offsets.diff()  # [P]
        if int(counts[prompt_index].max()) <= _SMALL_SUPPORT:
            flat_local = to_local[toyset.flat_answers]  # [T, la]
            probs = gathered_marginals(flat_local, toyset.flat_probs, toyset.offsets, len(tokens),
                                       prompt_index, local_ids, visible)  # [r, la, U]
            return tokens, probs.float()
        local = torch.empty(len(prompt_index), toyset.answer_length, len(tokens))  # [r, la, U]
        unique, inverse = prompt_index.unique(return_inverse=True)
        for k, p in enumerate(unique.tolist()):
            rows = (inverse == k).nonzero().flatten()  # [g]
            onehot = self._support_onehot(toyset, p, to_local, len(tokens))  # [S, la * U]
            support, postings = self._support_postings(toyset, p, to_local, len(tokens))  # [S, la], [la * (U+1), W]
            chunk = max(1, _CHUNK_ELEMENTS // len(onehot))  # bounds the [chunk, S] weights
            shown = visible[rows].sum(1)  # [g]
            few = rows[shown <= _REMEMBERED_VISIBLE]  # few tokens visible: few distinct contexts, remembered
            if len(few):
                local[few] = self._remembered(toyset, p, onehot, support, postings, local_ids[few], visible[few])
            for part in rows[shown > _REMEMBERED_VISIBLE].split(chunk):
                local[part] = support_marginals(onehot, support, postings, toyset.answer_probs[p], local_ids[part],
                                                visible[part])
        return tokens, local

    def _answer_vocab(self, toyset: ToySet) -> tuple[torch.Tensor, torch.Tensor]:
        """The set's answer tokens [U] and a [V] map from token id to local index (U for the rest)."""
        if id(toyset) not in self._vocabs:
            tokens = toyset.flat_answers.unique()  # [U]
            to_local = torch.full((self.vocab_size,), len(tokens), dtype=torch.long)  # [V]
            to_local[tokens] = torch.arange(len(tokens))
            self._vocabs[id(toyset)] = (tokens, to_local)
        return self._vocabs[id(toyset)]

    def _remembered(self, toyset: ToySet, p: int, onehot: torch.Tensor, support: torch.Tensor,
                    postings: torch.Tensor, local_ids: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """support_marginals for rows of prompt p showing at most _REMEMBERED_VISIBLE answer tokens, each
        distinct context computed once per oracle (there are at most 1 + la U + (la U)^2 / 2 of them)."""
        memory = self._onehots.setdefault((id(toyset), p, "remembered"), {})
        contexts = torch.where(visible, local_ids, -1)  # [g, la]: -1 where masked
        unique, inverse = contexts.unique(dim=0, return_inverse=True)  # [c, la], [g]
        names = [tuple(row) for row in unique.tolist()]
        new = [k for k, name in enumerate(names) if name not in memory]
        for part in torch.tensor(new, dtype=torch.long).split(max(1, _CHUNK_ELEMENTS // len(onehot))):
            fresh = unique[part]  # [n, la]
            computed = support_marginals(onehot, support, postings, toyset.answer_probs[p], fresh.clamp(min=0),
                                         fresh >= 0)  # [n, la, U]
            memory.update((names[k], marginals) for k, marginals in zip(part.tolist(), computed))
        return torch.stack([memory[name] for name in names])[inverse]  # [g, la, U]

    def _support_postings(self, toyset: ToySet, p: int, to_local: torch.Tensor,
                          n_local: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt p's answers as local ids [S, la] and, packed (pack_answer_sets), the answers holding
        local token u at position j in row j * (U + 1) + u, then every answer in the last row:
        [la * (U + 1) + 1, W] int64 (cached; u = U, a token no answer uses, holds none)."""
        key = (id(toyset), p, "postings")
        if key not in self._onehots:
            support = to_local[toyset.answers[p]]  # [S, la]
            sets = torch.zeros(toyset.answer_length, n_local + 1, len(support), dtype=torch.bool)  # [la, U + 1, S]
            sets.scatter_(1, support.T[:, None, :], True)
            every = torch.ones(1, len(support), dtype=torch.bool)  # the set of a masked position: no constraint
            self._onehots[key] = (support, pack_answer_sets(torch.cat([sets.reshape(-1, len(support)), every])))
        return self._onehots[key]

    def _support_onehot(self, toyset: ToySet, p: int, to_local: torch.Tensor, n_local: int) -> torch.Tensor:
        """[S, la * U] float32 one-hot of prompt p's support over the set's U answer tokens (cached)."""
        key = (id(toyset), p)
        if key not in self._onehots:
            support = to_local[toyset.answers[p]]  # [S, la]
            columns = torch.arange(toyset.answer_length) * n_local + support  # [S, la]
            onehot = torch.zeros(len(support), toyset.answer_length * n_local)  # [S, la * U]
            self._onehots[key] = onehot.scatter_(1, columns, 1.0)
        return self._onehots[key]


_WORD = 64  # answers per int64 word of a packed answer set
_BITS = torch.arange(_WORD)  # [64]


def pack_answer_sets(sets: torch.Tensor) -> torch.Tensor:
    """[k, S] bool -> [k, ceil(S / 64)] int64, bit b of word w marking answer 64 w + b."""
    k, n = sets.shape
    padded = torch.zeros(k, -(-n // _WORD) * _WORD, dtype=torch.bool)
    padded[:, :n] = sets
    bits = padded.reshape(k, -1, _WORD).long()  # [k, W, 64]
    packed = torch.zeros(k, bits.shape[1], dtype=torch.long)
    for bit in range(_WORD):
        packed |= bits[..., bit] << bit
    return packed


def unpack_answer_sets(packed: torch.Tensor, n: int) -> torch.Tensor:
    """[k, W] int64 -> [k, n] bool (pack_answer_sets undone)."""
    return ((packed[..., None] >> _BITS) & 1).bool().reshape(len(packed), -1)[:, :n]


def support_marginals(onehot: torch.Tensor, support: torch.Tensor, postings: torch.Tensor, probs: torch.Tensor,
                      local_ids: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """dense_marginals' result, fast where it can be: a row whose visible tokens some answers match
    exactly conditions on those answers (the fewest mismatches are then zero), found by intersecting
    the packed answer sets of its visible tokens; a row that matches few answers sums them alone
    instead of multiplying by the whole support. Rows no answer matches take dense_marginals.

    onehot [S, la * U], support [S, la] local ids, postings [la * (U + 1) + 1, W] int64 (row j * (U + 1) + u:
    the packed set of answers holding u at position j; the last row: every answer), probs [S],
    local_ids [g, la] in 0..U,
    visible [g, la] bool -> [g, la, U] float32.
    """
    g, la = local_ids.shape
    n_answers = len(support)
    n_local = onehot.shape[1] // la
    everything = len(postings) - 1  # the last row of postings holds every answer: a masked position's set
    keys = torch.where(visible, torch.arange(la) * (n_local + 1) + local_ids, everything)  # [g, la]
    matching = postings[keys[:, 0]]  # [g, W]
    for position in range(1, la):
        if visible[:, position].any():
            matching &= postings[keys[:, position]]
    words = (matching != 0).sum(1)  # [g]: words holding a matching answer
    out = torch.empty(g, la, n_local)  # [g, la, U]
    mismatched = (words == 0).nonzero().flatten()
    if len(mismatched):
        out[mismatched] = dense_marginals(onehot, probs, local_ids[mismatched], visible[mismatched])
    many = (words * 4 > matching.shape[1]).nonzero().flatten()  # answers spread over the support: one matmul
    if len(many):
        weights = probs.float() * unpack_answer_sets(matching[many], n_answers)  # [m, S]
        out[many] = ((weights / weights.sum(1, keepdim=True)) @ onehot).reshape(len(many), la, n_local)
    few = ((words > 0) & (words * 4 <= matching.shape[1])).nonzero().flatten()  # few answers: sum them alone
    if len(few):
        row, word = (matching[few] != 0).nonzero(as_tuple=True)  # [w], [w]
        hit, bit = ((matching[few][row, word, None] >> _BITS) & 1).nonzero(as_tuple=True)  # [n], [n]
        row, answer = row[hit], word[hit] * _WORD + bit  # [n], [n]
        weights = probs[answer].double()  # [n]
        weights = weights / torch.zeros(len(few), dtype=torch.float64).index_add_(0, row, weights)[row]
        slots = (row[:, None] * la + torch.arange(la)) * n_local + support[answer]  # [n, la]
        summed = torch.zeros(len(few) * la * n_local, dtype=torch.float64)
        summed.index_add_(0, slots.flatten(), weights[:, None].expand(-1, la).flatten())
        out[few] = summed.reshape(len(few), la, n_local).float()
    return out


def dense_marginals(onehot: torch.Tensor, probs: torch.Tensor, local_ids: torch.Tensor,
                    visible: torch.Tensor) -> torch.Tensor:
    """Fewest-mismatch marginals for rows sharing one support, by matmul.

    onehot [S, la * U] float32 (U local answer tokens), probs [S], local_ids [g, la] in 0..U
    (U: a token no answer uses, which mismatches every answer), visible [g, la] bool
    -> [g, la, U] float32.
    """
    g, la = local_ids.shape
    n_local = onehot.shape[1] // la
    seen = torch.zeros(g, la, n_local + 1)  # [g, la, U + 1]; the extra column is dropped
    seen.scatter_(2, local_ids[..., None], visible[..., None].float())
    matches = seen[..., :n_local].reshape(g, -1) @ onehot.T  # [g, S], exact small integers
    mismatches = visible.sum(1, keepdim=True) - matches  # [g, S]
    best = mismatches == mismatches.min(1, keepdim=True).values  # [g, S]
    weights = probs.float() * best  # [g, S]
    weights = weights / weights.sum(1, keepdim=True)
    return (weights @ onehot).reshape(g, la, n_local)  # [g, la, U]


def gathered_marginals(flat: torch.Tensor, flat_probs: torch.Tensor, offsets: torch.Tensor, n_tokens: int,
                       prompt_index: torch.Tensor, answer_ids: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """Fewest-mismatch marginals for rows of any prompts, by gathering each row's support.

    flat [T, la] answers (ids < n_tokens), flat_probs [T], offsets [P + 1] (prompt p owns rows
    offsets[p]:offsets[p+1]), prompt_index [r], answer_ids [r, la], visible [r, la] bool
    -> [r, la, n_tokens] float64. Rows are chunked so rows * support * la <= _CHUNK_ELEMENTS.
    """
    counts = offsets.diff()[prompt_index]  # [r]
    la = flat.shape[1]
    out = torch.zeros(len(prompt_index), la, n_tokens, dtype=torch.float64)  # [r, la, U]
    chunk = max(1, _CHUNK_ELEMENTS // max(1, int(counts.max()) * la))
    for start in range(0, len(prompt_index), chunk):
        part = slice(start, start + chunk)
        n_support = int(counts[part].max())
        slot = torch.arange(n_support)  # [S]
        real = slot < counts[part, None]  # [c, S]: padding slots past a prompt's support
        index = offsets[prompt_index[part], None] + torch.where(real, slot, 0)  # [c, S]
        support = flat[index]  # [c, S, la]
        mismatches = ((support != answer_ids[part, None]) & visible[part, None]).sum(-1)  # [c, S]
        mismatches = mismatches.masked_fill(~real, la + 1)
        best = mismatches == mismatches.min(1, keepdim=True).values  # [c, S]
        weights = flat_probs[index] * best  # [c, S]
        weights = weights / weights.sum(1, keepdim=True)
        out[part].scatter_add_(2, support.transpose(1, 2), weights[:, None, :].expand(-1, la, -1))  # [c, la, U]
    return out
