"""Add-ons save, load and attach themselves: a new one, defined here, round-trips through a full model and
an adapter without the Denoiser or the loader knowing its name."""

import json

import pytest
import torch
from torch import nn

from jointobj import Denoiser
from jointobj.model.add_ons import ADD_ONS, AddOn, called_module
from jointobj.model.tiny import tiny_masked_lm

VOCAB = 24


@ADD_ONS.register("position_bias")
class PositionBias(AddOn):
    """A learned bias per position: the smallest add-on."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size
        self.bias = nn.Parameter(torch.zeros(size))

    def settings(self):
        return {"size": self.size}

    @classmethod
    def attach(cls, denoiser, settings):
        module = cls(settings["size"])
        setattr(denoiser.base_model_for_checkpointing, "position_bias", module)
        return module


def _denoiser() -> Denoiser:
    return Denoiser(tiny_masked_lm("modernbert", vocab_size=VOCAB, max_positions=16, seed=0), mask_token_id=3)


def _bias(denoiser: Denoiser) -> torch.Tensor:
    module = called_module(denoiser.model, "position_bias")
    copies = getattr(module, "modules_to_save", None)  # through peft, its wrapper holds the trained copy
    return (module if copies is None else copies["default"]).bias


@pytest.mark.parametrize("adapter", [False, True], ids=["full-model", "adapter"])
def test_a_new_add_on_round_trips_by_its_registration_alone(tmp_path, adapter):
    denoiser = _denoiser()
    PositionBias.attach(denoiser, {"size": 5})
    if adapter:
        denoiser.add_lora()
        assert "position_bias" in denoiser.model.peft_config["default"].modules_to_save
    with torch.no_grad():
        _bias(denoiser).copy_(torch.arange(5.0))
    assert _bias(denoiser).requires_grad  # an optimizer over trainable parameters sees it
    denoiser.save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "jointobj.json").read_text())["add_ons"] == {"position_bias": {"size": 5}}
    assert (tmp_path / "saved" / "position_bias.safetensors").exists()
    base = _denoiser() if adapter else None
    loaded = Denoiser.from_pretrained(tmp_path / "saved", base=base.model if adapter else None)
    torch.testing.assert_close(_bias(loaded), torch.arange(5.0), atol=0, rtol=0)


def test_a_recorded_add_on_without_its_weights_is_a_clear_error(tmp_path):
    denoiser = _denoiser()
    PositionBias.attach(denoiser, {"size": 2})
    denoiser.save_pretrained(tmp_path / "saved")
    (tmp_path / "saved" / "position_bias.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="records the add-on 'position_bias' but has no position_bias"):
        Denoiser.from_pretrained(tmp_path / "saved")


def test_an_add_on_nobody_registered_is_named(tmp_path):
    _denoiser().save_pretrained(tmp_path / "saved")
    settings = json.loads((tmp_path / "saved" / "jointobj.json").read_text())
    (tmp_path / "saved" / "jointobj.json").write_text(json.dumps({**settings, "add_ons": {"value_head": {}}}))
    (tmp_path / "saved" / "value_head.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="unknown add-on 'value_head'; known: .*energy_head"):
        Denoiser.from_pretrained(tmp_path / "saved")
