"""Denoiser: one calling convention for any bidirectional masked LM.

    from transformers import ModernBertConfig, ModernBertForMaskedLM
    from jointobj import Denoiser
    model = ModernBertForMaskedLM(ModernBertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                                                   num_attention_heads=4, intermediate_size=37))
    denoiser = Denoiser(model, mask_token_id=3).add_lora()
    logits = denoiser(input_ids=ids, attention_mask=mask)   # [b, l, V] float32

Wraps a Hugging Face `*ForMaskedLM`, a `trust_remote_code` dLLM (LLaDA, Dream) or any
`nn.Module` that maps `input_ids` / `inputs_embeds` to logits. Unknown attributes are
forwarded to the wrapped model, as peft's wrappers do.

The model's conventions are decided here, once, and every loss, decoder and energy reads
logits through `forward`, so none of them re-derives them (see jointobj/model/conventions.py):

- `logit_shift` (0 or 1): 1 for models that keep the autoregressive shift (Dream: the logits
  at i - 1 predict token i). `forward` undoes it, so callers always read "logits at i predict
  token i".
- `mask_blind`: the model ignores the attention mask (padding moves real positions' logits),
  decided by a probe; such a model must never see a padded batch (DiffusionCollator pads its
  answers with EOS instead).
- the attention mask is handed on as None when nothing is padded, else as bool.
- constructing a Denoiser leaves the model's train / eval mode as it was.
"""

from __future__ import annotations

import contextlib
import copy
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.utils import logging

from jointobj.model.add_ons import add_on_names, attach_add_ons, load_add_ons, save_add_ons
from jointobj.model.architecture import (
    assert_bidirectional,
    extract_logits,
    input_embeddings,
    lora_target_modules,
    max_positions,
    pad_token_id,
    resolve_mask_token_id,
    vocab_size,
)
from jointobj.model.conventions import (
    CONFIG_NAME,
    LogitShiftMeasurement,
    check_positions,
    check_shift_on_text,
    describe_settings,
    measure_logit_shift,
    normalise_attention_mask,
    probe_mask_blind,
    resolve_eos_token_id,
    resolve_logit_shift,
    shift_logits,
    source_positions,
)
from jointobj.model.loading import (
    ADAPTER_CONFIG,
    check_directory,
    given_or_saved_conventions,
    load_model,
    load_tokenizer,
    quiet_peft,
    recorded_base,
    saved_settings,
)
from jointobj.utils.ranks import zero3_sharded

logger = logging.get_logger(__name__)


class Denoiser(nn.Module):
    """Maps (partly masked) token ids or soft input embeddings to float32 logits `[b, l, V]`."""

    def __init__(
        self,
        model: nn.Module,
        mask_token_id: int | None = None,
        tokenizer: Any = None,
        check_bidirectional: bool = True,
        *,
        logit_shift: int | str | None = None,
        eos_token_id: int | None = None,
        mask_blind: bool | None = None,
    ):
        """`logit_shift`: 0 / "none", 1 / "shift" (Dream), or None to decide from the config
        (jointobj.model.conventions). `eos_token_id`: else the tokenizer's, else the config's. `mask_blind`:
        None probes the model. The model's train / eval mode is left as it is."""
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        config = getattr(model, "config", None)
        # Read once from the bare model: once training starts, calls may go through a DeepSpeed engine
        # whose .config is the DeepSpeed config (see routed_through).
        self.vocab_size = vocab_size(model)
        self.max_positions = max_positions(model)
        self.mask_token_id = resolve_mask_token_id(mask_token_id, tokenizer, config)  # checked by the setter
        self.logit_shift, self.logit_shift_source = resolve_logit_shift(logit_shift, config)
        self.eos_token_id = resolve_eos_token_id(eos_token_id, tokenizer, config, self.vocab_size)
        self._warned_padding = False
        self.compat_rules: tuple[str, ...] = ()  # jointobj/model/compat.py rules applied to load the model
        self.training = model.training  # the wrapper mirrors the model's mode; never changes it
        sharded = zero3_sharded(model)
        if sharded and (check_bidirectional or mask_blind is None):
            logger.warning(
                "skipping the causal-model and mask-blindness probes: the weights are ZeRO-3 shards until DeepSpeed "
                "wraps the model; load the model without ZeRO-3 once to check it (mask_blind stays unknown: the "
                "collator then pads answers with EOS when the model has an EOS id)"
            )
        elif check_bidirectional:
            assert_bidirectional(self)
        self.mask_blind = mask_blind if mask_blind is not None or sharded else probe_mask_blind(
            model, self.vocab_size, pad_token_id(tokenizer, config), self.max_positions)
        if not sharded:
            check_shift_on_text(self)  # a trained model with a tokenizer: warns if its behaviour says otherwise

    def extra_repr(self) -> str:
        compat = f", compat_rules={list(self.compat_rules)}" if self.compat_rules else ""
        return (f"mask_token_id={self.mask_token_id}, "
                + describe_settings(self.logit_shift, self.logit_shift_source, self.mask_blind, self.eos_token_id)
                + compat)

    @property
    def settings(self) -> dict[str, Any]:
        """The conventions saved in jointobj.json and read back by from_pretrained."""
        return {"mask_token_id": self.mask_token_id, "logit_shift": self.logit_shift, "mask_blind": self.mask_blind,
                "eos_token_id": self.eos_token_id}

    def check_logit_shift(self, input_ids: torch.Tensor, prompt_mask: torch.Tensor | None = None
                          ) -> LogitShiftMeasurement:
        """Measure which reading of the logits predicts masked tokens of real rows `[b, l]` better,
        and warn with the figures when it contradicts `logit_shift`. Meaningful for a trained model
        (an untrained one decides nothing and warns nothing)."""
        measured = measure_logit_shift(self, input_ids, prompt_mask)
        if measured.decided is not None and measured.decided != self.logit_shift:
            warnings.warn(
                f"logit_shift={self.logit_shift} ({self.logit_shift_source}) contradicts the model's behaviour: "
                f"{measured}. Pass logit_shift={measured.decided} to Denoiser / from_pretrained if the model was "
                "trained that way.", stacklevel=2)
        return measured

    def routed_through(self, module: nn.Module) -> "Denoiser":
        """This denoiser, calling `module` instead (e.g. the DeepSpeed engine that wraps self.model).

        Mask id, vocabulary, position limit and tokenizer are kept; no probe is rerun.
        """
        view = copy.copy(self)
        view._modules = {**self._modules, "model": module}
        return view

    # ------------------------------------------------------------------ properties

    @property
    def mask_token_id(self) -> int:
        return self._mask_token_id

    @mask_token_id.setter
    def mask_token_id(self, value: int) -> None:
        """Every assignment (at construction, or when a loader overrides it) is checked against the vocabulary."""
        value = int(value)
        if not 0 <= value < self.vocab_size:
            raise ValueError(
                f"mask_token_id {value} is outside the model's vocabulary of {self.vocab_size}; "
                "resize the embeddings (model.resize_token_embeddings) or pass the right id"
            )
        self._mask_token_id = value

    @property
    def config(self) -> Any:
        return getattr(self.model, "config", None)

    @property
    def input_embeddings(self) -> nn.Embedding:
        """The token embedding module; soft inputs are mixtures of its rows."""
        embedding = input_embeddings(self.model)
        if embedding is None:
            raise TypeError(
                f"{type(self.model).__name__} exposes no input embedding (get_input_embeddings()); soft inputs "
                "need it. Define get_input_embeddings() on the model."
            )
        return embedding

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":
                raise
            return getattr(self.model, name)

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        *,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Float32 logits, at position i predicting token i (whatever the model's shift), from ids
        `[b, l]` or soft input embeddings `[b, l, d]`: `[b, l, V]`, or with `positions` (a `[b, l]`
        bool mask) `[t, V]` for the selected positions only, in row-major order (== the full
        logits[positions]) and without a float32 copy of the full logits."""
        raw = self.raw_logits(input_ids, attention_mask, inputs_embeds)  # [b, l, V] in the model's dtype
        if positions is None:
            return shift_logits(raw, self.logit_shift).float()  # [b, l, V]
        check_positions(positions, raw.shape[:2])
        row, column = positions.nonzero(as_tuple=True)  # [t] each
        return raw[row, source_positions(column, self.logit_shift)].float()  # [t, V]

    def raw_logits(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The model's own logits `[b, l, V]` in its dtype, its shift not undone (use `forward`)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        length = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        limit = self.max_positions
        if limit is not None and length > limit:
            raise ValueError(
                f"sequence of {length} tokens is longer than the model's {limit} positions; "
                "shorten the prompt or the generation length"
            )
        kwargs = self._mask_kwargs(attention_mask)
        if input_ids is not None:
            output = self.model(input_ids=input_ids, **kwargs)
        else:
            output = self.model(inputs_embeds=inputs_embeds, **kwargs)
        return extract_logits(output)

    def _mask_kwargs(self, attention_mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
        mask = normalise_attention_mask(attention_mask)
        if mask is None:
            return {}
        if self.mask_blind and not self._warned_padding:
            self._warned_padding = True
            logger.warning(
                f"{type(self.model).__name__} ignores the attention mask (mask_blind): the padding of this batch "
                "moves its real positions' logits. Give it rows of one length (DiffusionCollator pads answers with "
                "EOS for such models)."
            )
        return {"attention_mask": mask}

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Hard input embeddings `[b, l, d]` (the soft-input path's one-hot case)."""
        return self.input_embeddings(input_ids)

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The last hidden layer `[b, l, d]` in float32, for heads that read the model's features
        (the learned energy head pools it). Asks the model for `output_hidden_states=True`, which
        every Hugging Face model takes; a module that returns no `.hidden_states` is a TypeError."""
        kwargs = self._mask_kwargs(attention_mask)
        help_text = (f"{type(self.model).__name__} returns no hidden_states for output_hidden_states=True; the energy "
                     "head needs them. Use a Hugging Face model, or accept that flag and return an object with "
                     ".hidden_states (a tuple whose last entry is [b, l, d]).")
        try:
            output = self.model(input_ids=input_ids, output_hidden_states=True, **kwargs)
        except TypeError as error:
            if "output_hidden_states" not in str(error):
                raise
            raise TypeError(help_text) from error
        hidden = getattr(output, "hidden_states", None)
        if not hidden:
            raise TypeError(help_text)
        return hidden[-1].float()

    # ------------------------------------------------------------------ adapters

    def add_lora(self, config: Any = None, **overrides: Any) -> "Denoiser":
        """Attach a LoRA adapter through peft (in place; returns self).

        `config` is a `peft.LoraConfig`; without one, r=8, alpha=16 on the architecture's
        usual target modules (peft's table, else every linear layer but the output head).
        """
        from peft import LoraConfig, get_peft_model

        if config is None:
            settings = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0,
                        "target_modules": lora_target_modules(self.model)}
            settings.update(overrides)
            config = LoraConfig(**settings)
        elif overrides:
            raise ValueError("pass either a LoraConfig or keyword overrides, not both")
        if add_on_names(self.model):  # add-ons (jointobj/model/add_ons.py) train and checkpoint with the adapter
            config.modules_to_save = sorted(set(config.modules_to_save or []) | set(add_on_names(self.model)))
        with quiet_peft():
            self.model = get_peft_model(self.model, config)
        return self

    @property
    def base_model_for_checkpointing(self) -> nn.Module:
        """The model under any adapter (the one whose gradient checkpointing a Trainer turns on)."""
        get_base = getattr(self.model, "get_base_model", None)
        return get_base() if self.has_adapter and callable(get_base) else self.model

    @property
    def supports_gradient_checkpointing(self) -> bool:
        """Whether the model has its own gradient checkpointing (LLaDA's code, for one, has none)."""
        return bool(getattr(self.base_model_for_checkpointing, "supports_gradient_checkpointing", False))

    @property
    def has_adapter(self) -> bool:
        from peft import PeftModel

        return isinstance(self.model, PeftModel)

    @contextlib.contextmanager
    def adapter_disabled(self):
        """Inside the block this denoiser computes the base model's logits: its LoRA adapter (and the add-ons
        trained with it) off, through peft's `disable_adapter`, also when `routed_through` a DeepSpeed engine
        or DDP wrapper (their `.module`). A denoiser without an adapter has no base to compare with: an error."""
        from peft import PeftModel

        model = self.model
        while not isinstance(model, PeftModel) and isinstance(getattr(model, "module", None), nn.Module):
            model = model.module
        if not isinstance(model, PeftModel):
            raise ValueError(f"this denoiser ({type(model).__name__}) has no LoRA adapter, so there is no base model "
                             "to keep close to: call add_lora() first (recipes: --lora_r > 0), or set base_kl_weight 0")
        with model.disable_adapter():
            yield self

    # ------------------------------------------------------------------ save / load

    def save_pretrained(self, directory: str | Path) -> None:
        """Write only what this denoiser owns: the adapter (PEFT format) if it has one, else the full model."""
        directory = Path(directory)
        save = getattr(self.model, "save_pretrained", None)
        if not callable(save):
            raise TypeError(
                f"{type(self.model).__name__} is a plain nn.Module with no save_pretrained; add a LoRA adapter "
                "(saved in PEFT format) or save model.state_dict() yourself"
            )
        directory.mkdir(parents=True, exist_ok=True)
        save(str(directory))
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(directory))
        self.save_settings(directory)

    def save_settings(self, directory: str | Path) -> None:
        """Write jointobj.json (mask id, logit shift, mask-blindness, EOS id), which from_pretrained
        reads back, and the settings of the model's add-ons, which write their own weights here first
        (jointobj/model/add_ons.py). Written last, so its presence also marks a directory whose save finished."""
        settings: dict[str, Any] = dict(self.settings)
        if self.compat_rules:  # a record of how the base was loaded (from_pretrained decides afresh)
            settings["compat_rules"] = list(self.compat_rules)
        add_ons = save_add_ons(self.model, directory)
        if add_ons:
            settings["add_ons"] = add_ons
        path = Path(directory) / CONFIG_NAME
        path.write_text(json.dumps(settings, indent=2) + "\n")

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        lora: Any = None,
        trust_remote_code: bool = False,
        mask_token_id: int | None = None,
        base: "str | Path | nn.Module | Denoiser | None" = None,
        is_trainable: bool = False,
        dtype: torch.dtype | str | None = None,
        logit_shift: int | str | None = None,
        eos_token_id: int | None = None,
        compat: bool = True,
    ) -> "Denoiser":
        """Load a local model directory, or an adapter directory on top of its base model.

        `trust_remote_code` stays off unless you turn it on: a directory whose config or tokenizer
        names its own code (LLaDA, Dream) is refused until you do.

        The mask id is `mask_token_id`, else the one saved in the directory's jointobj.json, else
        the tokenizer's or the config's; for an adapter it is passed on to the base, so a base
        without a mask token of its own loads.

        `base` (adapter directories only): the base model's directory, an nn.Module, or a Denoiser
        without an adapter; default: the base recorded in adapter_config.json. A module or
        Denoiser passed as `base` is modified in place and not copied (peft injects the adapter's
        layers into it; saved add-ons such as an energy head are attached to it; a Denoiser's mask id is
        overridden as above): the returned Denoiser shares its weights. Pass `copy.deepcopy(base)`
        to keep the original untouched.

        `dtype`: a torch dtype or "auto" (the checkpoint's). None leaves it to transformers, whose
        default changed in 5.0 (float32 before, the checkpoint's dtype after).

        `logit_shift`, `eos_token_id`: as for Denoiser; else the values saved in jointobj.json
        (with the mask-blindness found when it was saved), else decided from the model.

        `compat`: remote code written for transformers 4.x (LLaDA's, Dream's) that fails on 5.x in a
        known way is loaded through the rules of jointobj/model/compat.py, applied to the loaded
        classes and config (never to the files); the rules applied are in `compat_rules`, repr() and
        jointobj.json. False turns them off. A failure no rule answers raises RemoteCodeLoadError.
        """
        directory = Path(path)
        check_directory(directory)
        saved = saved_settings(directory)
        # The mask id: explicit, else the one saved beside the weights (jointobj.json), else the tokenizer's / config's.
        explicit = mask_token_id if mask_token_id is not None else saved.get("mask_token_id")
        conventions = given_or_saved_conventions(saved, {"logit_shift": logit_shift, "eos_token_id": eos_token_id})
        add_ons = saved.get("add_ons", {})
        if (directory / ADAPTER_CONFIG).exists():
            if lora is not None:
                raise ValueError(f"{directory} already holds an adapter; load it without lora=, or point at the base "
                                 "model")
            from peft import PeftModel

            denoiser = cls._adapter_base(directory, base, mask_token_id=explicit, trust_remote_code=trust_remote_code,
                                         dtype=dtype, conventions=conventions, compat=compat)
            attach_add_ons(denoiser, add_ons)  # before peft reads the adapter, whose modules_to_save name them
            with quiet_peft():
                denoiser.model = PeftModel.from_pretrained(denoiser.model, str(directory), is_trainable=is_trainable)
            tokenizer = load_tokenizer(directory, trust_remote_code)  # after the base's remote-code refusal
            if tokenizer is not None:
                denoiser.tokenizer = tokenizer
        else:
            model, compat_rules = load_model(directory, trust_remote_code=trust_remote_code, dtype=dtype,
                                             compat=compat)  # refuses remote code first
            denoiser = cls(model, mask_token_id=explicit, tokenizer=load_tokenizer(directory, trust_remote_code),
                           **conventions)
            denoiser.compat_rules = compat_rules
            if logit_shift is None and conventions["logit_shift"] is not None:
                denoiser.logit_shift_source = f"saved in {directory.name}/jointobj.json"
            if lora is not None:
                denoiser.add_lora(lora)
        load_add_ons(denoiser, path, add_ons)
        return denoiser

    @classmethod
    def _adapter_base(cls, directory: Path, base: Any, *, mask_token_id: int | None, trust_remote_code: bool,
                      dtype: torch.dtype | str | None, conventions: dict[str, Any], compat: bool = True
                      ) -> "Denoiser":
        """The Denoiser that the adapter in `directory` goes onto, from `base` (a directory, an nn.Module,
        a Denoiser without an adapter, or None for the base recorded in adapter_config.json).

        `mask_token_id` (the caller's, else the adapter's saved one) is given to the base, so a base
        without a mask token of its own loads; so are `conventions` (logit_shift, eos_token_id,
        mask_blind: the caller's, else the adapter's saved ones; None entries are decided from the
        base). A Denoiser or module passed as `base` is used as is, not copied: peft injects the
        adapter's layers into it.
        """
        base = recorded_base(directory) if base is None else base
        conventions = {name: value for name, value in conventions.items() if value is not None}
        if isinstance(base, cls):
            denoiser = base
        elif isinstance(base, nn.Module):
            denoiser = cls(base, mask_token_id=mask_token_id, check_bidirectional=False, **conventions)
        else:
            denoiser = cls.from_pretrained(base, trust_remote_code=trust_remote_code, mask_token_id=mask_token_id,
                                           dtype=dtype, logit_shift=conventions.get("logit_shift"),
                                           eos_token_id=conventions.get("eos_token_id"), compat=compat)
        if denoiser.has_adapter:
            raise ValueError("base already carries an adapter; pass the model it was built on")
        if mask_token_id is not None:
            denoiser.mask_token_id = mask_token_id  # a passed Denoiser's too; checked against the vocabulary
        denoiser.apply_conventions(conventions)
        return denoiser

    def apply_conventions(self, conventions: dict[str, Any]) -> None:
        """Set saved or given conventions on a built Denoiser (checked as the constructor checks them)."""
        if conventions.get("logit_shift") is not None:
            self.logit_shift, _ = resolve_logit_shift(conventions["logit_shift"], None)
            self.logit_shift_source = "given or saved with the adapter"
        if conventions.get("eos_token_id") is not None:
            self.eos_token_id = resolve_eos_token_id(conventions["eos_token_id"], None, None, self.vocab_size)
        if conventions.get("mask_blind") is not None:
            self.mask_blind = bool(conventions["mask_blind"])
