"""Denoiser over every supported architecture: mask id, float32 logits, soft inputs, LoRA, causal refusal."""

from types import SimpleNamespace

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from jointobj import Denoiser, lora_target_modules
from jointobj.model.tiny import TINY_ARCHITECTURES, tiny_masked_lm

from tiny_models import BidirectionalLM

VOCAB = 40
MASK = 2
ARCHITECTURES = TINY_ARCHITECTURES.names()


def build(architecture: str) -> torch.nn.Module:
    if architecture == "custom":
        torch.manual_seed(0)
        return BidirectionalLM(vocab_size=VOCAB)
    return tiny_masked_lm(architecture, vocab_size=VOCAB, seed=0)


def ids(batch: int = 3, length: int = 7, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("architecture", ARCHITECTURES + ["custom"])
def test_wraps_architecture_with_float32_logits(architecture):
    denoiser = Denoiser(build(architecture), mask_token_id=MASK)
    logits = denoiser(input_ids=ids(), attention_mask=torch.ones(3, 7, dtype=torch.long))
    assert logits.shape == (3, 7, VOCAB)
    assert logits.dtype == torch.float32


def test_low_precision_model_still_returns_float32():
    denoiser = Denoiser(build("bert").to(torch.bfloat16), mask_token_id=MASK)
    assert denoiser(input_ids=ids()).dtype == torch.float32


@pytest.mark.parametrize("architecture", ARCHITECTURES + ["custom"])
def test_soft_input_one_hot_equals_hard_lookup(architecture):
    denoiser = Denoiser(build(architecture), mask_token_id=MASK).eval()
    tokens = ids()
    one_hot = torch.nn.functional.one_hot(tokens, VOCAB).float()  # [b, l, V]
    soft = one_hot @ denoiser.input_embeddings.weight  # [b, l, d]
    torch.testing.assert_close(denoiser(inputs_embeds=soft), denoiser(input_ids=tokens), atol=1e-5, rtol=1e-5)


def test_mask_id_resolution_order():
    model = build("custom")
    model.config = SimpleNamespace(mask_token_id=7, vocab_size=VOCAB)
    tokenizer = SimpleNamespace(mask_token_id=5)
    assert Denoiser(model, mask_token_id=3, tokenizer=tokenizer).mask_token_id == 3
    assert Denoiser(model, tokenizer=tokenizer).mask_token_id == 5
    assert Denoiser(model).mask_token_id == 7


def test_no_mask_token_is_a_clear_error():
    with pytest.raises(ValueError, match="mask_token_id"):
        Denoiser(build("bert"), tokenizer=SimpleNamespace(mask_token_id=None))


def test_mask_id_outside_vocabulary_is_refused():
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        Denoiser(build("bert"), mask_token_id=VOCAB)


@pytest.mark.parametrize(
    "model",
    [
        pytest.param(lambda: GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=4)), id="gpt2"),
        pytest.param(lambda: BidirectionalLM(vocab_size=VOCAB, causal=True), id="causal-custom"),
    ],
)
def test_causal_model_is_refused(model):
    with pytest.raises(ValueError, match="looks causal"):
        Denoiser(model(), mask_token_id=MASK)


def test_sequence_longer_than_positions_is_refused():
    denoiser = Denoiser(build("bert"), mask_token_id=MASK)
    with pytest.raises(ValueError, match="longer than the model's 64 positions"):
        denoiser(input_ids=ids(length=65))


def test_roberta_usable_length_excludes_padding_offset():
    denoiser = Denoiser(build("roberta"), mask_token_id=MASK)
    assert denoiser.max_positions == 64
    denoiser(input_ids=ids(length=64))  # the full usable length runs


@pytest.mark.parametrize("architecture", ARCHITECTURES + ["custom"])
def test_lora_starts_at_base_and_trains_only_adapter(architecture):
    denoiser = Denoiser(build(architecture), mask_token_id=MASK).eval()
    tokens = ids()
    before = denoiser(input_ids=tokens)
    denoiser.add_lora()
    torch.testing.assert_close(denoiser(input_ids=tokens), before)  # LoRA B starts at zero
    denoiser(input_ids=tokens).logsumexp(-1).sum().backward()
    trainable = {name for name, p in denoiser.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in denoiser.parameters() if p.requires_grad)


def test_lora_targets_leave_the_vocabulary_head_out_of_a_plain_module():
    # linear1 is wider (64) than the vocabulary (40): the head is found by vocabulary size, not width.
    targets = lora_target_modules(BidirectionalLM(vocab_size=VOCAB))
    assert targets == ["linear1", "linear2"]  # out_proj lives inside nn.MultiheadAttention, which bypasses its forward


def test_unknown_attributes_reach_the_wrapped_model():
    denoiser = Denoiser(build("bert"), mask_token_id=MASK)
    assert denoiser.config.model_type == "bert"
    assert denoiser.num_parameters() == denoiser.model.num_parameters()


def test_exactly_one_input_kind():
    denoiser = Denoiser(build("bert"), mask_token_id=MASK)
    with pytest.raises(ValueError, match="exactly one"):
        denoiser()


def test_routed_through_calls_the_wrapper_but_keeps_metadata():
    denoiser = Denoiser(build("bert"), mask_token_id=MASK)

    class Engine(torch.nn.Module):  # what DeepSpeed's engine looks like from here: .config is its own
        config = {"zero_optimization": {"stage": 3}}

        def __init__(self, module):
            super().__init__()
            self.module, self.calls = module, 0

        def forward(self, **kwargs):
            self.calls += 1
            return self.module(**kwargs)

    engine = Engine(denoiser.model)
    view = denoiser.routed_through(engine)
    torch.testing.assert_close(view(input_ids=ids()), denoiser(input_ids=ids()))
    assert engine.calls == 1
    assert (view.vocab_size, view.max_positions, view.mask_token_id) == (VOCAB, 64, MASK)
    assert denoiser.model is not engine  # the original is untouched
