"""Remote-code test models for the conventions real dLLMs differ in (written here from scratch).

    directory = save_remote_model("dream_style", tmp_path / "dream")    # shifted logits, mask straight to SDPA
    directory = save_remote_model("llada_style", tmp_path / "llada")    # ignores attention_mask, mask id in config only
    Denoiser.from_pretrained(directory, trust_remote_code=True)

Each directory holds config.json with an `auto_map`, the configuration_*.py / modeling_*.py
files (copied there by transformers' save_pretrained), weights, and a word-level tokenizer over
the toy vocabulary plus an `[EOS]` token (the Dream-style one has a mask token, the LLaDA-style
one none).
"""

import importlib
from pathlib import Path

import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import PreTrainedTokenizerFast

from jointobj.toysets.builtin import toy_tokenizer

KINDS = {"dream_style": ("DreamStyleConfig", "DreamStyleModel"), "llada_style": ("LLaDAStyleConfig", "LLaDAStyleModel")}
EOS = "[EOS]"


def conventions_tokenizer(with_mask_token: bool) -> PreTrainedTokenizerFast:
    """The toy vocabulary (same ids) plus [EOS] at the end; a mask token only if asked."""
    vocabulary = dict(toy_tokenizer().get_vocab())
    vocabulary[EOS] = len(vocabulary)
    tokenizer = Tokenizer(WordLevel(vocabulary, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = WhitespaceSplit()
    special = {"pad_token": "[PAD]", "unk_token": "[UNK]", "sep_token": "[SEP]", "eos_token": EOS}
    if with_mask_token:
        special["mask_token"] = "[MASK]"
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **special)


def save_remote_model(kind: str, directory: Path, seed: int = 0, **config) -> Path:
    """A tiny untrained model of `kind` ("dream_style" or "llada_style") saved as a remote-code directory."""
    config_name, model_name = KINDS[kind]
    config_class = getattr(importlib.import_module(f"remote_models.configuration_{kind}"), config_name)
    model_class = getattr(importlib.import_module(f"remote_models.modeling_{kind}"), model_name)
    tokenizer = conventions_tokenizer(with_mask_token=kind == "dream_style")
    mask_id = toy_tokenizer().mask_token_id
    settings = {"vocab_size": len(tokenizer), "mask_token_id": mask_id, "pad_token_id": tokenizer.pad_token_id,
                "eos_token_id": tokenizer.eos_token_id, **config}
    config_class.register_for_auto_class()
    model_class.register_for_auto_class("AutoModel")
    torch.manual_seed(seed)
    model = model_class(config_class(**settings))
    directory = Path(directory)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
