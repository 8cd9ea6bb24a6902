"""Denoiser.from_pretrained on local directories: full models, PEFT adapters, remote code, bad input."""

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForMaskedLM, GPT2Config, GPT2LMHeadModel

from jointobj import Denoiser
from jointobj.model.tiny import tiny_masked_lm

from tiny_models import write_custom_code_model

VOCAB = 40
TOKENS = torch.randint(3, VOCAB, (2, 6), generator=torch.Generator().manual_seed(0))


@pytest.fixture
def saved_base(tmp_path):
    denoiser = Denoiser(tiny_masked_lm("modernbert", vocab_size=VOCAB, seed=0), mask_token_id=2).eval()
    directory = tmp_path / "base"
    denoiser.save_pretrained(directory)
    return denoiser, directory


def test_full_model_round_trip(saved_base):
    denoiser, directory = saved_base
    loaded = Denoiser.from_pretrained(directory).eval()
    assert loaded.mask_token_id == 2  # read back from jointobj.json
    torch.testing.assert_close(loaded(input_ids=TOKENS), denoiser(input_ids=TOKENS))


def test_adapter_saves_only_the_adapter_and_reloads(saved_base, tmp_path):
    _, base_dir = saved_base
    from peft import LoraConfig

    lora = LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
    denoiser = Denoiser.from_pretrained(base_dir, lora=lora)
    denoiser.eval()
    adapter_dir = tmp_path / "adapter"
    denoiser.save_pretrained(adapter_dir)
    files = {p.name for p in adapter_dir.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files
    assert "model.safetensors" not in files  # only what the adapter owns
    expected = denoiser(input_ids=TOKENS)

    reloaded = Denoiser.from_pretrained(adapter_dir).eval()  # base found through adapter_config.json
    torch.testing.assert_close(reloaded(input_ids=TOKENS), expected)
    plain = PeftModel.from_pretrained(AutoModelForMaskedLM.from_pretrained(base_dir), adapter_dir).eval()
    torch.testing.assert_close(plain(input_ids=TOKENS).logits, expected)


def test_adapter_onto_an_explicit_base_module(saved_base, tmp_path):
    _, base_dir = saved_base
    from peft import LoraConfig

    lora = LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
    denoiser = Denoiser.from_pretrained(base_dir, lora=lora)
    denoiser.eval().save_pretrained(tmp_path / "adapter")
    base = AutoModelForMaskedLM.from_pretrained(base_dir)
    reloaded = Denoiser.from_pretrained(tmp_path / "adapter", base=base).eval()
    torch.testing.assert_close(reloaded(input_ids=TOKENS), denoiser(input_ids=TOKENS))


def test_remote_code_is_refused_by_default_and_loads_when_trusted(tmp_path):
    directory = tmp_path / "remote"
    write_custom_code_model(directory)
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        Denoiser.from_pretrained(directory)
    denoiser = Denoiser.from_pretrained(directory, trust_remote_code=True)
    assert denoiser.mask_token_id == 2  # from the remote config, as LLaDA's
    assert denoiser(input_ids=TOKENS % 32).shape == (2, 6, 32)


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Denoiser.from_pretrained(tmp_path / "nowhere")


def test_causal_directory_is_refused(tmp_path):
    GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=4)).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ValueError, match="causal LM"):
        Denoiser.from_pretrained(tmp_path / "gpt2", mask_token_id=2)


def test_directory_without_masked_head_is_refused(tmp_path):
    from transformers import CLIPTextConfig, CLIPTextModel

    CLIPTextModel(CLIPTextConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                                 num_attention_heads=4)).save_pretrained(tmp_path / "clip")
    with pytest.raises(ValueError, match="no masked-LM head"):
        Denoiser.from_pretrained(tmp_path / "clip", mask_token_id=2)


def test_broken_config_json_names_the_file(saved_base):
    _, directory = saved_base
    (directory / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        Denoiser.from_pretrained(directory)


def test_saved_settings_are_recorded(saved_base):
    _, directory = saved_base
    assert json.loads((directory / "jointobj.json").read_text()) == {
        "mask_token_id": 2, "logit_shift": 0, "mask_blind": False, "eos_token_id": 0}  # tiny configs: eos = pad = 0


def test_tokenizer_with_its_own_code_is_refused_by_default(tiny_model_dir, tmp_path):
    # Fails if only config.json's auto_map is checked: transformers would then be asked for the tokenizer's code.
    import shutil

    directory = tmp_path / "model"
    shutil.copytree(tiny_model_dir, directory)
    tokenizer_config = json.loads((directory / "tokenizer_config.json").read_text())
    tokenizer_config["auto_map"] = {"AutoTokenizer": ["tokenization_toy.ToyTokenizer", None]}
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    with pytest.raises(ValueError, match=r"own tokenizer code .* trust_remote_code=True"):
        Denoiser.from_pretrained(directory)


@pytest.fixture
def adapter_on_a_base_without_mask(tmp_path):
    """A base with no tokenizer, no mask id in its config and no jointobj.json, and an adapter trained as mask id 3."""
    base_dir = tmp_path / "bare"
    tiny_masked_lm("modernbert", vocab_size=VOCAB, seed=0).save_pretrained(base_dir)
    with pytest.raises(ValueError, match="needs a mask token id"):
        Denoiser.from_pretrained(base_dir)
    denoiser = Denoiser.from_pretrained(base_dir, mask_token_id=3).add_lora(init_lora_weights="gaussian").eval()
    denoiser.save_pretrained(tmp_path / "adapter")
    return denoiser, tmp_path / "adapter"


def test_adapter_passes_its_saved_mask_id_to_a_base_without_one(adapter_on_a_base_without_mask):
    # Fails if the base is loaded before (and without) the adapter's jointobj.json mask id: "needs a mask token id".
    denoiser, adapter_dir = adapter_on_a_base_without_mask
    reloaded = Denoiser.from_pretrained(adapter_dir).eval()
    assert reloaded.mask_token_id == 3
    torch.testing.assert_close(reloaded(input_ids=TOKENS), denoiser(input_ids=TOKENS))


def test_adapter_passes_an_explicit_mask_id_to_a_base_without_one(adapter_on_a_base_without_mask):
    # Fails if mask_token_id= is applied only after the base loads (the base load itself then fails).
    _, adapter_dir = adapter_on_a_base_without_mask
    (adapter_dir / "jointobj.json").unlink()
    assert Denoiser.from_pretrained(adapter_dir, mask_token_id=4).mask_token_id == 4


def test_mask_id_outside_the_vocabulary_is_refused_on_assignment(saved_base):
    # Fails if only the constructor checks the id: a loader's (or user's) later override would slip through.
    denoiser, _ = saved_base
    with pytest.raises(ValueError, match=f"mask_token_id {VOCAB} is outside the model's vocabulary of {VOCAB}"):
        denoiser.mask_token_id = VOCAB
    assert denoiser.mask_token_id == 2
