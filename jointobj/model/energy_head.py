"""The learned energy head: a scalar MLP on the denoiser's pooled hidden states.

    from jointobj.model.energy_head import attach_energy_head, head_energy
    attach_energy_head(denoiser, width=64)        # before or after add_lora: peft saves it with the adapter
    energy = head_energy(denoiser, ids, attention_mask)     # [b] float32, lower = more data-like

E(x) = MLP(mean over the non-padding positions of the last hidden layer). The head lives on
the bare model as `model.energy_head`, so every route that trains or saves the model carries it:

- with LoRA it is listed in `LoraConfig.modules_to_save`: peft trains a copy of it beside the
  adapter, writes it into `adapter_model.safetensors` and reads it back, Trainer checkpoints
  (and resuming) included;
- without LoRA it is an ordinary submodule, saved in the model's own weights.

It is an add-on (jointobj/model/add_ons.py): saving writes `energy_head.safetensors` and its settings
(hidden size, width, parameterisation, the sampler it was trained against) go into jointobj.json;
`Denoiser.from_pretrained` attaches a fresh head from them and reads the weights back. A head
trained on a model of another hidden size is refused there with a clear error.

Parameterisation (see losses/energy_nce.py): `residual` heads define p(x) ∝ q(x) exp(-E(x))
relative to the sampler they were trained against (EDLM's convention); `absolute` heads
define p(x) ∝ exp(-E(x)) on their own.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from jointobj.model.add_ons import ADD_ONS, AddOn, called_module, put_on_model

__all__ = ["ENERGY_HEAD", "PARAMETERISATIONS", "EnergyHead", "attach_energy_head", "energy_head_module",
           "energy_head_settings", "find_energy_head", "head_energy", "model_hidden_size", "pooled_hidden_states"]

ENERGY_HEAD = "energy_head"  # attribute on the bare model, and its name in LoraConfig.modules_to_save
PARAMETERISATIONS = ("residual", "absolute")


@ADD_ONS.register(ENERGY_HEAD)
class EnergyHead(AddOn):
    """pooled hidden states [b, d] -> energies [b]: Linear(d, w) -> GELU -> Linear(w, 1).

    The last layer starts at zero, so a fresh head gives E = 0 everywhere: a residual head
    starts as the sampler itself, and training moves it only where the data says so.
    """

    def __init__(self, hidden_size: int, width: int | None = None, parameterisation: str = "residual",
                 trained_against: dict[str, Any] | None = None):
        super().__init__()
        if parameterisation not in PARAMETERISATIONS:
            raise ValueError(f"parameterisation must be one of {', '.join(PARAMETERISATIONS)}, "
                             f"got {parameterisation!r}")
        width = hidden_size if not width else int(width)
        if hidden_size < 1 or width < 1:
            raise ValueError(f"hidden_size and width must be >= 1, got {hidden_size} and {width}")
        self.hidden_size, self.width, self.parameterisation = int(hidden_size), width, parameterisation
        self.trained_against = trained_against  # the negatives' sampler {decoder, tokens_per_step, repr}, once trained
        self.net = nn.Sequential(nn.Linear(hidden_size, width), nn.GELU(), nn.Linear(width, 1))
        nn.init.zeros_(self.net[2].weight)
        nn.init.zeros_(self.net[2].bias)

    @property
    def residual(self) -> bool:
        return self.parameterisation == "residual"

    def settings(self) -> dict[str, Any]:
        return {"hidden_size": self.hidden_size, "width": self.width, "parameterisation": self.parameterisation,
                "trained_against": self.trained_against}

    @classmethod
    def attach(cls, denoiser: Any, settings: dict[str, Any]) -> "EnergyHead":
        """A fresh head from saved `settings` on the denoiser (see attach_energy_head)."""
        return attach_energy_head(denoiser, settings["width"], settings["parameterisation"],
                                  hidden_size=settings["hidden_size"], trained_against=settings.get("trained_against"))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        weight = self.net[0].weight
        return self.net(pooled.to(weight.dtype)).squeeze(-1).float()  # [b]


# ---------------------------------------------------------------- finding it through wrappers


def find_energy_head(model: nn.Module) -> nn.Module | None:
    """The callable energy head of a (possibly wrapped) model, or None: through a PeftModel that is
    peft's wrapper, which dispatches to the trained copy."""
    return called_module(model, ENERGY_HEAD)


def energy_head_module(model: nn.Module) -> EnergyHead | None:
    """The EnergyHead instance itself (for its settings: parameterisation, trained_against), under
    any wrapper; None without one. `find_energy_head` gives the module to *call* instead (through
    peft that is the wrapper that dispatches to the trained copy)."""
    return next((m for m in model.modules() if isinstance(m, EnergyHead)), None)


def energy_head_settings(model: nn.Module) -> dict[str, Any] | None:
    """What jointobj.json records about the model's head (None without one)."""
    head = energy_head_module(model)
    return None if head is None else head.settings()


def model_hidden_size(denoiser: Any) -> int:
    """d of the last hidden layer: from the config, else from a one-token probe forward."""
    config = getattr(denoiser, "config", None)
    for name in ("hidden_size", "dim", "d_model"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    probe = torch.zeros(1, 2, dtype=torch.long, device=denoiser.device)
    with torch.no_grad():
        return int(denoiser.hidden_states(probe).shape[-1])


# ---------------------------------------------------------------- attaching


def attach_energy_head(denoiser: Any, width: int | None = None, parameterisation: str = "residual", *,
                       hidden_size: int | None = None, trained_against: dict[str, Any] | None = None) -> EnergyHead:
    """Register a fresh EnergyHead on the denoiser's bare model and make it trainable and saved.

    Before `add_lora` the head is a plain submodule (add_lora lists it in modules_to_save);
    after it, it is added to the adapter's modules_to_save here. `hidden_size` (when given,
    e.g. from a saved head) must match the model's, else a ValueError.
    """
    actual = model_hidden_size(denoiser)
    if hidden_size is not None and hidden_size != actual:
        raise ValueError(f"the energy head was trained on a model with hidden size {hidden_size}, but this model's "
                         f"hidden size is {actual}; load the head onto the base model it was trained with")
    if find_energy_head(denoiser.model) is not None:
        raise ValueError("the model already has an energy head; one model carries one head")
    head = EnergyHead(actual, width, parameterisation, trained_against).to(denoiser.device)
    return put_on_model(denoiser, ENERGY_HEAD, head)


# ---------------------------------------------------------------- the energy


def pooled_hidden_states(denoiser: Any, input_ids: torch.Tensor,
                         attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of the last hidden layer over the non-padding positions: [b, l] -> [b, d] float32."""
    hidden = denoiser.hidden_states(input_ids, attention_mask)  # [b, l, d]
    real = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    weights = real.to(hidden.dtype)[..., None]  # [b, l, 1]
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)  # [b, d]


def head_energy(denoiser: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """E(x) [b] float32 from the model's energy head (gradients flow when grad mode is on)."""
    head = find_energy_head(denoiser.model)
    if head is None:
        raise ValueError("the model has no energy head; attach one (jointobj.model.energy_head.attach_energy_head) and "
                         "train it with the 'energy' objective, or load a directory saved with one")
    return head(pooled_hidden_states(denoiser, input_ids, attention_mask))  # [b]
