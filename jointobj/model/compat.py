"""Compatibility rules: remote-code models written for transformers 4.x, loaded on transformers 5.x.

LLaDA's and Dream's published modeling code (what `trust_remote_code` runs) was written for
transformers 4.x; on 5.x it fails before jointobj sees the model. When a remote-code load fails,
or the loaded classes or config show one of the known 4.x habits, jointobj applies the matching
rules below and loads again. Each rule is one function, decided by behaviour (the exception or the
attribute), never by a model name. The rules change the *loaded* classes (through a subclass that
keeps the original's name and module, so a saved model still points at the user's own code) or
the loaded config / model object; the files in the user's model directory are only read.

    model, applied = load_remote_code_model(auto_model, directory, config, kwargs)  # applied: rule names

`compat=False` (Denoiser.from_pretrained, the recipes' --no_compat) turns every rule off. A failure
no rule answers ends in RemoteCodeLoadError, which names the class, the installed transformers,
the range jointobj is tested on and the ways on, with the traceback saved to a file it names.
"""

from __future__ import annotations

import inspect
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

__all__ = ["TESTED_TRANSFORMERS", "RULES", "RemoteCodeLoadError", "load_remote_code_model", "remote_code_error",
           "restore_use_cache", "call_post_init", "accept_tie_weights_keywords", "default_rope_initialiser",
           "tied_weights_keys_as_mapping", "recompute_rope_inv_freq"]

# The transformers versions CI runs jointobj's tests on: setup.cfg's lower bound and the newest release tested.
TESTED_TRANSFORMERS = ("4.57.1", "5.25.0")


class RemoteCodeLoadError(RuntimeError):
    """A model's own code (trust_remote_code) failed to load in a way no compatibility rule answers."""


# ---------------------------------------------------------------- rules on the config (before the model loads)

def restore_use_cache(config: Any, directory: Path) -> bool:
    """LLaDA: its config takes `use_cache` and hands it to PretrainedConfig, which kept it as an
    attribute before 5.0 and drops it from 5.0 on; LLaDA's forward reads `self.config.use_cache`
    and fails with an AttributeError at the first call. Triggered when the loaded config lacks the
    attribute while config.json (or the config class's own default) has a value: that value is
    set on the loaded config object."""
    if hasattr(config, "use_cache"):
        return False
    saved = _read_config_json(directory)
    if "use_cache" in saved:
        value = saved["use_cache"]
    else:
        parameter = inspect.signature(type(config).__init__).parameters.get("use_cache")
        if parameter is None or parameter.default is inspect.Parameter.empty:
            return False
        value = parameter.default
    config.use_cache = value
    return True


# ---------------------------------------------------------------- rules on the model class (a named subclass)

def call_post_init(model_class: type, error: BaseException | None) -> type | None:
    """LLaDA: its `__init__` never calls `post_init()` (4.x did not need it), so 5.x's loader,
    which reads the tied-weights bookkeeping `post_init` sets up, fails with AttributeError
    `... has no attribute 'all_tied_weights_keys'`. Triggered by that error; the subclass calls
    `post_init()` after the original `__init__` when it did not."""
    if not (isinstance(error, AttributeError) and "all_tied_weights_keys" in str(error)):
        return None

    def __init__(self, *args, **kwargs):
        model_class.__init__(self, *args, **kwargs)
        if "all_tied_weights_keys" not in self.__dict__:
            self.post_init()

    return _subclass(model_class, {"__init__": __init__})


def accept_tie_weights_keywords(model_class: type, error: BaseException | None) -> type | None:
    """LLaDA: it overrides `tie_weights(self)` with the 4.x signature; 5.x's loader calls
    `tie_weights(missing_keys=..., recompute_mapping=...)`, a TypeError. Triggered when
    transformers' own `tie_weights` takes keywords the class's override does not; the subclass
    takes them and calls the model's own `tie_weights()`."""
    from transformers import PreTrainedModel

    wanted = [name for name in inspect.signature(PreTrainedModel.tie_weights).parameters if name != "self"]
    accepted = inspect.signature(model_class.tie_weights).parameters
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in accepted.values()):
        return None
    if not [name for name in wanted if name not in accepted]:
        return None

    def tie_weights(self, *args, **kwargs):
        return model_class.tie_weights(self)

    return _subclass(model_class, {"tie_weights": tie_weights})


def default_rope_initialiser(model_class: type, error: BaseException | None) -> type | None:
    """Dream: its rotary embedding looks up `ROPE_INIT_FUNCTIONS[rope_type]` with rope_type
    "default" (no rope_scaling); 5.x removed that entry, so building the model is a KeyError
    'default'. Triggered by that error while transformers' table has no "default"; the subclass
    builds the model with its modules' own `ROPE_INIT_FUNCTIONS` name pointing, for the length of
    `__init__`, at a copy of the table that has "default" (the plain inverse frequencies)."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    if not (isinstance(error, KeyError) and error.args == ("default",)) or "default" in ROPE_INIT_FUNCTIONS:
        return None

    def __init__(self, *args, **kwargs):
        with _default_rope_in(model_class):
            model_class.__init__(self, *args, **kwargs)

    return _subclass(model_class, {"__init__": __init__})


def tied_weights_keys_as_mapping(model_class: type, error: BaseException | None) -> type | None:
    """Dream: `_tied_weights_keys = ["lm_head.weight"]`, the 4.x list of tied names; 5.x reads a
    `{target: source}` mapping (`.keys()`, `.items()`), so saving (and loading with tied embeddings)
    fails with `'list' object has no attribute 'keys'`. Triggered by the list while transformers
    has the mapping API (`get_expanded_tied_weights_keys`); the subclass maps each listed name to
    the input embeddings' weight."""
    from transformers import PreTrainedModel

    listed = model_class.__dict__.get("_tied_weights_keys", getattr(model_class, "_tied_weights_keys", None))
    if not isinstance(listed, (list, tuple)) or not hasattr(PreTrainedModel, "get_expanded_tied_weights_keys"):
        return None
    listed = tuple(listed)

    def _tied_weights_keys(self) -> dict[str, str]:
        embeddings = self.get_input_embeddings()
        source = next((f"{name}.weight" for name, module in self.named_modules() if module is embeddings), None)
        return {} if source is None else {target: source for target in listed if target != source}

    return _subclass(model_class, {"_tied_weights_keys": property(_tied_weights_keys)})


# ---------------------------------------------------------------- rules on the loaded model

def recompute_rope_inv_freq(model: nn.Module) -> bool:
    """Dream: the rotary `inv_freq` is a non-persistent buffer (not in the weights) that its own
    `_init_weights` leaves alone; 5.x's loader allocates such buffers empty and relies on
    `_init_weights` to fill them, so the rotary angles are whatever memory held. Triggered per
    module holding a non-persistent `inv_freq` and its `rope_init_fn` when the buffer differs from
    what that function gives (or is not finite); the buffer is recomputed, as 4.x built it."""
    changed = False
    for module in model.modules():
        init = getattr(module, "rope_init_fn", None)
        buffer = module._buffers.get("inv_freq")
        if buffer is None or "inv_freq" not in module._non_persistent_buffers_set or not callable(init):
            continue
        if buffer.device.type == "meta":
            continue
        expected, _ = init(module.config, buffer.device, **getattr(module, "rope_kwargs", {}))
        expected = expected.to(device=buffer.device, dtype=buffer.dtype)
        if torch.isfinite(buffer).all() and torch.allclose(buffer.float(), expected.float(), rtol=1e-4, atol=0):
            continue
        module.register_buffer("inv_freq", expected, persistent=False)
        if hasattr(module, "original_inv_freq"):
            module.original_inv_freq = module.inv_freq
        changed = True
    return changed


CONFIG_RULES: tuple[Callable[[Any, Path], bool], ...] = (restore_use_cache,)
CLASS_RULES: tuple[Callable[[type, BaseException | None], type | None], ...] = (
    call_post_init, accept_tie_weights_keywords, default_rope_initialiser, tied_weights_keys_as_mapping)
MODEL_RULES: tuple[Callable[[nn.Module], bool], ...] = (recompute_rope_inv_freq,)
RULES = tuple(rule.__name__ for rule in (*CONFIG_RULES, *CLASS_RULES, *MODEL_RULES))


def load_remote_code_model(auto_class: Any, directory: Path, config: Any, kwargs: dict[str, Any], *,
                           compat: bool = True) -> tuple[nn.Module, tuple[str, ...]]:
    """`auto_class.from_pretrained(directory, config=config, **kwargs)` for a model that ships its own
    code, with the rules above applied where they are triggered (all off with compat=False). Returns
    the model and the names of the rules applied, in the order applied."""
    class_name = _auto_map_class(directory, auto_class)
    enabled = () if not compat else tuple(rule.__name__ for rule in (*CONFIG_RULES, *CLASS_RULES, *MODEL_RULES))
    applied = [rule.__name__ for rule in CONFIG_RULES if rule.__name__ in enabled and rule(config, directory)]
    model_class = None
    error: BaseException | None = None
    for _ in range(len(CLASS_RULES) + 1):
        try:
            if model_class is None:
                model = auto_class.from_pretrained(str(directory), config=config, **kwargs)
            else:
                model = model_class.from_pretrained(str(directory), config=config,
                                                    **{k: v for k, v in kwargs.items() if k != "trust_remote_code"})
            break
        except Exception as caught:  # noqa: BLE001 - any failure of the model's own code is examined, then re-raised
            error = caught
            if not enabled:
                raise remote_code_error(directory, class_name, caught, applied, compat) from caught
            if model_class is None:
                model_class = _model_class(directory, class_name)
            patched = model_class
            for rule in CLASS_RULES:
                if rule.__name__ in enabled and rule.__name__ not in applied:
                    subclass = rule(patched, caught)
                    if subclass is not None:
                        patched = subclass
                        applied.append(rule.__name__)
            if patched is model_class:
                raise remote_code_error(directory, class_name, caught, applied, compat) from caught
            model_class = patched
    else:  # pragma: no cover - every round applies a new rule, so the loop ends first
        raise remote_code_error(directory, class_name, error, applied, compat) from error
    applied += [rule.__name__ for rule in MODEL_RULES if rule.__name__ in enabled and rule(model)]
    return model, tuple(applied)


# ---------------------------------------------------------------- helpers

def _subclass(model_class: type, body: dict[str, Any]) -> type:
    """A subclass with the original's name, qualified name and module (so save_pretrained copies the
    user's own code file and writes the original class name)."""
    body = {**body, "__module__": model_class.__module__, "__qualname__": model_class.__qualname__,
            "__doc__": model_class.__doc__}
    subclass = type(model_class.__name__, (model_class,), body)
    if getattr(model_class, "_auto_class", None) is None:
        subclass._auto_class = "AutoModel"
    return subclass


@contextmanager
def _default_rope_in(model_class: type) -> Iterator[None]:
    """While the block runs, the `ROPE_INIT_FUNCTIONS` name in the modules of `model_class`'s own
    (non-transformers) classes points at a copy of the table with a "default" entry."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    table = {**ROPE_INIT_FUNCTIONS, "default": _default_rope_parameters}
    own = [cls.__module__ for cls in model_class.__mro__ if not cls.__module__.startswith(("transformers.", "torch."))]
    modules = {sys.modules[name] for name in own if name in sys.modules}
    swapped = [(module, module.ROPE_INIT_FUNCTIONS) for module in modules
               if getattr(module, "ROPE_INIT_FUNCTIONS", None) is ROPE_INIT_FUNCTIONS]
    for module, _ in swapped:
        module.ROPE_INIT_FUNCTIONS = table
    try:
        yield
    finally:
        for module, original in swapped:
            module.ROPE_INIT_FUNCTIONS = original


def _default_rope_parameters(config: Any, device: Any = None, seq_len: int | None = None, **_: Any
                             ) -> tuple[torch.Tensor, float]:
    """The plain rotary inverse frequencies 1 / theta^(2i / d) over the (partial) head dimension,
    and an attention scaling of 1: what 4.x's "default" entry computed."""
    parameters = getattr(config, "rope_parameters", None) or {}
    theta = getattr(config, "rope_theta", None) or parameters.get("rope_theta", 10000.0)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    dim = int(head_dim * getattr(config, "partial_rotary_factor", parameters.get("partial_rotary_factor", 1.0)))
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / dim  # [dim / 2]
    return 1.0 / (theta ** exponents), 1.0


def _read_config_json(directory: Path) -> dict[str, Any]:
    import json

    path = Path(directory) / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _auto_map_class(directory: Path, auto_class: Any) -> str:
    auto_map = _read_config_json(directory).get("auto_map", {})
    name = getattr(auto_class, "__name__", "AutoModel")
    value = auto_map.get(name) if isinstance(auto_map, dict) else None
    if isinstance(value, (list, tuple)):
        value = value[0]
    return str(value or f"{name} (no auto_map entry)")


def _model_class(directory: Path, class_name: str) -> type:
    """The class transformers loads for `class_name` from the directory's code (its dynamic module)."""
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    return get_class_from_dynamic_module(class_name, str(directory))


def remote_code_error(directory: Path, class_name: str, error: BaseException | None, applied: list[str],
                      compat: bool) -> RemoteCodeLoadError:
    """The error for a remote-code load no rule answered; the traceback is saved to a file it names."""
    import transformers

    saved = Path(tempfile.gettempdir()) / f"jointobj-remote-code-{time.strftime('%Y%m%d-%H%M%S')}-{id(error):x}.txt"
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__)) if error else "(no traceback)"
    saved.write_text(f"model directory: {directory}\nauto_map class: {class_name}\n"
                     f"transformers {transformers.__version__}, torch {torch.__version__}, "
                     f"python {sys.version.split()[0]}\ncompatibility rules applied: {applied or 'none'}"
                     f"{'' if compat else ' (compat=False: rules off)'}\n\n{text}")
    if not compat:
        rules = "jointobj's compatibility rules were off (compat=False; recipes: --no_compat); try with them on, or "
    elif applied:
        rules = f"jointobj's compatibility rules ({', '.join(applied)}) did not cover this failure; "
    else:
        rules = "no jointobj compatibility rule matches this failure; "
    low, high = TESTED_TRANSFORMERS
    return RemoteCodeLoadError(
        f"{directory}: the model's own code ({class_name}, run with trust_remote_code) failed to load on "
        f"transformers {transformers.__version__}: {type(error).__name__}: {error}. jointobj is tested on "
        f"transformers {low} to {high}. {rules}ways on: install transformers 4.57.x "
        f"(pip install 'transformers>=4.57.1,<4.58'), the last line on which such 4.x-era code (LLaDA, Dream) runs "
        f"unmodified; or open an issue on jointobj with the traceback, saved to {saved}"
    )
