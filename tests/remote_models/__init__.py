"""Remote-code test models for the conventions real dLLMs differ in (written here from scratch).

    directory = save_remote_model("dream_style", tmp_path / "dream")    # shifted logits, mask straight to SDPA
    directory = save_remote_model("llada_style", tmp_path / "llada")    # ignores attention_mask, mask id in config only
    Denoiser.from_pretrained(directory, trust_remote_code=True)

    directory = save_remote_model("llada_legacy", tmp_path / "llada")   # the same conventions, written the 4.x way
    directory = save_remote_model("dream_legacy", tmp_path / "dream")   # (see LEGACY_QUIRKS)

Each directory holds config.json with an `auto_map`, the configuration_*.py / modeling_*.py
files (copied there by transformers' save_pretrained), weights, and a word-level tokenizer over
the toy vocabulary plus an `[EOS]` token (the Dream-style one has a mask token, the LLaDA-style
one none).
"""

import contextlib
import importlib
import inspect
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_model
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import PreTrainedTokenizerFast

from jointobj.toysets.builtin import toy_tokenizer

KINDS = {"dream_style": ("DreamStyleConfig", "DreamStyleModel"), "llada_style": ("LLaDAStyleConfig", "LLaDAStyleModel"),
         "dream_legacy": ("DreamLegacyConfig", "DreamLegacyModel"),
         "llada_legacy": ("LLaDALegacyConfig", "LLaDALegacyModel")}
# The transformers-4.x habits of each legacy kind, each answered by one rule of jointobj.model.compat on 5.x.
LEGACY_QUIRKS = {
    "llada_legacy": {"no post_init": "call_post_init", "tie_weights() without keywords": "accept_tie_weights_keywords",
                     "forward reads config.use_cache": "restore_use_cache"},
    "dream_legacy": {"ROPE_INIT_FUNCTIONS['default']": "default_rope_initialiser",
                     "list _tied_weights_keys": "tied_weights_keys_as_mapping",
                     "non-persistent inv_freq its _init_weights skips": "recompute_rope_inv_freq"},
}
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


def remote_model(kind: str, seed: int = 0, **config) -> torch.nn.Module:
    """The tiny untrained model of `kind` (a key of KINDS) that save_remote_model(kind, DIR, seed) saves."""
    config_name, model_name = KINDS[kind]
    config_class = getattr(importlib.import_module(f"remote_models.configuration_{kind}"), config_name)
    model_class = getattr(importlib.import_module(f"remote_models.modeling_{kind}"), model_name)
    tokenizer = conventions_tokenizer(with_mask_token=kind.startswith("dream"))
    settings = {"vocab_size": len(tokenizer), "mask_token_id": toy_tokenizer().mask_token_id,
                "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id, **config}
    torch.manual_seed(seed)
    with default_rope_for(model_class):
        return model_class(config_class(**settings))


def save_remote_model(kind: str, directory: Path, seed: int = 0, **config) -> Path:
    """A tiny untrained model of `kind` (a key of KINDS) saved as a remote-code directory."""
    model = remote_model(kind, seed, **config)
    directory = Path(directory)
    if kind in LEGACY_QUIRKS:
        save_legacy(model, directory)
    else:
        type(model.config).register_for_auto_class()
        type(model).register_for_auto_class("AutoModel")
        model.save_pretrained(directory)
    conventions_tokenizer(with_mask_token=kind.startswith("dream")).save_pretrained(directory)
    return directory


@contextlib.contextmanager
def default_rope_for(model_class: type):
    """Build a legacy model on any transformers line: 5.x's ROPE_INIT_FUNCTIONS has no "default",
    so its module gets one (the plain inverse frequencies) while the block runs. Only for writing
    test directories; loading them on 5.x is jointobj.model.compat's job."""
    module = sys.modules[model_class.__module__]
    table = getattr(module, "ROPE_INIT_FUNCTIONS", None)
    if table is None or "default" in table:
        yield
        return

    def default(config, device=None, **_):
        dim = config.hidden_size // config.num_attention_heads
        return 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, device=device).float() / dim)), 1.0

    module.ROPE_INIT_FUNCTIONS = {**table, "default": default}
    try:
        yield
    finally:
        module.ROPE_INIT_FUNCTIONS = table


def save_legacy(model: torch.nn.Module, directory: Path) -> None:
    """A remote-code directory written without the model's save_pretrained (5.x's refuses these 4.x-style
    models, as it would LLaDA's and Dream's): config.json with its auto_map, the two code files, and
    model.safetensors (what 4.x's save_pretrained writes for them)."""
    directory.mkdir(parents=True, exist_ok=True)
    config = model.config
    config_file, model_file = (Path(inspect.getfile(type(thing))) for thing in (config, model))
    config.auto_map = {"AutoConfig": f"{config_file.stem}.{type(config).__name__}",
                       "AutoModel": f"{model_file.stem}.{type(model).__name__}"}
    config.architectures = [type(model).__name__]
    config.save_pretrained(directory)
    for file in (config_file, model_file):
        shutil.copy(file, directory / file.name)
    save_model(model, str(directory / "model.safetensors"), metadata={"format": "pt"})
