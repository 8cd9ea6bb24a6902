"""Add-ons: modules that ride on a denoiser's bare model and save, load and attach themselves.

    @ADD_ONS.register("energy_head")          # the attribute name on the bare model
    class EnergyHead(AddOn): ...              # settings() and attach(denoiser, settings)

The Denoiser knows add-ons only through the three functions here, never one by name:

- `add_on_names(model)`: the add-ons a model carries; `Denoiser.add_lora` lists them in the
  adapter's `modules_to_save`, so peft trains them and Trainer checkpoints keep them;
- `save_add_ons(model, directory)`: each writes `<name>.safetensors` (its trained weights,
  through peft's wrapper when it has one) and returns its settings, which `Denoiser.save_settings`
  records in jointobj.json under "add_ons";
- `load_add_ons(denoiser, directory, recorded)`: for each recorded add-on, its registered class
  attaches a fresh one from the settings and the weights are read back (`Denoiser.from_pretrained`;
  for an adapter the add-ons are attached to the base before peft reads the adapter, so peft
  wraps them as the modules_to_save it names).

An add-on registered here is attached by its own module (e.g. `jointobj.model.energy_head.attach_energy_head`).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import nn

from jointobj.utils.ranks import zero3_sharded
from jointobj.utils.registry import Registry

__all__ = ["ADD_ONS", "AddOn", "add_on_names", "attach_add_ons", "called_module", "load_add_ons", "put_on_model",
           "trained_add_on",
           "save_add_ons"]


class AddOn(nn.Module):
    """An add-on module: `settings()` (JSON-able, enough to rebuild it) and `attach(denoiser, settings)`
    (build one from those settings, put it on the denoiser's bare model, return it)."""

    def settings(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def attach(cls, denoiser: Any, settings: dict[str, Any]) -> "AddOn":
        raise NotImplementedError


ADD_ONS: Registry[type[AddOn]] = Registry("add-on")


def called_module(model: nn.Module, name: str) -> nn.Module | None:
    """The module called as `name`, the shortest path first: through a PeftModel or a DeepSpeed engine
    the first is the one that runs (peft's ModulesToSaveWrapper dispatches to the trained copy)."""
    found = [(path, module) for path, module in model.named_modules() if path.split(".")[-1] == name]
    return min(found, key=lambda item: len(item[0]))[1] if found else None


def put_on_model(denoiser: Any, name: str, module: AddOn) -> AddOn:
    """Put a fresh add-on on the denoiser's bare model as `name` and make it trainable and saved.

    Before `add_lora` it is a plain submodule (add_lora lists it in modules_to_save); after it, it is
    added to the adapter's modules_to_save here, so peft trains it and saves it with the adapter."""
    if not denoiser.has_adapter:
        setattr(denoiser.model, name, module)
        return module
    peft_model = denoiser.model
    setattr(peft_model.get_base_model(), name, module)
    adapter = peft_model.active_adapter
    config = peft_model.peft_config[adapter]
    _train_and_save_with_adapter(peft_model, adapter, config, name)
    config.modules_to_save = sorted(set(config.modules_to_save or []) | {name})
    return module


def _train_and_save_with_adapter(peft_model: nn.Module, adapter: str, config: Any, name: str) -> None:
    """Wrap the freshly attached add-on `name` as one of the adapter's modules_to_save (trained, and saved
    in the adapter's weights), as peft does for the modules a LoraConfig lists.

    peft's public route is `peft.utils.set_additional_trainable_modules`; it is given a copy of the
    config that lists only this add-on, so the adapter's other extra modules are not wrapped twice.
    Older peft has only the private `_set_trainable`; if neither exists, a clear error.
    """
    try:
        from peft.utils import set_additional_trainable_modules
    except ImportError:
        set_additional_trainable_modules = None
    if set_additional_trainable_modules is not None:
        only_this = copy.copy(config)
        only_this.modules_to_save = [name]
        for field in ("modules_to_tie", "trainable_token_indices"):  # handled when the adapter was built
            if hasattr(only_this, field):
                setattr(only_this, field, None)
        set_additional_trainable_modules(peft_model, only_this, {}, adapter)
        return
    try:
        from peft.utils.other import _set_trainable
    except ImportError as error:
        raise ImportError(
            f"this peft version offers no way to add a module to an existing adapter's modules_to_save; attach the "
            f"{name} before add_lora (it then goes through LoraConfig.modules_to_save), or upgrade peft"
        ) from error
    _set_trainable(peft_model, adapter, module_names=[name], inference_mode=config.inference_mode)


def _trained(module: nn.Module) -> nn.Module:
    """Through peft's ModulesToSaveWrapper, the active adapter's copy (the one trained); else the module."""
    copies = getattr(module, "modules_to_save", None)
    if not isinstance(copies, nn.ModuleDict) or not copies:
        return module
    active = getattr(module, "active_adapter", None)
    active = active[0] if isinstance(active, (list, tuple)) else active
    return copies[active] if active in copies else next(iter(copies.values()))


def trained_add_on(model: nn.Module, name: str) -> nn.Module | None:
    """The add-on `name` itself, to call its methods: through peft's wrapper, the copy the adapter trains."""
    module = called_module(model, name)
    return None if module is None else _trained(module)


def _instance(model: nn.Module, name: str) -> AddOn | None:
    """The registered add-on class's first instance in the model (its settings hold for every copy)."""
    return next((m for m in model.modules() if isinstance(m, ADD_ONS.get(name))), None)


def add_on_names(model: nn.Module) -> list[str]:
    """Registered add-ons the model carries (their attribute names), sorted."""
    return sorted(name for name in ADD_ONS if _instance(model, name) is not None)


def save_add_ons(model: nn.Module, directory: str | Path) -> dict[str, dict[str, Any]]:
    """Write each add-on's trained weights to `directory/<name>.safetensors`; returns {name: settings}.

    ZeRO-3 shards are gathered first (every rank must call this then; the objectives that train
    add-ons refuse ZeRO-3 on several ranks)."""
    recorded = {}
    for name in add_on_names(model):
        module = _trained(called_module(model, name))
        if zero3_sharded(module):
            import deepspeed  # only under ZeRO-3, where it is installed and running

            with deepspeed.zero.GatheredParameters(list(module.parameters())):
                state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
        else:
            state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        save_file(state, str(Path(directory) / f"{name}.safetensors"))
        recorded[name] = _instance(model, name).settings()
    return recorded


def attach_add_ons(denoiser: Any, recorded: dict[str, dict[str, Any]]) -> None:
    """Attach a fresh add-on for each one `recorded` (jointobj.json's "add_ons") that the model lacks."""
    for name, settings in recorded.items():
        if called_module(denoiser.model, name) is None:
            ADD_ONS.get(name).attach(denoiser, settings)


def load_add_ons(denoiser: Any, directory: str | Path, recorded: dict[str, dict[str, Any]]) -> None:
    """Attach every add-on `recorded` (unless attached already) and read its weights from `directory`."""
    for name in recorded:
        path = Path(directory) / f"{name}.safetensors"
        if not path.exists():
            raise FileNotFoundError(f"{directory} records the add-on {name!r} but has no {path.name}; re-save the "
                                    "model with the add-on attached")
    attach_add_ons(denoiser, recorded)
    for name in recorded:
        module = _trained(called_module(denoiser.model, name))
        device = next(module.parameters()).device
        module.load_state_dict(load_file(str(Path(directory) / f"{name}.safetensors"), device=str(device)))
