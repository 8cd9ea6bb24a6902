"""What a wrapped model is, read from the model itself: its mask id, vocabulary, positions, LoRA targets,
whether it is bidirectional, and its logits at chosen positions. The Denoiser reads these once."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from jointobj.model.conventions import eval_mode, position_offset

__all__ = ["assert_bidirectional", "extract_logits", "input_embeddings", "logits_at", "lora_target_modules",
           "max_positions", "pad_token_id", "resolve_mask_token_id", "takes_positions", "vocab_size"]


_NO_MASK_HELP = (
    "jointobj needs a mask token id. Pass mask_token_id=... explicitly, or give the tokenizer a mask token "
    "(tokenizer.add_special_tokens({'mask_token': '[MASK]'}) then model.resize_token_embeddings(len(tokenizer))), "
    "or set config.mask_token_id (LLaDA and Dream configs carry one)."
)


def resolve_mask_token_id(explicit: int | None, tokenizer: Any = None, config: Any = None) -> int:
    """The mask id: explicit argument, then tokenizer, then model config, in that order."""
    for source in (explicit, getattr(tokenizer, "mask_token_id", None), getattr(config, "mask_token_id", None)):
        if source is not None:
            return int(source)
    raise ValueError(_NO_MASK_HELP)


def extract_logits(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, (tuple, list)):
        return output[0]
    raise TypeError(f"the model returned {type(output).__name__}; a Denoiser needs logits (a tensor or an object "
                    "with .logits)")


def takes_positions(denoiser: Any) -> bool:
    """Whether the denoiser's own class computes logits of chosen positions only (`positions=` on its
    forward, or __call__ for a plain callable: Denoiser, OracleDenoiser). Wrappers that forward calls and
    attributes (self-conditioning, counters, recorders) are judged by their own class: full logits."""
    call = getattr(type(denoiser), "forward", None) or getattr(type(denoiser), "__call__", None)
    try:
        return call is not None and "positions" in inspect.signature(call).parameters
    except (TypeError, ValueError):
        return False


def logits_at(denoiser: Any, positions: torch.Tensor, **inputs: Any) -> torch.Tensor:
    """[t, V] float32 logits of the `positions [b, l]` (bool) only, in row-major order: the lean path
    of a denoiser that takes `positions=` (`takes_positions`), else its full logits `[b, l, V]` indexed."""
    if takes_positions(denoiser):
        return denoiser(**inputs, positions=positions)  # [t, V]
    return denoiser(**inputs)[positions].float()  # [t, V]


def input_embeddings(model: nn.Module) -> nn.Embedding | None:
    get = getattr(model, "get_input_embeddings", None)
    embedding = get() if callable(get) else None
    return embedding if isinstance(embedding, nn.Embedding) else None


def vocab_size(model: nn.Module) -> int:
    size = getattr(getattr(model, "config", None), "vocab_size", None)
    if size is not None:
        return int(size)
    embedding = input_embeddings(model)
    if embedding is None:
        raise ValueError(
            f"cannot tell the vocabulary size of {type(model).__name__}: give it a config with vocab_size "
            "or a get_input_embeddings() method"
        )
    return embedding.num_embeddings


def max_positions(model: nn.Module) -> int | None:
    """Longest sequence the model takes, where its config says (None: unbounded, e.g. rotary only),
    less the position rows before position 0 (jointobj.model.conventions.position_offset)."""
    config = getattr(model, "config", None)
    for source in (config, model):
        for name in ("max_position_embeddings", "max_sequence_length", "max_positions"):
            value = getattr(source, name, None)
            if isinstance(value, int):
                return value - position_offset(model)
    return None


def pad_token_id(tokenizer: Any, config: Any) -> int:
    for source in (getattr(tokenizer, "pad_token_id", None), getattr(config, "pad_token_id", None)):
        if isinstance(source, int):
            return source
    return 0


def lora_target_modules(model: nn.Module) -> list[str] | str:
    """peft's target table for known architectures, else all linear layers except the vocabulary head."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
    from transformers import PreTrainedModel

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING:
        return list(TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING[model_type])
    if isinstance(model, PreTrainedModel):
        return "all-linear"  # peft leaves the output embedding out for PreTrainedModels
    token_embedding = input_embeddings(model)
    if token_embedding is None:  # else the first embedding registered is the token table
        token_embedding = next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)
    vocab_size = token_embedding.num_embeddings if token_embedding is not None else None
    # nn.MultiheadAttention reads out_proj.weight directly, so a LoRA wrapped around it would never run.
    inside_attention = {
        f"{name}.{child}" if name else child
        for name, m in model.named_modules()
        if isinstance(m, nn.MultiheadAttention)
        for child, _ in m.named_children()
    }
    targets = sorted(
        {
            name.split(".")[-1]
            for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and name not in inside_attention and m.out_features != vocab_size
        }
    )
    if not targets:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer LoRA can wrap; pass a LoraConfig with "
                         "target_modules")
    return targets


@torch.no_grad()
def assert_bidirectional(denoiser: Any, probe_length: int = 8) -> None:
    """Refuse causal models, judged by behaviour: a late token must move earlier logits.

    Class names mislead (Dream is a decoder architecture with bidirectional attention), so
    we change the last token of a probe and look at the logits before it.
    """
    limit = denoiser.max_positions or probe_length
    length = max(2, min(probe_length, limit))
    generator = torch.Generator().manual_seed(0)
    probe = torch.randint(0, denoiser.vocab_size, (1, length), generator=generator)
    changed = probe.clone()
    changed[0, -1] = (probe[0, -1] + 1) % denoiser.vocab_size
    with eval_mode(denoiser.model):
        device = denoiser.device
        before = denoiser(input_ids=probe.to(device))[0, :-1]  # [l-1, V]
        after = denoiser(input_ids=changed.to(device))[0, :-1]
    if torch.allclose(before, after, rtol=0, atol=1e-6):
        raise ValueError(
            f"{type(denoiser.model).__name__} looks causal: changing the last token left every earlier logit "
            "unchanged. Masked diffusion needs bidirectional attention; load a masked LM (BERT, ModernBERT, "
            "LLaDA, Dream, ...) or disable the causal mask. If you are sure, pass check_bidirectional=False."
        )
