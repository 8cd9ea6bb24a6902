"""Text in, text out with any registered decoder: what `jointobj generate` and the lm-eval model run.

    from jointobj.evaluation.generation import generate_texts
    texts = generate_texts(denoiser, ["<likes_tennis>"], "confidence", gen_length=3, tokens_per_step=1)

Prompts are tokenized without special tokens (apply a chat template first) and may differ in
length (the decoders lay each row out at its own positions). Each answer is cut at the first
EOS (the denoiser's, or `eos_token_id`), decoded without special tokens, then cut before the
first of `stop` strings it holds.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from jointobj.decoding.budget import parse_tokens_per_step
from jointobj.decoding.registry import build_decoder
from jointobj.utils.checks import check_whole_number

__all__ = ["cut_at_stop", "generate_texts"]


def cut_at_stop(text: str, stop: Sequence[str] = ()) -> str:
    """`text` up to (not including) the earliest occurrence of any stop string."""
    cut = min((text.find(s) for s in stop if s and s in text), default=len(text))
    return text[:cut]


def generate_texts(denoiser: Any, prompts: Sequence[str], decoder: str, gen_length: int,
                   tokens_per_step: int | str | None = 1, *, options: Mapping[str, Any] | None = None,
                   stop: Sequence[str] = (), seed: int = 0, batch_size: int = 16,
                   eos_token_id: int | None = None) -> list[str]:
    """One answer text per prompt: `gen_length` tokens decoded by `decoder` with K = tokens_per_step
    ('all' or None: one step), cut at EOS and at the first stop string."""
    check_whole_number("gen_length (generated tokens)", gen_length)
    check_whole_number("batch_size", batch_size)
    tokenizer = denoiser.tokenizer
    if tokenizer is None:
        raise ValueError("the denoiser has no tokenizer; save one beside the model (Denoiser(model, tokenizer=...))")
    k = parse_tokens_per_step(tokens_per_step)
    sampler = build_decoder(decoder, k, **dict(options or {}))
    eos = eos_token_id if eos_token_id is not None else getattr(denoiser, "eos_token_id", None)
    device = torch.device(getattr(denoiser, "device", "cpu"))
    generator = torch.Generator(device=device).manual_seed(seed)
    texts: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        ids = [torch.tensor(tokenizer(p, add_special_tokens=False)["input_ids"], dtype=torch.long, device=device)
               for p in chunk]
        empty = [i for i, row in enumerate(ids) if len(row) == 0]
        if empty:
            raise ValueError(f"prompt {start + empty[0]} is empty after tokenization; give every prompt a token")
        out = sampler.sample(denoiser, ids, gen_length, generator, eos_token_id=eos)
        for answer, length in zip(out.answer_ids.tolist(), out.answer_lengths.tolist()):
            texts.append(cut_at_stop(tokenizer.decode(answer[:length], skip_special_tokens=True), stop))
    return texts
