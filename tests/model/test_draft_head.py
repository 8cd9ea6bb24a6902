"""The draft head: its three routes agree, a fresh one drafts the marginals, and it saves and loads with the
model or its adapter (an add-on)."""

import json

import pytest
import torch

from jointobj import Denoiser
from jointobj.decoding import build_decoder
from jointobj.model.draft_head import DraftHead, attach_draft_head, find_draft_head
from jointobj.model.tiny import tiny_masked_lm

VOCAB = 24


def _random_head(seed: int = 0) -> DraftHead:
    torch.manual_seed(seed)
    head = DraftHead(7, 10, width=16, layers=2, heads=2)
    torch.nn.init.normal_(head.out.weight)
    return head


def _window(seed: int = 0, a: int = 4, length: int = 6, w: int = 3):
    g = torch.Generator().manual_seed(seed)
    perm = torch.stack([torch.randperm(length, generator=g) for _ in range(a)])  # [a, L]
    tokens = torch.randint(0, 7, (a, length), generator=g)
    cuts = torch.tensor([0, 1, 3, 2])[:a]
    step = cuts[:, None] + torch.arange(w)  # [a, w]
    return tokens, perm, cuts, tokens.gather(1, step), perm.gather(1, step), torch.randn(a, w, 7, generator=g)


def test_drafting_slot_by_slot_gives_the_teacher_forced_logits():
    head = _random_head()
    tokens, perm, cuts, window_tokens, window_positions, marginals = _window()
    forced = head.teacher_forced(tokens, perm, cuts, window_tokens, window_positions, marginals)  # [a, w, V]
    logits, state = head.prefill(tokens, perm, cuts, window_positions, marginals)
    stepped = [logits] + [head.step(state, j, window_tokens[:, j - 1]) for j in range(1, 3)]
    torch.testing.assert_close(torch.stack(stepped, 1), forced, atol=1e-5, rtol=0)
    for row in range(4):  # each row alone: left padding of the shorter contexts changes nothing
        alone = head.teacher_forced(*(t[row : row + 1] for t in (tokens, perm, cuts, window_tokens,
                                                                 window_positions, marginals)))
        torch.testing.assert_close(alone, forced[row : row + 1], atol=1e-5, rtol=0)


def test_a_slot_does_not_see_its_own_token_or_later_ones():
    head = _random_head()
    tokens, perm, cuts, window_tokens, window_positions, marginals = _window()
    forced = head.teacher_forced(tokens, perm, cuts, window_tokens, window_positions, marginals)
    changed = window_tokens.clone()
    changed[:, 1] = (changed[:, 1] + 1) % 7  # slot 1's token: slots 0 and 1 must not move, slot 2 must
    moved = head.teacher_forced(tokens, perm, cuts, changed, window_positions, marginals)
    torch.testing.assert_close(moved[:, :2], forced[:, :2], atol=1e-6, rtol=0)
    assert not torch.allclose(moved[:, 2], forced[:, 2])


def test_a_fresh_head_drafts_the_marginals():
    head = DraftHead(7, 10, width=16, layers=2, heads=2)
    tokens, perm, cuts, window_tokens, window_positions, marginals = _window()
    forced = head.teacher_forced(tokens, perm, cuts, window_tokens, window_positions, marginals)
    torch.testing.assert_close(forced, marginals, atol=0, rtol=0)


def _denoiser() -> Denoiser:
    return Denoiser(tiny_masked_lm("modernbert", vocab_size=VOCAB, max_positions=16, seed=0), mask_token_id=3)


@pytest.mark.parametrize("adapter", [False, True], ids=["full-model", "adapter"])
def test_the_head_saves_and_loads_with_the_model_or_adapter(tmp_path, adapter):
    denoiser = _denoiser()
    if adapter:
        denoiser.add_lora()
    head = attach_draft_head(denoiser, max_positions=8, width=16, layers=1, heads=2)
    assert head.vocab_size == VOCAB
    if adapter:
        assert "draft_head" in denoiser.model.peft_config["default"].modules_to_save
    with torch.no_grad():
        find_draft_head(denoiser.model).out.weight.normal_(0, 1, generator=torch.Generator().manual_seed(0))
    assert all(p.requires_grad for p in find_draft_head(denoiser.model).parameters())
    denoiser.save_pretrained(tmp_path / "saved")
    recorded = json.loads((tmp_path / "saved" / "jointobj.json").read_text())["add_ons"]["draft_head"]
    assert recorded["width"] == 16 and recorded["vocab_size"] == VOCAB
    loaded = Denoiser.from_pretrained(tmp_path / "saved", base=_denoiser().model if adapter else None)
    for name, value in find_draft_head(denoiser.model).state_dict().items():
        torch.testing.assert_close(find_draft_head(loaded.model).state_dict()[name], value, atol=0, rtol=0)
    prompts = torch.randint(4, VOCAB, (3, 2), generator=torch.Generator().manual_seed(1))
    decoder = build_decoder("speculative", temperature=1.0, drafts=2, draft="head")
    before = decoder.sample(denoiser, prompts, 6, torch.Generator().manual_seed(0))
    after = decoder.sample(loaded, prompts, 6, torch.Generator().manual_seed(0))
    assert torch.equal(before.ids, after.ids)


def test_one_model_carries_one_head():
    denoiser = _denoiser()
    attach_draft_head(denoiser, width=16, heads=2)
    with pytest.raises(ValueError, match="already has a draft head"):
        attach_draft_head(denoiser, width=16, heads=2)


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="divisible"):
        DraftHead(7, 10, width=10, heads=4)
