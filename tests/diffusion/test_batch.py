"""DiffusionCollator padding and the batch checks every loss relies on."""

import pytest
import torch

from jointobj import DiffusionCollator, check_batch, scorable_mask


def test_collator_pads_on_the_right_and_keeps_prompt_masks():
    batch = DiffusionCollator(pad_token_id=0)([
        {"input_ids": [5, 6, 7], "prompt_mask": [True, False, False]},
        {"input_ids": [8, 9]},  # no prompt_mask: unconditional text
    ])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 9, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["prompt_mask"].tolist() == [[True, False, False], [False, False, False]]
    assert scorable_mask(batch).tolist() == [[False, True, True], [True, True, False]]


def test_empty_list_is_refused():
    with pytest.raises(ValueError, match="is the dataset empty"):
        DiffusionCollator(0)([])


def test_too_long_example_is_refused():
    with pytest.raises(ValueError, match="at most 2"):
        DiffusionCollator(0, max_length=2)([{"input_ids": [1, 2, 3]}])


def test_prompt_mask_of_the_wrong_length_is_refused():
    with pytest.raises(ValueError, match="example 0"):
        DiffusionCollator(0)([{"input_ids": [1, 2, 3], "prompt_mask": [True]}])


def test_check_batch_names_missing_ids_and_bad_shapes():
    with pytest.raises(ValueError, match="no 'input_ids'"):
        check_batch({"attention_mask": torch.ones(1, 2)})
    with pytest.raises(ValueError, match="attention_mask has shape"):
        check_batch({"input_ids": torch.ones(1, 3, dtype=torch.long), "attention_mask": torch.ones(1, 2)})


def test_collator_for_an_unprobed_model_pads_with_eos_when_it_can():
    """A model whose mask-blindness is unknown (ZeRO-3 shards are not probed) gets EOS padding when it has an EOS id."""
    from types import SimpleNamespace

    unknown = SimpleNamespace(tokenizer=None, eos_token_id=9, mask_blind=None, max_positions=None)
    assert DiffusionCollator.for_denoiser(unknown).pad_answers_with_eos is True
    no_eos = SimpleNamespace(**{**vars(unknown), "eos_token_id": None})
    assert DiffusionCollator.for_denoiser(no_eos).pad_answers_with_eos is False
    honest = SimpleNamespace(**{**vars(unknown), "mask_blind": False})
    assert DiffusionCollator.for_denoiser(honest).pad_answers_with_eos is False
    assert DiffusionCollator.for_denoiser(honest, pad_answers_with_eos=True).pad_answers_with_eos is True
