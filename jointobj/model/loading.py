"""Loading a Denoiser from a local directory: full masked LMs, remote-code dLLMs, PEFT adapters.

Nothing here downloads: every path is a local directory. Weights are read by transformers /
peft (safetensors first; `.bin` through `torch.load(weights_only=True)`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from jointobj.model.conventions import CONFIG_NAME, resolve_eos_token_id, resolve_logit_shift

if TYPE_CHECKING:
    from jointobj.model.denoiser import Denoiser

ADAPTER_CONFIG = "adapter_config.json"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); fix or re-save the directory") from error


CONVENTIONS = ("logit_shift", "eos_token_id", "mask_blind")  # saved in jointobj.json beside the mask id


def _saved_settings(directory: Path) -> dict[str, Any]:
    """jointobj.json's settings ({} when the directory has none)."""
    config = directory / CONFIG_NAME
    return _read_json(config) if config.exists() else {}


def _saved_mask_token_id(directory: Path) -> int | None:
    return _saved_settings(directory).get("mask_token_id")


def _conventions(directory: Path, given: dict[str, Any]) -> dict[str, Any]:
    """The caller's conventions, else the ones saved in `directory` (None: decide from the model)."""
    saved = _saved_settings(directory)
    return {name: given.get(name) if given.get(name) is not None else saved.get(name) for name in CONVENTIONS}


def _refuse_remote_code(directory: Path, trust_remote_code: bool, files: tuple[str, ...]) -> None:
    """Our refusal, before transformers reads anything, of a config or tokenizer that ships its own code."""
    if trust_remote_code:
        return
    for name in files:
        path = directory / name
        auto_map = _read_json(path).get("auto_map") if path.exists() else None
        if auto_map:
            what = "modeling" if name == "config.json" else "tokenizer"
            classes = sorted(auto_map) if isinstance(auto_map, dict) else auto_map
            raise ValueError(
                f"{directory} ships its own {what} code ({name} auto_map: {classes}); jointobj does not run it "
                "unless you opt in with trust_remote_code=True (recipes: --trust_remote_code). Read that code first."
            )


def load_tokenizer(directory: Path, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    if not any((directory / name).exists() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt")):
        return None
    _refuse_remote_code(directory, trust_remote_code, ("tokenizer_config.json",))
    return AutoTokenizer.from_pretrained(str(directory), trust_remote_code=trust_remote_code)


def _check_directory(directory: Path) -> None:
    if not directory.is_dir():
        raise FileNotFoundError(
            f"model directory {directory} does not exist; jointobj loads local directories only "
            "(save one with model.save_pretrained(DIR) or download it beforehand)"
        )


def load_model(directory: Path, *, trust_remote_code: bool = False,
               dtype: torch.dtype | str | None = None) -> nn.Module:
    """The masked-LM model in `directory` (a `*ForMaskedLM`, or an `AutoModel` with an LM head via remote code).

    `dtype`: a torch dtype, or "auto" for the checkpoint's own; None leaves it to transformers
    (float32 before 5.0, the checkpoint's dtype from 5.0 on), so pass one to be sure.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    _check_directory(directory)
    config_path = directory / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{directory} has no config.json; it is not a saved Hugging Face model directory")
    _refuse_remote_code(directory, trust_remote_code, ("config.json",))
    auto_map = _read_json(config_path).get("auto_map", {})
    config = AutoConfig.from_pretrained(str(directory), trust_remote_code=trust_remote_code)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if dtype is not None:
        kwargs["dtype"] = dtype
    model_type = getattr(config, "model_type", None)
    if "AutoModelForMaskedLM" in auto_map or model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return AutoModelForMaskedLM.from_pretrained(str(directory), config=config, **kwargs)
    if "AutoModel" in auto_map:  # LLaDA / Dream register their LM under AutoModel
        return AutoModel.from_pretrained(str(directory), config=config, **kwargs)
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ValueError(
            f"{directory} holds a causal LM ({model_type}); masked diffusion needs a bidirectional masked LM "
            "(BERT, ModernBERT, RoBERTa, LLaDA, Dream, ...)"
        )
    raise ValueError(
        f"{directory} ({model_type}) has no masked-LM head: transformers has no *ForMaskedLM for it and its "
        "config registers none; save a *ForMaskedLM model there"
    )


def load_masked_lm(
    cls: type["Denoiser"],
    directory: Path,
    *,
    lora: Any = None,
    trust_remote_code: bool = False,
    mask_token_id: int | None = None,
    base: "str | Path | nn.Module | Denoiser | None" = None,
    is_trainable: bool = False,
    dtype: torch.dtype | str | None = None,
    logit_shift: int | str | None = None,
    eos_token_id: int | None = None,
    before_adapter: Callable[["Denoiser"], None] | None = None,
) -> "Denoiser":
    """Build a Denoiser from a local full-model directory or an adapter directory (see Denoiser.from_pretrained).

    `before_adapter(base)` runs on an adapter's base before peft reads the adapter (e.g. to attach
    the add-ons the adapter's modules_to_save name)."""
    _check_directory(directory)
    # The mask id: explicit, else the one saved beside the weights (jointobj.json), else the tokenizer's / config's.
    explicit = mask_token_id if mask_token_id is not None else _saved_settings(directory).get("mask_token_id")
    conventions = _conventions(directory, {"logit_shift": logit_shift, "eos_token_id": eos_token_id})
    if (directory / ADAPTER_CONFIG).exists():
        if lora is not None:
            raise ValueError(f"{directory} already holds an adapter; load it without lora=, or point at the base model")
        base_denoiser = adapter_base(cls, directory, base, mask_token_id=explicit,
                                     trust_remote_code=trust_remote_code, dtype=dtype, conventions=conventions)
        from peft import PeftModel

        if before_adapter is not None:
            before_adapter(base_denoiser)
        base_denoiser.model = PeftModel.from_pretrained(base_denoiser.model, str(directory), is_trainable=is_trainable)
        tokenizer = load_tokenizer(directory, trust_remote_code)  # after the base's remote-code refusal
        if tokenizer is not None:
            base_denoiser.tokenizer = tokenizer
        return base_denoiser
    model = load_model(directory, trust_remote_code=trust_remote_code, dtype=dtype)  # refuses remote code first
    tokenizer = load_tokenizer(directory, trust_remote_code)
    denoiser = cls(model, mask_token_id=explicit, tokenizer=tokenizer, **conventions)
    if logit_shift is None and conventions["logit_shift"] is not None:
        denoiser.logit_shift_source = f"saved in {directory.name}/jointobj.json"
    if lora is not None:
        denoiser.add_lora(lora)
    return denoiser


def adapter_base(
    cls: type["Denoiser"],
    directory: Path,
    base: Any,
    *,
    mask_token_id: int | None,
    trust_remote_code: bool = False,
    dtype: torch.dtype | str | None = None,
    conventions: dict[str, Any] | None = None,
) -> "Denoiser":
    """The Denoiser that the adapter in `directory` goes onto, from `base` (a directory, an nn.Module,
    a Denoiser without an adapter, or None for the base recorded in adapter_config.json).

    `mask_token_id` (the caller's, else the adapter's saved one) is given to the base, so a base
    without a mask token of its own loads; so are `conventions` (logit_shift, eos_token_id,
    mask_blind: the caller's, else the adapter's saved ones; None entries are decided from the
    base). A Denoiser or module passed as `base` is used as is,
    not copied: peft injects the adapter's layers into it.
    """
    if base is None:
        recorded = _read_json(directory / ADAPTER_CONFIG).get("base_model_name_or_path")
        if not recorded:
            raise ValueError(f"{directory} is an adapter with no recorded base model; pass base=DIR or base=model")
        if not Path(recorded).is_dir():
            raise FileNotFoundError(
                f"{directory} is an adapter whose recorded base model {recorded} is not a local directory here; "
                "pass the base explicitly: Denoiser.from_pretrained(adapter_dir, base=DIR) (or base=model)"
            )
        base = recorded
    conventions = {name: value for name, value in (conventions or {}).items() if value is not None}
    if isinstance(base, cls):
        denoiser = base
    elif isinstance(base, nn.Module):
        denoiser = cls(base, mask_token_id=mask_token_id, check_bidirectional=False, **conventions)
    else:
        denoiser = load_masked_lm(cls, Path(base), trust_remote_code=trust_remote_code, mask_token_id=mask_token_id,
                                  dtype=dtype, logit_shift=conventions.get("logit_shift"),
                                  eos_token_id=conventions.get("eos_token_id"))
    if denoiser.has_adapter:
        raise ValueError("base already carries an adapter; pass the model it was built on")
    if mask_token_id is not None:
        denoiser.mask_token_id = mask_token_id  # a passed Denoiser's too; checked against the vocabulary
    apply_conventions(denoiser, conventions)
    return denoiser


def apply_conventions(denoiser: "Denoiser", conventions: dict[str, Any]) -> None:
    """Set saved or given conventions on a built Denoiser (checked as the constructor checks them)."""
    if conventions.get("logit_shift") is not None:
        denoiser.logit_shift, _ = resolve_logit_shift(conventions["logit_shift"], None)
        denoiser.logit_shift_source = "given or saved with the adapter"
    if conventions.get("eos_token_id") is not None:
        denoiser.eos_token_id = resolve_eos_token_id(conventions["eos_token_id"], None, None, denoiser.vocab_size)
    if conventions.get("mask_blind") is not None:
        denoiser.mask_blind = bool(conventions["mask_blind"])
