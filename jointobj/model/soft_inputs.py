"""Soft inputs: the one place jointobj builds the input embedding of a position that holds a
distribution instead of a token (soft-state decoding, self-conditioning training).

    state = soft_state(logits[soft], denoiser.mask_token_id, temperature=1.0, top_k=None)   # [n, V]
    embeds = soft_input_embeddings(denoiser, input_ids, soft, state, mixing=1.0)           # [b, l, d]
    logits = denoiser(inputs_embeds=embeds, attention_mask=attention)

A soft position with state s and mixing weight a gets

    e = (1 - a) * E[MASK] + a * sum_v s_v E[v]

every other position its hard embedding E[x]. a = 0 is the plain mask, a = 1 with a one-hot
s the hard token: the model sees exactly what `input_ids` would give it (tests check the
logits on BERT, ModernBERT and a plain nn.Module). The mask token never carries mass in a
state (the decoders never commit it), so E[MASK] enters only through 1 - a.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["embedding_table", "require_input_embeddings", "soft_input_embeddings", "soft_state"]

_NO_EMBEDDINGS_HELP = (
    "{what} has no input embeddings, and soft inputs are mixtures of embedding rows. Use a jointobj.Denoiser "
    "over a model that defines get_input_embeddings() (every HF *ForMaskedLM does). The exact OracleDenoiser "
    "reads token ids only, so a soft state means nothing to it: decode it with a hard decoder (confidence, "
    "threshold, ...) instead."
)


def require_input_embeddings(denoiser: Any) -> nn.Embedding:
    """The denoiser's token embedding module, or a TypeError that says what to use instead."""
    try:
        embedding = denoiser.input_embeddings
    except (AttributeError, TypeError):
        embedding = None
    if not isinstance(embedding, nn.Embedding):
        raise TypeError(_NO_EMBEDDINGS_HELP.format(what=type(getattr(denoiser, "denoiser", denoiser)).__name__))
    return embedding


def embedding_table(embedding: nn.Embedding) -> torch.Tensor:
    """[V, d]: the rows the module returns for every token id.

    A plain nn.Embedding returns its weight as it is (no copy). A subclass that transforms
    rows (e.g. a scaled embedding) or a ZeRO-3 partitioned weight is read through the module
    itself, so the mixture matches what `input_ids` would give and gradients reach the owner.
    """
    plain = type(embedding).forward is nn.Embedding.forward and not hasattr(embedding.weight, "ds_id")
    if plain:
        return embedding.weight
    every_id = torch.arange(embedding.num_embeddings, device=embedding.weight.device)  # [V]
    return embedding(every_id)  # [V, d]


def soft_state(logits: torch.Tensor, mask_token_id: int, temperature: float = 1.0,
               top_k: int | None = None) -> torch.Tensor:
    """[..., V] logits -> [..., V] float32 state: softmax(logits / T) without the mask token,
    cut to its `top_k` largest entries and renormalised. T = 0 is the one-hot argmax."""
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (0 = one-hot argmax), got {temperature}")
    if top_k is not None and (isinstance(top_k, bool) or int(top_k) != top_k or top_k < 1):
        raise ValueError(f"top_k must be a whole number >= 1 (or None to keep the whole vocabulary), got {top_k!r}")
    logits = logits.float().index_fill(-1, torch.tensor([mask_token_id], device=logits.device), -torch.inf)
    if temperature == 0:
        return torch.zeros_like(logits).scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)  # [..., V]
    probs = (logits / temperature).softmax(-1)  # [..., V]
    if top_k is not None and top_k < probs.shape[-1]:
        kept = probs.topk(int(top_k), dim=-1)
        probs = torch.zeros_like(probs).scatter_(-1, kept.indices, kept.values)  # [..., V]
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def _check_mixing(mixing: float | torch.Tensor) -> None:
    low, high = (float(mixing.min()), float(mixing.max())) if isinstance(mixing, torch.Tensor) else (mixing, mixing)
    if not (0.0 <= low and high <= 1.0):
        raise ValueError(f"the mixing weight a must lie in [0, 1] (0 = plain mask, 1 = the state alone), got {mixing}")


def soft_input_embeddings(denoiser: Any, input_ids: torch.Tensor, soft: torch.Tensor, state: torch.Tensor,
                          mixing: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Input embeddings `[b, l, d]` with soft states at the `soft` positions.

    input_ids [b, l] long   hard tokens (what a soft position holds there is ignored)
    soft      [b, l] bool   positions that read a state
    state     [n, V] float  one distribution per soft position, in row-major order (n = soft.sum())
    mixing    a in [0, 1]: a float, or [n] per soft position

    Gradients flow to the embedding table through both the hard and the soft rows; pass a
    detached state when it is the model's own prediction (self-conditioning).
    """
    _check_mixing(mixing)
    n = int(soft.sum())
    if state.dim() != 2 or state.shape[0] != n:
        raise ValueError(f"state must be [soft positions ({n}), vocabulary], got {tuple(state.shape)}")
    embedding = require_input_embeddings(denoiser)
    hard = embedding(input_ids)  # [b, l, d]
    if n == 0:
        return hard
    table = embedding_table(embedding)  # [V, d]
    if state.shape[1] != table.shape[0]:
        raise ValueError(f"state has {state.shape[1]} entries per position but the model has {table.shape[0]} tokens")
    mixture = state.to(table.dtype) @ table  # [n, d]
    a = torch.as_tensor(mixing, dtype=table.dtype, device=table.device).reshape(-1, 1)  # [n or 1, 1]
    rows = (1 - a) * table[int(denoiser.mask_token_id)] + a * mixture  # [n, d]
    return hard.masked_scatter(soft[..., None].expand_as(hard), rows.to(hard.dtype))  # [b, l, d]
