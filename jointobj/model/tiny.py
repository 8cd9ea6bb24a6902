"""Tiny masked LMs built from configs, offline, in milliseconds.

Tests, benchmarks and the recipes' embedded default use them in place of a downloaded
checkpoint; they are real `transformers` classes, so every code path a real model takes
(LoRA targets, save / load, DeepSpeed) is exercised.

    model = tiny_masked_lm("modernbert", vocab_size=64)
    model = tiny_masked_lm("modernbert", vocab_size=64, size="medium")   # a named size (TINY_SIZES)

Named sizes (`TINY_SIZES`: hidden size, layers) grow by doubling the width, and the depth from
"medium" on: a model too small for a set learns only its per-position marginals, which no decoder
can turn into valid answers. eval/model_sizes.py measures which size learns which built-in set.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from jointobj.utils.registry import Registry

TINY_ARCHITECTURES: Registry[Callable[..., Any]] = Registry("tiny architecture")

# name -> (hidden_size, num_layers); "xsmall" is the default (hidden 32, 2 layers)
TINY_SIZES: dict[str, tuple[int, int]] = {
    "xsmall": (32, 2),
    "small": (64, 2),
    "medium": (128, 4),
    "large": (256, 4),
    "xlarge": (256, 8),
}


def _special_ids(vocab_size: int, pad_token_id: int) -> dict[str, int]:
    # Configs default their special ids to the pretrained vocabulary (e.g. 50283): keep them in range.
    return {"pad_token_id": pad_token_id, "bos_token_id": pad_token_id, "eos_token_id": pad_token_id}


@TINY_ARCHITECTURES.register("modernbert")
def _modernbert(vocab_size: int, hidden_size: int, num_layers: int, num_heads: int, max_positions: int, pad: int):
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    config = ModernBertConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=num_heads,
        intermediate_size=2 * hidden_size, max_position_embeddings=max_positions, cls_token_id=pad, sep_token_id=pad,
        global_attn_every_n_layers=1, embedding_dropout=0.0, mlp_dropout=0.0, attention_dropout=0.0,
        **_special_ids(vocab_size, pad),
    )
    return ModernBertForMaskedLM(config)


@TINY_ARCHITECTURES.register("bert")
def _bert(vocab_size: int, hidden_size: int, num_layers: int, num_heads: int, max_positions: int, pad: int):
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=num_heads,
        intermediate_size=2 * hidden_size, max_position_embeddings=max_positions, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, **_special_ids(vocab_size, pad),
    )
    return BertForMaskedLM(config)


@TINY_ARCHITECTURES.register("roberta")
def _roberta(vocab_size: int, hidden_size: int, num_layers: int, num_heads: int, max_positions: int, pad: int):
    from transformers import RobertaConfig, RobertaForMaskedLM

    # RoBERTa offsets positions by pad_token_id + 1, so it needs that many extra rows.
    config = RobertaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=num_heads,
        intermediate_size=2 * hidden_size, max_position_embeddings=max_positions + pad + 1, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, **_special_ids(vocab_size, pad),
    )
    return RobertaForMaskedLM(config)


@TINY_ARCHITECTURES.register("distilbert")
def _distilbert(vocab_size: int, hidden_size: int, num_layers: int, num_heads: int, max_positions: int, pad: int):
    from transformers import DistilBertConfig, DistilBertForMaskedLM

    config = DistilBertConfig(
        vocab_size=vocab_size, dim=hidden_size, n_layers=num_layers, n_heads=num_heads, hidden_dim=2 * hidden_size,
        max_position_embeddings=max_positions, dropout=0.0, attention_dropout=0.0, pad_token_id=pad,
    )
    return DistilBertForMaskedLM(config)


@TINY_ARCHITECTURES.register("electra")
def _electra(vocab_size: int, hidden_size: int, num_layers: int, num_heads: int, max_positions: int, pad: int):
    from transformers import ElectraConfig, ElectraForMaskedLM

    config = ElectraConfig(
        vocab_size=vocab_size, embedding_size=hidden_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=num_heads, intermediate_size=2 * hidden_size, max_position_embeddings=max_positions,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **_special_ids(vocab_size, pad),
    )
    return ElectraForMaskedLM(config)


def tiny_masked_lm(
    architecture: str = "modernbert",
    *,
    vocab_size: int,
    hidden_size: int | None = None,
    num_layers: int | None = None,
    num_heads: int = 4,
    max_positions: int = 64,
    pad_token_id: int = 0,
    seed: int | None = None,
    size: str = "xsmall",
) -> nn.Module:
    """A randomly initialised `*ForMaskedLM` of the named architecture (dropout off).

    `size` names a preset of TINY_SIZES (hidden size, layers); `hidden_size` / `num_layers`,
    when given, override it."""
    import torch

    if size not in TINY_SIZES:
        raise ValueError(f"unknown tiny size {size!r}; known: {', '.join(TINY_SIZES)}")
    hidden_size = TINY_SIZES[size][0] if hidden_size is None else hidden_size
    num_layers = TINY_SIZES[size][1] if num_layers is None else num_layers

    if seed is not None:
        torch.manual_seed(seed)
    build = TINY_ARCHITECTURES.get(architecture)
    return build(vocab_size, hidden_size, num_layers, num_heads, max_positions, pad_token_id)
