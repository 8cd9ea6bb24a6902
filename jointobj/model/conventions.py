"""The conventions in which real dLLMs differ, decided once for a model (jointobj.model.denoiser reads them).

    resolve_logit_shift(None, model.config)    # (1, "model_type 'dream'") for Dream
    probe_mask_blind(model, vocab_size, pad_token_id=0, limit=512)   # True when padding moves real logits
    measure_logit_shift(denoiser, input_ids)   # behaviour: which reading predicts masked tokens better

- **Logit shift.** Dream keeps the autoregressive shift: the logits at i - 1 predict token i
  (position 0 reads its own logits, as Dream's sampler does). Rule, in order: the user's
  setting; `config.logit_shift` when a config declares it; 1 for the model types in
  `SHIFTED_MODEL_TYPES`; else 0. `measure_logit_shift` checks a setting by behaviour on real
  data (a trained model predicts masked tokens far better under its own reading); a Denoiser
  runs it at construction on `PROBE_TEXT` when its tokenizer can encode that text.
- **Attention masks.** None when nothing is padded; bool `[b, l]` otherwise (SDPA takes bool
  or float, never long). 4-D masks are handed on untouched.
- **Mask-blind models** (original LLaDA attends everywhere) are found by behaviour: pad a row
  and see whether its real positions' logits move.
- **Positions** that start after the pad id (RoBERTa, XLM-R, CamemBERT, MPNet, Longformer, ESM)
  are read from the position table's `padding_idx`, not from a list of model types.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

CONFIG_NAME = "jointobj.json"  # beside the weights: the mask id, the conventions and the add-ons

# Model types whose published code keeps the autoregressive shift (compared case-insensitively).
SHIFTED_MODEL_TYPES = ("dream",)
LOGIT_SHIFT_NAMES = {"none": 0, "shift": 1}  # names a user may give besides 0 / 1


def resolve_logit_shift(explicit: Any, config: Any) -> tuple[int, str]:
    """(shift, where it came from): the user's setting, else the config rule (module doc)."""
    if explicit is not None:
        return _parse_shift(explicit, "logit_shift"), "set by the user"
    declared = getattr(config, "logit_shift", None)
    if declared is not None:
        return _parse_shift(declared, "config.logit_shift"), "config.logit_shift"
    model_type = str(getattr(config, "model_type", "") or "")
    if model_type.lower() in SHIFTED_MODEL_TYPES:
        return 1, f"model_type {model_type!r}"
    return 0, "default"


def _parse_shift(value: Any, what: str) -> int:
    if isinstance(value, str) and value.lower() in LOGIT_SHIFT_NAMES:
        return LOGIT_SHIFT_NAMES[value.lower()]
    if not isinstance(value, bool) and isinstance(value, int) and value in (0, 1):
        return int(value)
    raise ValueError(f"unknown {what} {value!r}: use 0 or 'none' (logits at i predict token i), or 1 or 'shift' "
                     "(logits at i - 1 predict token i, as Dream)")


def shift_logits(logits: torch.Tensor, shift: int) -> torch.Tensor:
    """[b, l, V] model logits -> [b, l, V] with the logits predicting token i at i."""
    if shift == 0:
        return logits
    return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)  # position 0 keeps its own (Dream's sampler does)


def source_positions(columns: torch.Tensor, shift: int) -> torch.Tensor:
    """[t] positions -> [t] the model positions whose logits predict them."""
    return (columns - shift).clamp(min=0)


def check_positions(positions: torch.Tensor, shape: tuple[int, int]) -> None:
    if positions.dtype != torch.bool or tuple(positions.shape) != tuple(shape):
        raise ValueError(f"positions must be a bool mask of the input's shape {tuple(shape)}, got "
                         f"{positions.dtype} {tuple(positions.shape)}")


def normalise_attention_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """None when nothing is padded; a [b, l] mask as bool; other forms (4-D) unchanged."""
    if attention_mask is None or attention_mask.dim() != 2:
        return attention_mask
    mask = attention_mask.bool()  # [b, l]
    return None if bool(mask.all()) else mask


def resolve_eos_token_id(explicit: int | None, tokenizer: Any, config: Any, vocab_size: int) -> int | None:
    """The EOS id: explicit (checked), else the tokenizer's, else the config's (the first of a list) when
    inside the vocabulary; None if none."""
    if explicit is not None:
        if isinstance(explicit, bool) or not 0 <= int(explicit) < vocab_size:
            raise ValueError(f"eos_token_id {explicit} is outside the model's vocabulary of {vocab_size}; "
                             "pass the right id")
        return int(explicit)
    for source in (getattr(tokenizer, "eos_token_id", None), getattr(config, "eos_token_id", None)):
        if isinstance(source, (list, tuple)):
            source = source[0] if source else None
        if isinstance(source, int) and 0 <= source < vocab_size:  # a tiny config's default may lie outside
            return source
    return None


def position_offset(model: nn.Module) -> int:
    """How many rows of the position table come before position 0: padding_idx + 1 for models whose
    position table has a padding row (they number real tokens from pad id + 1), else 0."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding) and name.split(".")[-1] in ("position_embeddings", "embed_positions"):
            return 0 if module.padding_idx is None else int(module.padding_idx) + 1
    return 0


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run the body in eval mode and give every submodule back exactly the mode it had."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _accepts_attention_mask(model: nn.Module) -> bool:
    parameters = inspect.signature(model.forward).parameters
    return "attention_mask" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


@torch.no_grad()
def probe_mask_blind(model: nn.Module, vocab_size: int, pad_token_id: int, limit: int | None,
                     length: int = 6, padding: int = 24) -> bool:
    """True when padding a row (with its mask) moves the logits of its real positions.

    A model whose forward takes no attention_mask is mask-blind by construction. Many pads
    (four times the row) make a blind model's logits move far beyond 16-bit rounding, which a
    model that honours the mask stays within. Runs in eval mode and restores the model's modes.
    """
    if not _accepts_attention_mask(model):
        return True
    if limit is not None:
        length = max(1, min(length, limit // 5))
        padding = min(padding, limit - length)
    if padding < 1:
        return False  # no room to pad: nothing to compare (a one-position model is never padded)
    probe = torch.randint(0, vocab_size, (1, length), generator=torch.Generator().manual_seed(1))  # [1, n]
    padded = torch.cat([probe, torch.full((1, padding), pad_token_id)], dim=1)  # [1, n + p]
    mask = torch.cat([torch.ones(1, length, dtype=torch.bool), torch.zeros(1, padding, dtype=torch.bool)], dim=1)
    with eval_mode(model):
        device = next(model.parameters()).device
        raw = _logits(model(input_ids=probe.to(device)))  # [1, n, V] in the model's dtype
        alone = raw[0].float()  # [n, V]
        inside = _logits(model(input_ids=padded.to(device), attention_mask=mask.to(device)))[0, :length].float()
    moved = float((alone - inside).abs().max() / alone.abs().max().clamp(min=1e-6))  # relative to the logits' scale
    return moved > (1e-4 if raw.dtype == torch.float32 else 2e-2)


def _logits(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    return output[0]


@dataclass
class LogitShiftMeasurement:
    """Mean NLL (nats per masked token) of the true tokens read at i (`unshifted_nll`) and at i - 1
    (`shifted_nll`), over `tokens` masked positions; `decided` the reading that wins by `margin`
    nats (None: neither does, e.g. an untrained model)."""

    unshifted_nll: float
    shifted_nll: float
    tokens: int
    margin: float

    @property
    def decided(self) -> int | None:
        if self.shifted_nll + self.margin < self.unshifted_nll:
            return 1
        if self.unshifted_nll + self.margin < self.shifted_nll:
            return 0
        return None

    def __str__(self) -> str:
        return (f"NLL per masked token read at i: {self.unshifted_nll:.3f}, read at i - 1: {self.shifted_nll:.3f} "
                f"({self.tokens} tokens)")


@torch.no_grad()
def measure_logit_shift(denoiser: Any, input_ids: torch.Tensor, prompt_mask: torch.Tensor | None = None,
                        mask_fraction: float = 0.5, margin: float = 0.5, seed: int = 0) -> LogitShiftMeasurement:
    """Mask a fraction of the clean rows `input_ids [b, l]` (never the prompt nor position 0) and
    score the true tokens under both readings of the model's raw logits (`denoiser.raw_logits`)."""
    generator = torch.Generator().manual_seed(seed)
    ids = input_ids.cpu()
    allowed = torch.ones_like(ids, dtype=torch.bool) if prompt_mask is None else ~prompt_mask.cpu().bool()  # [b, l]
    allowed[:, 0] = False
    masked = allowed & (torch.rand(ids.shape, generator=generator) < mask_fraction)  # [b, l]
    noisy = ids.masked_fill(masked, denoiser.mask_token_id)
    with eval_mode(denoiser.model):
        raw = denoiser.raw_logits(input_ids=noisy.to(denoiser.device)).float().cpu()  # [b, l, V]
    row, column = masked.nonzero(as_tuple=True)  # [t] each
    clean = ids[row, column]  # [t]
    nll = []
    for shift in (0, 1):
        picked = raw[row, source_positions(column, shift)].log_softmax(-1)  # [t, V]
        nll.append(float(-picked.gather(-1, clean[:, None]).mean()) if len(row) else 0.0)
    return LogitShiftMeasurement(nll[0], nll[1], len(row), margin)


# Plain English for the shift check at construction (written for it; any trained LM predicts it well).
PROBE_TEXT = (
    "The river runs past the old mill and under the stone bridge, where children throw bread to the ducks every "
    "morning. In the afternoon the baker closes his shop, walks along the water and counts the boats that come "
    "back from the lake. When the sun goes down the town is quiet, and the lights of the houses shine on the river."
)


def check_shift_on_text(denoiser: Any, text: str | None = None) -> LogitShiftMeasurement | None:
    """`denoiser.check_logit_shift` on `text` (default PROBE_TEXT) through the denoiser's tokenizer; None
    (nothing run) without a tokenizer, or when the tokenizer does not know the text's words (a toy one)."""
    tokenizer = getattr(denoiser, "tokenizer", None)
    if tokenizer is None or not callable(tokenizer):
        return None
    try:
        ids = tokenizer(text or PROBE_TEXT, return_tensors="pt")["input_ids"][:, : denoiser.max_positions]  # [1, l]
    except Exception:  # a tokenizer that cannot encode plain text (no pre-tokenizer, ...): nothing to probe
        return None
    unknown = getattr(tokenizer, "unk_token_id", None)
    if ids.shape[1] < 16 or int(ids.max()) >= denoiser.vocab_size or (
            unknown is not None and bool((ids == unknown).float().mean() > 0.1)):
        return None
    return denoiser.check_logit_shift(ids)


def describe_settings(shift: int, shift_source: str, mask_blind: bool | None, eos_token_id: int | None) -> str:
    blind = {True: "True", False: "False", None: "unknown (not probed)"}[mask_blind]
    return f"logit_shift={shift} ({shift_source}), mask_blind={blind}, eos_token_id={eos_token_id}"
