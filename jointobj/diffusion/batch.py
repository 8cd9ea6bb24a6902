"""The batch every loss, decoder and evaluator takes, and the collator that builds it.

A batch is a plain dict (what `transformers.Trainer` passes around):

    input_ids       [b, l] long   token ids, padding on the right
    attention_mask  [b, l] long   1 on real tokens, 0 on padding
    prompt_mask     [b, l] bool   True where a token is given context: never corrupted, never scored

A position is *scorable* when it is a real token outside the prompt.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

Batch = Mapping[str, torch.Tensor]


def scorable_mask(batch: Batch) -> torch.Tensor:
    """[b, l] bool: real, non-prompt positions (the ones a loss corrupts and scores)."""
    input_ids = batch["input_ids"]
    attention = batch.get("attention_mask")
    real = torch.ones_like(input_ids, dtype=torch.bool) if attention is None else attention.bool()
    prompt = batch.get("prompt_mask")
    return real if prompt is None else real & ~prompt.bool()


def answer_batch(prompts: torch.Tensor, answers: torch.Tensor) -> dict[str, torch.Tensor]:
    """Prompts [b, lp] and answers [b, la] of one length each -> the batch of prompt + answer, the
    prompt given (prompt_mask) and the answer scorable."""
    input_ids = torch.cat([prompts, answers], 1).long()  # [b, lp + la]
    prompt_mask = torch.zeros_like(input_ids, dtype=torch.bool)
    prompt_mask[:, : prompts.shape[1]] = True
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "prompt_mask": prompt_mask}


def check_batch(batch: Batch) -> torch.Tensor:
    """Validate a batch and return its scorable mask; errors say what to fix."""
    if "input_ids" not in batch:
        raise ValueError(f"batch has no 'input_ids' (keys: {sorted(batch)}); build it with DiffusionCollator")
    input_ids = batch["input_ids"]
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [batch, length], got shape {tuple(input_ids.shape)}")
    for key in ("attention_mask", "prompt_mask"):
        if key in batch and batch[key].shape != input_ids.shape:
            raise ValueError(f"{key} has shape {tuple(batch[key].shape)} but input_ids has {tuple(input_ids.shape)}")
    scorable = scorable_mask(batch)
    empty = ~scorable.any(dim=1)
    if empty.any():
        rows = empty.nonzero().flatten().tolist()
        raise ValueError(
            f"rows {rows} of the batch have no scorable position: prompt_mask (or padding) covers every token. "
            "Each example needs at least one response token outside the prompt; drop those rows or shorten their "
            "prompt."
        )
    return scorable


def prompt_and_answer_lengths(batch: Batch, scorable: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt length [b], answer length [b]) of a batch whose prompt_mask is a prefix of each row and whose
    answer is every scorable token after it (objectives that sample or score answers after the prompt)."""
    scorable = check_batch(batch) if scorable is None else scorable
    prompt = batch.get("prompt_mask", torch.zeros_like(scorable)).bool()  # [b, l]
    lp = prompt.sum(-1)  # [b]
    positions = torch.arange(prompt.shape[1], device=prompt.device)  # [l]
    if (prompt != (positions < lp[:, None])).any():
        row = int((prompt != (positions < lp[:, None])).any(-1).nonzero()[0])
        raise ValueError(f"row {row}'s prompt_mask is not a prefix; this objective draws or scores answers after "
                         "the prompt, so the prompt must come first (prompt then response)")
    return lp, scorable.sum(-1)


class DiffusionCollator:
    """Pads `input_ids` / `prompt_mask` (lists or tensors) on the right into a `Batch`.

    Features without `prompt_mask` get an all-False one (unconditional text).

    `pad_answers_with_eos=True` pads short rows with `eos_token_id` as real, scored answer tokens
    (LLaDA's SFT convention: the model learns where to stop, and no row is padded). `mask_blind=True`
    (a model that ignores the attention mask) makes a batch of mixed lengths without EOS padding an
    error: padding would move its real positions' logits. `for_denoiser` sets both from a Denoiser.
    """

    def __init__(self, pad_token_id: int, max_length: int | None = None, *, eos_token_id: int | None = None,
                 pad_answers_with_eos: bool = False, mask_blind: bool = False):
        if pad_answers_with_eos and eos_token_id is None:
            raise ValueError(
                "pad_answers_with_eos needs an EOS id, and none was given: pass eos_token_id=... (or Denoiser(..., "
                "eos_token_id=...)), give the tokenizer an eos_token, or turn pad_answers_with_eos off"
            )
        self.pad_token_id = pad_token_id
        self.max_length = max_length
        self.eos_token_id = eos_token_id
        self.pad_answers_with_eos = pad_answers_with_eos
        self.mask_blind = mask_blind

    @classmethod
    def for_denoiser(cls, denoiser: Any, pad_answers_with_eos: bool | None = None) -> "DiffusionCollator":
        """The collator a denoiser's training needs: EOS padding by default for a mask-blind model
        (or one not probed, when it has an EOS id); pass `pad_answers_with_eos` to choose."""
        pad = getattr(getattr(denoiser, "tokenizer", None), "pad_token_id", None)
        eos = getattr(denoiser, "eos_token_id", None)
        blind = getattr(denoiser, "mask_blind", False)
        if pad_answers_with_eos is None:
            pad_answers_with_eos = bool(blind) or (blind is None and eos is not None)
        return cls(0 if pad is None else pad, max_length=getattr(denoiser, "max_positions", None), eos_token_id=eos,
                   pad_answers_with_eos=pad_answers_with_eos, mask_blind=bool(blind))

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if len(features) == 0:
            raise ValueError("cannot collate an empty list of examples; is the dataset empty?")
        ids = [torch.as_tensor(f["input_ids"], dtype=torch.long) for f in features]
        prompts = [
            torch.as_tensor(f["prompt_mask"], dtype=torch.bool) if "prompt_mask" in f
            else torch.zeros_like(i, dtype=torch.bool)
            for f, i in zip(features, ids)
        ]
        length = max(len(i) for i in ids)
        if self.max_length is not None and length > self.max_length:
            raise ValueError(
                f"an example has {length} tokens but the model takes at most {self.max_length}; "
                "truncate or filter the dataset first"
            )
        lengths = sorted({len(i) for i in ids})
        if self.mask_blind and not self.pad_answers_with_eos and len(lengths) > 1:
            raise ValueError(
                f"this batch mixes row lengths {lengths}, and the model ignores the attention mask (mask_blind): "
                "padding would change its real positions' logits. Either pad answers with EOS (DiffusionCollator("
                "..., eos_token_id=..., pad_answers_with_eos=True), the default of DiffusionCollator.for_denoiser "
                "for such a model), or group rows of one length per batch (e.g. a length-grouped sampler)"
            )
        batch_size = len(ids)
        fill = self.eos_token_id if self.pad_answers_with_eos else self.pad_token_id
        input_ids = torch.full((batch_size, length), fill, dtype=torch.long)
        attention_mask = torch.zeros((batch_size, length), dtype=torch.long)
        prompt_mask = torch.zeros((batch_size, length), dtype=torch.bool)
        for row, (i, p) in enumerate(zip(ids, prompts)):
            if p.shape != i.shape:
                raise ValueError(f"example {row}: prompt_mask has {len(p)} entries but input_ids has {len(i)}")
            input_ids[row, : len(i)] = i
            attention_mask[row, : len(i) if not self.pad_answers_with_eos else length] = 1  # EOS tails are real
            prompt_mask[row, : len(i)] = p
        return {"input_ids": input_ids, "attention_mask": attention_mask, "prompt_mask": prompt_mask}
