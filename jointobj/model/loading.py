"""Reading a local model directory: the masked LM (or remote-code dLLM), its tokenizer, jointobj.json's settings,
an adapter's recorded base. Denoiser.from_pretrained assembles these; nothing here knows the Denoiser.

Nothing here downloads: every path is a local directory. Weights are read by transformers /
peft (safetensors first; `.bin` through `torch.load(weights_only=True)`).
"""

from __future__ import annotations

import json
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from jointobj.model.conventions import CONFIG_NAME

ADAPTER_CONFIG = "adapter_config.json"


@contextmanager
def quiet_peft() -> Iterator[None]:
    """Around our peft calls: peft (0.18) reads `model.is_gradient_checkpointing`, which transformers 5.x
    renamed `is_activation_checkpointing` with a FutureWarning on every adapter built or loaded. Only that
    message is silenced; on transformers 4.x the name is current and nothing warns."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); fix or re-save the directory") from error


CONVENTIONS = ("logit_shift", "eos_token_id", "mask_blind")  # saved in jointobj.json beside the mask id


def saved_settings(directory: Path) -> dict[str, Any]:
    """jointobj.json's settings ({} when the directory has none)."""
    config = directory / CONFIG_NAME
    return read_json(config) if config.exists() else {}


def given_or_saved_conventions(saved: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """The caller's conventions, else the `saved` ones (None: decide from the model)."""
    return {name: given.get(name) if given.get(name) is not None else saved.get(name) for name in CONVENTIONS}


def recorded_base(directory: Path) -> str:
    """The base model directory an adapter in `directory` records (adapter_config.json), checked to exist here."""
    recorded = read_json(directory / ADAPTER_CONFIG).get("base_model_name_or_path")
    if not recorded:
        raise ValueError(f"{directory} is an adapter with no recorded base model; pass base=DIR or base=model")
    if not Path(recorded).is_dir():
        raise FileNotFoundError(
            f"{directory} is an adapter whose recorded base model {recorded} is not a local directory here; "
            "pass the base explicitly: Denoiser.from_pretrained(adapter_dir, base=DIR) (or base=model)"
        )
    return recorded


def _refuse_remote_code(directory: Path, trust_remote_code: bool, files: tuple[str, ...]) -> None:
    """Our refusal, before transformers reads anything, of a config or tokenizer that ships its own code."""
    if trust_remote_code:
        return
    for name in files:
        path = directory / name
        auto_map = read_json(path).get("auto_map") if path.exists() else None
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


def check_directory(directory: Path) -> None:
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

    check_directory(directory)
    config_path = directory / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{directory} has no config.json; it is not a saved Hugging Face model directory")
    _refuse_remote_code(directory, trust_remote_code, ("config.json",))
    auto_map = read_json(config_path).get("auto_map", {})
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
