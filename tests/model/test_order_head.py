"""The order head: a fresh one ranks as confidence, it never reads ineligible positions, and it saves and
loads with the model or its adapter (an add-on) so the `learned` decoder decodes the same after loading."""

import json

import pytest
import torch

from jointobj import Denoiser
from jointobj.decoding import build_decoder
from jointobj.decoding.policies import max_probability
from jointobj.model.order_head import OrderHead, attach_order_head, find_order_head
from jointobj.model.tiny import tiny_masked_lm

VOCAB = 24


def _denoiser() -> Denoiser:
    return Denoiser(tiny_masked_lm("modernbert", vocab_size=VOCAB, max_positions=16, seed=0), mask_token_id=3)


def test_a_fresh_head_ranks_as_confidence():
    logits = torch.randn(5, 6, VOCAB, generator=torch.Generator().manual_seed(0))
    eligible = torch.rand(5, 6, generator=torch.Generator().manual_seed(1)) < 0.7
    scores = OrderHead(VOCAB, 6)(logits, eligible)  # [5, 6]
    expected = max_probability(logits) * OrderHead(VOCAB, 6).log_scale.exp()
    torch.testing.assert_close(scores[eligible], expected[eligible].float(), atol=1e-5, rtol=1e-5)
    assert torch.isinf(scores[~eligible]).all()


def test_ineligible_positions_are_not_read():
    # The sampler shows real logits there, the decoder law a constant: the head must see neither.
    head = OrderHead(VOCAB, 6)
    torch.nn.init.normal_(head.out[2].weight)
    logits = torch.randn(2, 6, VOCAB, generator=torch.Generator().manual_seed(0))
    eligible = torch.tensor([[True, False, True, True, False, True]] * 2)
    changed = logits.clone()
    changed[~eligible] = torch.randn(int((~eligible).sum()), VOCAB)
    torch.testing.assert_close(head(changed, eligible), head(logits, eligible), atol=0, rtol=0)


@pytest.mark.parametrize("adapter", [False, True], ids=["full-model", "adapter"])
def test_the_head_saves_and_loads_with_the_model_or_adapter(tmp_path, adapter):
    denoiser = _denoiser()
    if adapter:
        denoiser.add_lora()
    attach_order_head(denoiser, max_length=8, width=16)
    if adapter:
        assert "order_head" in denoiser.model.peft_config["default"].modules_to_save
    with torch.no_grad():
        find_order_head(denoiser).out[2].weight.normal_(0, 1, generator=torch.Generator().manual_seed(0))
    assert all(p.requires_grad for p in find_order_head(denoiser).parameters())
    denoiser.save_pretrained(tmp_path / "saved")
    recorded = json.loads((tmp_path / "saved" / "jointobj.json").read_text())["add_ons"]["order_head"]
    assert recorded == {"vocab_size": VOCAB, "max_length": 8, "width": 16}
    loaded = Denoiser.from_pretrained(tmp_path / "saved", base=_denoiser().model if adapter else None)
    for name, value in find_order_head(denoiser).state_dict().items():
        torch.testing.assert_close(find_order_head(loaded).state_dict()[name], value, atol=0, rtol=0)
    prompts = torch.randint(4, VOCAB, (16, 2), generator=torch.Generator().manual_seed(1))
    decoder = build_decoder("learned", None, steps=3)
    before = decoder.sample(denoiser, prompts, 6, torch.Generator().manual_seed(0), return_trace=True)
    after = decoder.sample(loaded, prompts, 6, torch.Generator().manual_seed(0), return_trace=True)
    assert torch.equal(before.commit_step, after.commit_step)
    confidence = build_decoder("confidence", None, steps=3).sample(loaded, prompts, 6, torch.Generator().manual_seed(0),
                                                                   return_trace=True)
    assert not torch.equal(after.commit_step, confidence.commit_step)  # the loaded head is the one that ranks


def test_one_model_carries_one_head_of_its_vocabulary():
    denoiser = _denoiser()
    attach_order_head(denoiser)
    with pytest.raises(ValueError, match="already has an order head"):
        attach_order_head(denoiser)
    with pytest.raises(ValueError, match="vocabulary of 7"):
        attach_order_head(_denoiser(), vocab_size=7)
