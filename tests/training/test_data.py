"""Recipe data: toy set names, JSONL and datasets directories in three row shapes, and bad input."""

import json

import datasets
import pytest

from jointobj.toysets.builtin import toy_tokenizer
from jointobj.training.data import load_training_data, normalise_rows

TOKENIZER = toy_tokenizer()


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_toy_set_names_give_a_mixed_dataset():
    data = load_training_data("likes_tennis,cities", TOKENIZER, samples_per_toyset=10)
    assert len(data) == 20 and set(data.column_names) == {"input_ids", "prompt_mask"}


def test_prompt_response_rows_score_only_the_response(tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "<copy_4> A B C D [SEP]", "response": "A B C D"}])
    row = load_training_data(str(path), TOKENIZER)[0]
    assert TOKENIZER.convert_ids_to_tokens(row["input_ids"]) == "<copy_4> A B C D [SEP] A B C D".split()
    assert row["prompt_mask"] == [True] * 6 + [False] * 4


def test_text_rows_are_all_scored(tmp_path):
    path = write_jsonl(tmp_path / "text.jsonl", [{"text": "he likes apple"}])
    row = load_training_data(str(path), TOKENIZER)[0]
    assert len(row["input_ids"]) == 3 and row["prompt_mask"] == [False] * 3


def test_token_id_rows_from_a_datasets_directory(tmp_path):
    rows = {"input_ids": [[5, 6, 7]], "prompt_mask": [[True, False, False]]}
    datasets.Dataset.from_dict(rows).save_to_disk(tmp_path / "d")
    row = load_training_data(str(tmp_path / "d"), TOKENIZER)[0]
    assert row == {"input_ids": [5, 6, 7], "prompt_mask": [True, False, False]}


def test_file_with_no_usable_field_names_the_accepted_ones(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"question": "?", "answer": "!"}])
    expected = (r"bad.jsonl line 1: fields \['answer', 'question'\]: no usable field; rows need"
                r" 'input_ids'")
    with pytest.raises(ValueError, match=expected):
        load_training_data(str(path), TOKENIZER)


def test_empty_dataset_is_refused(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="empty.jsonl is empty"):
        load_training_data(str(tmp_path / "empty.jsonl"), TOKENIZER)
    with pytest.raises(ValueError, match="in memory is empty"):
        normalise_rows(datasets.Dataset.from_dict({"input_ids": []}), TOKENIZER, "in memory")


def test_unknown_name_that_is_not_a_path():
    with pytest.raises(ValueError, match="neither a local file or directory nor toy set names"):
        load_training_data("wikitext-103", TOKENIZER)


def test_row_longer_than_the_model_names_the_row_and_the_limit(tmp_path):
    # Fails if load_training_data ignores max_length: the row would then fail mid-training, at the position embedding.
    path = write_jsonl(tmp_path / "text.jsonl", [{"text": "he likes"}, {"text": "he likes apple"}])
    expected = (r"text.jsonl: 1 row\(s\) are longer than the model's 2 positions: row 1 at line 2"
                r" \(3 tokens\)")
    with pytest.raises(ValueError, match=expected):
        load_training_data(str(path), TOKENIZER, max_length=2)
    assert len(load_training_data(str(path), TOKENIZER, max_length=3)) == 2


def test_toy_set_longer_than_the_model_is_named():
    # Fails if toy sets skip the check that local files get.
    with pytest.raises(ValueError, match="toy set 'likes_tennis': .* longer than the model's 2 positions"):
        load_training_data("likes_tennis", TOKENIZER, samples_per_toyset=4, max_length=2)


def test_row_with_nothing_to_score_is_refused(tmp_path):
    # Fails if an all-prompt row is accepted (it gives the objective no token to score).
    path = write_jsonl(tmp_path / "ids.jsonl", [{"input_ids": [5, 6], "prompt_mask": [True, False]},
                                                {"input_ids": [5, 6], "prompt_mask": [True, True]}])
    expected = (r"ids.jsonl: 1 row\(s\) have fewer response .* tokens than the 1 .*: row 1 at"
                r" line 2 \(0\)")
    with pytest.raises(ValueError, match=expected):
        load_training_data(str(path), TOKENIZER)


def test_prompt_mask_of_the_wrong_length_is_refused(tmp_path):
    # Fails if a prompt_mask shorter than its input_ids passes (the collator would misalign or crash later).
    path = write_jsonl(tmp_path / "ids.jsonl", [{"input_ids": [5, 6, 7], "prompt_mask": [True, False]}])
    expected = (r"prompt_mask whose length differs .*: row 0 at line 1 \(3 tokens, 2 mask"
                r" entries\)")
    with pytest.raises(ValueError, match=expected):
        load_training_data(str(path), TOKENIZER)


# Bad data is refused before training, naming file and line (JSONL) or row (datasets) and the field.
# Each fails against the loader that handed the file to datasets unchecked and checked only lengths.

def test_jsonl_row_missing_its_field_names_file_line_and_field(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "he likes"}, {"txt": "he likes apple"}])
    with pytest.raises(ValueError, match=r"t.jsonl line 2: field 'text' is missing"):
        load_training_data(str(path), TOKENIZER)


def test_jsonl_null_text_names_file_line_and_field(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "he likes"}, {"text": "he"}, {"text": None}])
    with pytest.raises(ValueError, match=r"t.jsonl line 3: field 'text' is null"):
        load_training_data(str(path), TOKENIZER)


def test_malformed_jsonl_line_is_named(tmp_path):
    (tmp_path / "t.jsonl").write_text('{"text": "he likes"}\n\n{"text": "he likes apple"\n')
    with pytest.raises(ValueError, match=r"t.jsonl line 3: not valid JSON"):
        load_training_data(str(tmp_path / "t.jsonl"), TOKENIZER)


def test_dataset_row_with_a_null_field_names_the_row(tmp_path):
    datasets.Dataset.from_dict({"prompt": ["a", "b", "c"], "response": ["x", None, "z"]}).save_to_disk(tmp_path / "d")
    with pytest.raises(ValueError, match=r"d row 1 \(counting from 0\): field 'response' is null"):
        load_training_data(str(tmp_path / "d"), TOKENIZER)


def test_directory_that_is_not_a_saved_dataset_is_refused(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(ValueError, match="not a datasets.save_to_disk directory"):
        load_training_data(str(tmp_path / "d"), TOKENIZER)


def test_token_ids_outside_the_vocabulary_are_refused(tmp_path):
    path = write_jsonl(tmp_path / "ids.jsonl", [{"input_ids": [5, 6]}, {"input_ids": [5, 99999]}])
    expected = (r"outside the model's vocabulary of 70 \(ids 0..69\): row 1 at line 2 \(id"
                r" 99999\)")
    with pytest.raises(ValueError, match=expected):
        load_training_data(str(path), TOKENIZER, vocab_size=70)


def test_mask_id_in_the_data_is_refused_unless_allowed(tmp_path):
    path = write_jsonl(tmp_path / "ids.jsonl", [{"input_ids": [5, 6, 3]}])
    expected = (r"\[MASK\] id 3, .*: row 0 at line 1 \(position 2\);"
                r" .*--allow_mask_token_in_data")
    with pytest.raises(ValueError, match=expected):
        load_training_data(str(path), TOKENIZER, mask_token_id=3)
    assert len(load_training_data(str(path), TOKENIZER, mask_token_id=None)) == 1


def test_row_too_short_for_the_blocks_is_refused(tmp_path):
    path = write_jsonl(tmp_path / "ids.jsonl", [{"input_ids": [5, 6, 7, 8]}, {"input_ids": [5, 6, 7]}])
    with pytest.raises(ValueError, match=r"fewer response .* than the 4 .*: row 1 at line 2 \(3\); .*lower the "
                                         "objective's blocks"):
        load_training_data(str(path), TOKENIZER, min_response_tokens=4)
