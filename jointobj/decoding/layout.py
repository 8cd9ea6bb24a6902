"""Prompts of different lengths in one batch: where each row's answer sits, and the forward every decoder runs.

    layout = AnswerLayout.build(denoiser, prompt_ids, gen_length, prompt_attention_mask)
    gen = layout.start()                                          # [b, L] all [MASK]
    x = layout.compose(gen)                                       # [b, P + L] prompt, answer, padding
    logits = layout.answer_logits(denoiser, input_ids=x)          # [b, L, V] float32, the answer positions only

Prompts come as a [b, lp] tensor, with `prompt_attention_mask` [b, lp] (1 = real token) when
rows differ in length -- left- or right-padded, each row's real tokens contiguous -- or as a
list of 1-D tensors. Without a mask every token of the tensor is real.

Layout. Row b holds its own prompt, then its L answer positions, from position 0, then
padding (attention 0) up to the batch width P + L, P the longest prompt. Every real token
sits at the position it has when its row runs alone, so absolute, rotary and pad-offset
(RoBERTa) positions are unchanged, and a model that honours its attention mask gives each
row the logits it gives that row alone: mixing lengths changes no result. (Left padding
would shift absolute positions; it is accepted only as an input form.) A forward over rows
of equal length is trimmed to that length and gets no attention mask at all.

Mask-blind models (`denoiser.mask_blind`: padding moves real positions' logits) never see
rows of different lengths in one forward: `answer_logits` runs one forward per distinct
prompt length among the rows, each trimmed to its own width, unpadded and unmasked, so each
row again gets exactly its logits alone. These forwards do not depend on each other, so a
decoder counts them as one sequential step; their rows add up as usual.

Where the denoiser can return the logits of chosen positions only (`positions=`, a [b, l]
bool mask), the answer positions are asked for, so the prompt's full-vocabulary logits are
never made.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from jointobj.model.architecture import takes_positions

__all__ = ["AnswerLayout", "normalise_prompts"]


def _shape_error(prompt_ids: Any) -> ValueError:
    shape = tuple(prompt_ids.shape) if isinstance(prompt_ids, torch.Tensor) else type(prompt_ids).__name__
    return ValueError(f"prompt_ids must be a [batch, prompt_length] tensor (with prompt_attention_mask when rows "
                      f"differ in length) or a list of 1-D tensors, got {shape}; for one prompt use prompt_ids[None]")


def normalise_prompts(prompt_ids: Any, prompt_attention_mask: torch.Tensor | None = None,
                      pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Any accepted prompt form -> (prompts [b, P] long, each row's tokens first and `pad_id` after;
    lengths [b] long). Refuses with a message saying what is accepted."""
    if isinstance(prompt_ids, (list, tuple)) and prompt_ids and all(
            isinstance(p, torch.Tensor) and p.dim() == 1 for p in prompt_ids):
        if prompt_attention_mask is not None:
            raise ValueError("prompt_attention_mask goes with a padded [batch, prompt_length] tensor; a list of 1-D "
                             "prompts needs none (drop it)")
        lengths = torch.tensor([len(p) for p in prompt_ids], dtype=torch.long)
        packed = torch.full((len(prompt_ids), int(lengths.max())), pad_id, dtype=torch.long,
                            device=prompt_ids[0].device)
        for row, prompt in enumerate(prompt_ids):
            packed[row, : len(prompt)] = prompt.to(packed.device)
        return packed, lengths.to(packed.device)
    if not isinstance(prompt_ids, torch.Tensor) or prompt_ids.dim() != 2:
        raise _shape_error(prompt_ids)
    prompt_ids = prompt_ids.long()
    b, lp = prompt_ids.shape
    if prompt_attention_mask is None:
        return prompt_ids, torch.full((b,), lp, dtype=torch.long, device=prompt_ids.device)
    mask = torch.as_tensor(prompt_attention_mask, device=prompt_ids.device)
    if tuple(mask.shape) != (b, lp) or not ((mask == 0) | (mask == 1)).all():
        raise ValueError(f"prompt_attention_mask must be [batch, prompt_length] = {(b, lp)} of 0/1 (1 = real token), "
                         f"got shape {tuple(mask.shape)}{'' if tuple(mask.shape) != (b, lp) else ' with other values'}")
    real = mask.bool()  # [b, lp]
    lengths = real.sum(1)  # [b]
    column = torch.arange(lp, device=real.device)  # [lp]
    first = torch.where(real, column, lp).amin(1)  # [b]
    last = torch.where(real, column, -1).amax(1)  # [b]
    gappy = (lengths > 0) & (last - first + 1 != lengths)  # [b]
    if gappy.any():
        row = int(gappy.nonzero()[0])
        raise ValueError(f"row {row} of prompt_attention_mask has gaps ({mask[row].tolist()}); each row's real tokens "
                         "must be contiguous (left or right padding)")
    source = (first.clamp(max=lp - 1)[:, None] + column).clamp(max=max(lp - 1, 0))  # [b, lp] where row token j is
    packed = prompt_ids.gather(1, source) if lp else prompt_ids
    packed = torch.where(column < lengths[:, None], packed, pad_id)  # [b, lp]
    return packed[:, : int(lengths.max()) if b else 0], lengths


@dataclass
class AnswerLayout:
    """Each row: prompt, then its answer, from position 0; padding after (module docstring).

    prompt_ids      [b, P] long   each row's prompt first, `pad_id` after
    prompt_lengths  [b] long
    gen_length      L
    pad_id          what fills padding (the denoiser's or its config's pad id, else its mask id)
    mask_blind      run rows of different lengths in separate forwards
    """

    prompt_ids: torch.Tensor
    prompt_lengths: torch.Tensor
    gen_length: int
    pad_id: int
    mask_blind: bool = False

    @classmethod
    def build(cls, denoiser: Any, prompt_ids: Any, gen_length: int,
              prompt_attention_mask: torch.Tensor | None = None) -> "AnswerLayout":
        """Check the request (see `sampler.check_request`) and lay it out on the denoiser's device."""
        mask_id = int(denoiser.mask_token_id)
        pad = getattr(denoiser, "pad_token_id", None)
        pad = getattr(getattr(denoiser, "config", None), "pad_token_id", None) if pad is None else pad
        pad = pad if isinstance(pad, int) and not isinstance(pad, bool) and pad >= 0 else mask_id
        prompts, lengths = normalise_prompts(prompt_ids, prompt_attention_mask, pad)
        device = getattr(denoiser, "device", prompts.device)
        return cls(prompts.to(device), lengths.to(device), int(gen_length), pad,
                   bool(getattr(denoiser, "mask_blind", False)))

    def __post_init__(self) -> None:
        self.uniform = bool((self.prompt_lengths == self.prompt_width).all())

    @property
    def batch_size(self) -> int:
        return self.prompt_ids.shape[0]

    @property
    def prompt_width(self) -> int:
        return self.prompt_ids.shape[1]

    @property
    def width(self) -> int:
        return self.prompt_width + self.gen_length

    @property
    def device(self) -> torch.device:
        return self.prompt_ids.device

    @property
    def lengths(self) -> torch.Tensor:
        """[b] long: real tokens per row, prompt and answer."""
        return self.prompt_lengths + self.gen_length

    def start(self, mask_token_id: int) -> torch.Tensor:
        """[b, L] long: the answers, fully masked."""
        return torch.full((self.batch_size, self.gen_length), int(mask_token_id), dtype=torch.long, device=self.device)

    def _rows(self, rows: torch.Tensor | None) -> torch.Tensor:
        return torch.arange(self.batch_size, device=self.device) if rows is None else rows

    def answer_positions(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """[a, L] long: the column of each answer position of `rows` (default all)."""
        starts = self.prompt_lengths[self._rows(rows)]  # [a]
        return starts[:, None] + torch.arange(self.gen_length, device=self.device)  # [a, L]

    def answer_mask(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """[a, P + L] bool: True at the answer positions of `rows`."""
        positions = self.answer_positions(rows)  # [a, L]
        mask = torch.zeros(len(positions), self.width, dtype=torch.bool, device=self.device)
        return mask.scatter_(1, positions, True)  # [a, P+L]

    def attention_mask(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """[a, P + L] bool: True on each row's real tokens (prompt and answer)."""
        column = torch.arange(self.width, device=self.device)  # [P+L]
        return column < self.lengths[self._rows(rows)][:, None]  # [a, P+L]

    def compose(self, gen: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """answers [a, L] of `rows` (default all) -> [a, P + L] long: prompt, answer, padding."""
        prompts = self.prompt_ids[self._rows(rows)]  # [a, P]
        if self.uniform:
            return torch.cat([prompts, gen.to(prompts.device)], 1)  # [a, P+L]
        ids = torch.cat([prompts, torch.full_like(gen, self.pad_id)], 1)  # [a, P+L]
        return ids.scatter_(1, self.answer_positions(rows), gen.to(ids.device))

    def answer_logits(self, denoiser: Any, rows: torch.Tensor | None = None, *,
                      input_ids: torch.Tensor | None = None,
                      inputs_embeds: torch.Tensor | None = None,
                      columns: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [a, L, V] float32 at the answer positions of `rows` (default all), from their inputs in
        this layout: ids [a, P + L] or embeddings [a, P + L, d]. One forward, or one per prompt length
        for a mask-blind model (module docstring). `columns` [a, k] (answer positions, repeats allowed):
        the logits [a, k, V] of those positions only (a denoiser that takes `positions=` then makes no
        float32 copy of the others)."""
        lengths = self.lengths[self._rows(rows)]  # [a]
        inputs = input_ids if input_ids is not None else inputs_embeds
        if not self.mask_blind or bool((lengths == lengths[0]).all()):
            return self._forward(denoiser, inputs, lengths, input_ids is not None, columns)
        out = None
        for length in lengths.unique().tolist():  # never two lengths in one forward
            group = (lengths == length).nonzero().squeeze(1)  # [g]
            part = self._forward(denoiser, inputs[group], lengths[group], input_ids is not None,
                                 None if columns is None else columns[group])  # [g, L or k, V]
            out = part.new_empty(len(lengths), *part.shape[1:]) if out is None else out
            out[group] = part
        return out

    def _forward(self, denoiser: Any, inputs: torch.Tensor, lengths: torch.Tensor, ids: bool,
                 columns: torch.Tensor | None = None) -> torch.Tensor:
        """One forward of rows [a, P + L(, d)] trimmed to their longest: [a, L, V] (or [a, k, V] at `columns`)."""
        width, a, length = int(lengths.max()), len(lengths), self.gen_length
        inputs = inputs[:, :width]  # [a, w(, d)]
        column = torch.arange(width, device=lengths.device)  # [w]
        same = bool((lengths == width).all())
        attention = None if same else column < lengths[:, None]  # [a, w] bool
        feed = {"input_ids" if ids else "inputs_embeds": inputs, "attention_mask": attention}
        start = (lengths - length)[:, None]  # [a, 1] the column of answer position 0
        if takes_positions(denoiser):
            if columns is None:
                positions = (column >= start) & (column < lengths[:, None])  # [a, w]
                return denoiser(**feed, positions=positions).view(a, length, -1)  # [a, L, V]
            at = start + columns  # [a, k] the columns wanted
            positions = torch.zeros(a, width, dtype=torch.bool, device=lengths.device).scatter_(1, at, True)  # [a, w]
            picked = denoiser(**feed, positions=positions)  # [t, V] row-major
            index = positions.flatten().long().cumsum(0).view(a, width) - 1  # [a, w] row of `picked` per column
            return picked[index.gather(1, at)]  # [a, k, V]
        logits = denoiser(**feed)  # [a, w, V]
        if same and columns is None:
            return logits[:, width - length :]  # [a, L, V]
        gather = start + (torch.arange(length, device=lengths.device) if columns is None else columns)  # [a, L or k]
        return logits.gather(1, gather[..., None].expand(-1, -1, logits.shape[-1]))  # [a, L or k, V]

