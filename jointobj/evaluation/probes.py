"""The frequency-collapse probe: what a model predicts at masked positions further and further from the
last visible token (`jointobj probe` prints, plots and saves it)."""

from __future__ import annotations

from typing import Any

import torch

from jointobj.evaluation.metrics import answer_unigram, distribution_entropy, kl_divergence
from jointobj.toysets.builtin import ToySet

__all__ = ["mask_run_profile"]


@torch.no_grad()
def mask_run_profile(denoiser: Any, toyset: ToySet, num_masks: int, prompt_index: int = 0,
                     top: int = 3) -> list[dict[str, Any]]:
    """The frequency-collapse probe: a prompt of `toyset` followed by `num_masks` masks, one
    forward; per masked position (distance d = 1.. from the last visible token): the top
    tokens with probabilities, the entropy, and KL(p_d || unigram) in nats to the set's
    answer-token unigram distribution (q floored at 1e-12, see `kl_divergence`). A model
    whose far positions fall back on token frequencies shows KL -> 0 with distance."""
    if num_masks < 1:
        raise ValueError(f"the probe needs at least one mask position, got {num_masks}")
    if not -len(toyset.prompts) <= prompt_index < len(toyset.prompts):
        raise ValueError(f"prompt_index {prompt_index} out of range: toy set {toyset.name!r} has "
                         f"{len(toyset.prompts)} prompts")
    prompt = toyset.prompts[prompt_index]  # [lp]
    limit = getattr(denoiser, "max_positions", None)
    if isinstance(limit, int) and len(prompt) + num_masks > limit:
        raise ValueError(f"prompt ({len(prompt)}) + {num_masks} masks is longer than the model's {limit} positions; "
                         f"use at most {limit - len(prompt)} masks")
    vocab = len(toyset.tokenizer)
    if getattr(denoiser, "vocab_size", vocab) < vocab:
        raise ValueError(f"the model has {denoiser.vocab_size} tokens but toy set {toyset.name!r} uses {vocab}; "
                         "probe a model trained on the toy sets' vocabulary (toy_tokenizer())")
    device = getattr(denoiser, "device", torch.device("cpu"))
    ids = torch.cat([prompt, torch.full((num_masks,), int(denoiser.mask_token_id))])[None].to(device)  # [1, lp+N]
    logits = denoiser(input_ids=ids, attention_mask=torch.ones_like(ids))[0, len(prompt) :]  # [N, V]
    probs = logits.double().softmax(-1).cpu()  # [N, V]
    unigram = answer_unigram(toyset)  # [Vt]
    unigram = torch.cat([unigram, unigram.new_zeros(probs.shape[1] - len(unigram))])  # [V]
    entropy = distribution_entropy(probs)  # [N]
    kl = kl_divergence(probs, unigram)  # [N]
    values, tokens = probs.topk(min(top, probs.shape[1]), dim=-1)  # [N, top]
    names = toyset.tokenizer.convert_ids_to_tokens
    unigram_entropy = float(distribution_entropy(unigram))
    return [{
        "distance": d + 1,
        "top_tokens": names(tokens[d].tolist()),
        "top_probs": values[d].tolist(),
        "entropy": float(entropy[d]),
        "kl_to_unigram": float(kl[d]),
        "unigram_entropy": unigram_entropy,
    } for d in range(num_masks)]
