"""Training data for the recipes: toy sets by name, or a local dataset in one of three shapes.

    load_training_data("likes_tennis,cities,shuffle_3", tokenizer)   # toy sets, generated in code
    load_training_data("mysets:dates,likes_tennis", tokenizer)       # a user's set by import reference too
    load_training_data("data/sft.jsonl", tokenizer)                  # JSONL file
    load_training_data("data/my_dataset", tokenizer)                 # datasets.save_to_disk directory

Rows become `input_ids` + `prompt_mask` (see jointobj.diffusion.batch). A local dataset's rows may hold

- `input_ids` (token ids), with an optional `prompt_mask`;
- `prompt` and `response` (SFT): the prompt is context, only the response is scored;
- `text`: unconditional text, every token scored.

Text is tokenized without special tokens: apply your chat template (and any EOS padding the
model was trained with, as LLaDA's SFT does) before saving the data.

Every row is checked before training starts: its fields must be there and of the right type
(every row of one shape), it needs enough response (non-prompt) tokens to score (one, or K for
the log-sum over K blocks), its token ids must lie in the vocabulary and (unless allowed) differ
from the [MASK] id, and, given `max_length` (the model's positions), it must fit in them. A bad
row is an error that names the file and line (JSONL) or the row (datasets), not a failure
mid-training.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets

from jointobj.toysets.builtin import TOYSETS, load_toyset
from jointobj.toysets.combined import load_toysets

FIELDS_HELP = "rows need 'input_ids' (optionally 'prompt_mask'), or 'prompt' and 'response', or 'text'"
SHAPES = {("input_ids",): "input_ids", ("prompt", "response"): "prompt/response", ("text",): "text"}


def row_shape(fields: set[str] | list[str]) -> tuple[str, ...] | None:
    """The fields that decide a row's shape (input_ids first, then prompt/response, then text), or None."""
    return next((shape for shape in SHAPES if set(shape) <= set(fields)), None)


def field_problem(row: dict[str, Any], shape: tuple[str, ...]) -> str | None:
    """Why `row` is not a valid row of `shape` (a field missing, null or of the wrong type), or None."""
    for name in shape + (("prompt_mask",) if "input_ids" in shape and row.get("prompt_mask") is not None else ()):
        value = row.get(name)
        if value is None:
            return f"field {name!r} is {'missing' if name not in row else 'null'} (rows here are {SHAPES[shape]} rows)"
        if name == "input_ids" and not (isinstance(value, list) and all(type(v) is int for v in value)):
            return f"field 'input_ids' must be a list of integer token ids, got {str(value)[:60]}"
        if name == "prompt_mask" and not (isinstance(value, list) and all(type(v) in (bool, int) for v in value)):
            return f"field 'prompt_mask' must be a list of booleans, got {str(value)[:60]}"
        if name in ("prompt", "response", "text") and not isinstance(value, str):
            return f"field {name!r} must be a string, got {type(value).__name__}"
    return None


def _is_toy_spec(spec: str) -> bool:
    names = [name.strip() for name in spec.split(",")]
    return not Path(spec).exists() and all(_known_toyset(name) for name in names)


def _known_toyset(name: str) -> bool:
    if ":" in name:  # an import reference (module:attribute): one that does not resolve says why, here
        load_toyset(name)
        return True
    try:
        load_toyset(name)
    except ValueError:
        return False
    return True


def toy_training_data(names: list[str], samples_per_set: int, seed: int = 0,
                      max_length: int | None = None, tokenizer: Any = None, **checks: Any) -> datasets.Dataset:
    """Samples from each named toy set (each checked, see check_rows), concatenated and shuffled. The sets
    share one vocabulary: `tokenizer`'s (the model's) when word-level, else the one combined from the
    sets (jointobj.toysets.combined)."""
    sets = load_toysets(names, tokenizer=tokenizer)
    parts = [toyset.dataset(samples_per_set, seed=seed + i) for i, toyset in enumerate(sets)]
    for name, part in zip(names, parts):
        check_rows(part, f"toy set {name!r}", max_length, **checks)
    return datasets.concatenate_datasets(parts).shuffle(seed=seed)


def check_rows(dataset: datasets.Dataset, source: str, max_length: int | None = None, shown: int = 5, *,
               vocab_size: int | None = None, mask_token_id: int | None = None, min_response_tokens: int = 1,
               row_name: Callable[[int], str] | None = None) -> None:
    """Refuse rows with fewer than `min_response_tokens` response (non-prompt) tokens to score, rows
    whose prompt_mask does not match their input_ids, token ids outside `vocab_size`, the
    `mask_token_id` inside the data, and (given max_length) rows longer than the model's positions,
    naming the dataset, the first offending rows (`row_name(i)`, default "row i") and the limit."""
    name = row_name or (lambda row: f"row {row} (counting from 0)")
    problems: dict[str, list[str]] = {}
    offset = 0
    for chunk in dataset.select_columns(["input_ids", "prompt_mask"]).iter(batch_size=1024):
        for row, (ids, prompt) in enumerate(zip(chunk["input_ids"], chunk["prompt_mask"]), start=offset):
            checks = _row_checks(ids, prompt, max_length, vocab_size, mask_token_id, min_response_tokens)
            for kind, bad, detail in checks:
                if bad:
                    problems.setdefault(kind, []).append(f"{name(row)}{detail}")
        offset += len(chunk["input_ids"])
    limits = {"min_response_tokens": min_response_tokens, "vocab_size": vocab_size, "mask_token_id": mask_token_id,
              "max_length": max_length, "last_id": None if vocab_size is None else vocab_size - 1}
    for kind, (what, advice) in _ROW_ERRORS.items():  # in this order: the first kind found is the one reported
        rows = problems.get(kind)
        if rows:
            listed = ", ".join(rows[:shown]) + (" ..." if len(rows) > shown else "")
            raise ValueError(f"{source}: {len(rows)} row(s) {what.format(**limits)}: {listed}; "
                             f"{advice.format(**limits)}")


_ROW_ERRORS = {  # kind: (what is wrong, what to do)
    "mismatched": ("have a prompt_mask whose length differs from their input_ids", "give one entry per token"),
    "short": ("have fewer response (non-prompt) tokens than the {min_response_tokens} the objective scores (one, or "
              "K for the log-sum over K blocks)", "drop them, give them a longer response, or lower the objective's "
              "blocks"),
    "vocabulary": ("hold token ids outside the model's vocabulary of {vocab_size} (ids 0..{last_id})",
                   "tokenize with the model's own tokenizer"),
    "mask": ("hold the [MASK] id {mask_token_id}, the token the objective corrupts with",
             "remove it from the data, or pass --allow_mask_token_in_data if it is meant to be there"),
    "too_long": ("are longer than the model's {max_length} positions",
                 "truncate or drop them (dataset.filter(lambda row: len(row['input_ids']) <= {max_length}))"),
}


def _row_checks(ids: list[int], prompt: list[bool], max_length: int | None, vocab_size: int | None,
                mask_token_id: int | None, min_response_tokens: int):
    """(kind, failed, detail) for each check of one row; see check_rows."""
    responses = len(ids) - sum(map(bool, prompt))
    yield "mismatched", len(prompt) != len(ids), f" ({len(ids)} tokens, {len(prompt)} mask entries)"
    yield "short", len(prompt) == len(ids) and responses < min_response_tokens, f" ({responses})"
    outside = [t for t in ids if vocab_size is not None and not 0 <= t < vocab_size]
    yield "vocabulary", bool(outside), f" (id {outside[0] if outside else None})"
    masked = mask_token_id is not None and mask_token_id in ids
    yield "mask", masked, f" (position {ids.index(mask_token_id) if masked else None})"
    yield "too_long", max_length is not None and len(ids) > max_length, f" ({len(ids)} tokens)"


def _read_local(path: Path) -> tuple[datasets.Dataset, Callable[[int], str] | None]:
    """(the dataset at `path`, how to name its row i in errors: "line N" for JSONL, else None)."""
    if path.is_dir():
        if not any((path / name).exists() for name in ("state.json", "dataset_dict.json")):
            raise ValueError(f"{path} is a directory but not a datasets.save_to_disk directory (no state.json or "
                             "dataset_dict.json); save the data with dataset.save_to_disk(DIR) or give a .jsonl file")
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if "train" not in loaded:
                raise ValueError(f"{path} holds splits {sorted(loaded)} but no 'train' split; save the training split")
            loaded = loaded["train"]
        return loaded, None
    if path.suffix in (".jsonl", ".json"):
        if not path.read_text().strip():  # datasets raises a bare StopIteration on an empty file
            raise ValueError(f"{path} is empty; give it at least one example")
        lines = check_json_lines(path) if path.suffix == ".jsonl" else check_json_array(path)
        loaded = datasets.load_dataset("json", data_files=str(path), split="train")
        if lines is None or len(lines) != len(loaded):
            return loaded, None
        return loaded, lambda row: f"row {row} at line {lines[row]}"
    raise ValueError(f"{path}: expected a datasets directory (save_to_disk) or a .jsonl / .json file")


def check_json_lines(path: Path) -> list[int]:
    """Check every line of a JSONL file (valid JSON, an object, the fields of one row shape, none null);
    returns the line numbers (from 1) of its rows. A bad line is a ValueError naming file and line."""
    numbers, shape = [], None
    with path.open() as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path} line {number}: not valid JSON ({error}); one JSON object per line") from error
            shape = _check_row(row, shape, f"{path} line {number}")
            numbers.append(number)
    return numbers


def check_json_array(path: Path) -> None:
    """Check a .json file that holds a list of rows (other layouts are left to datasets)."""
    try:
        rows = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if isinstance(rows, list):
        shape = None
        for index, row in enumerate(rows):
            shape = _check_row(row, shape, f"{path} row {index} (counting from 0)")


def _check_row(row: Any, shape: tuple[str, ...] | None, where: str) -> tuple[str, ...]:
    """The row's shape (the first row's decides it for the rest); ValueError naming `where` if bad."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}; {FIELDS_HELP}")
    present = [name for name, value in row.items() if value is not None]
    shape = shape or row_shape(present) or row_shape(row)
    if shape is None:
        raise ValueError(f"{where}: fields {sorted(row)}: no usable field; {FIELDS_HELP}")
    problem = field_problem(row, shape)
    if problem is not None:
        raise ValueError(f"{where}: {problem}")
    return shape


def _tokenize(row: dict[str, Any], tokenizer: Any) -> dict[str, list]:
    if "prompt" in row and "response" in row:
        prompt = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
        response = tokenizer(row["response"], add_special_tokens=False)["input_ids"]
        return {"input_ids": prompt + response, "prompt_mask": [True] * len(prompt) + [False] * len(response)}
    ids = tokenizer(row["text"], add_special_tokens=False)["input_ids"]
    return {"input_ids": ids, "prompt_mask": [False] * len(ids)}


def _check_fields(dataset: datasets.Dataset, shape: tuple[str, ...], source: str,
                  row_name: Callable[[int], str]) -> None:
    """Every row's fields of `shape` present and of the right type (a null field names its row)."""
    columns = list(shape) + (["prompt_mask"] if "input_ids" in shape and "prompt_mask" in dataset.column_names else [])
    offset = 0
    for chunk in dataset.select_columns(columns).iter(batch_size=1024):
        for row in range(len(chunk[columns[0]])):
            problem = field_problem({name: chunk[name][row] for name in columns}, shape)
            if problem is not None:
                raise ValueError(f"{source} {row_name(offset + row)}: {problem}")
        offset += len(chunk[columns[0]])


def normalise_rows(dataset: datasets.Dataset, tokenizer: Any, source: str, max_length: int | None = None, *,
                   row_name: Callable[[int], str] | None = None, **checks: Any) -> datasets.Dataset:
    """Turn a dataset of any accepted shape into `input_ids` + `prompt_mask` rows, checked (check_rows;
    `checks` are its vocab_size, mask_token_id and min_response_tokens)."""
    if len(dataset) == 0:
        raise ValueError(f"{source} is empty; give it at least one example")
    name = row_name or (lambda row: f"row {row} (counting from 0)")
    columns = set(dataset.column_names)
    shape = row_shape(columns)
    if shape is None:
        raise ValueError(f"{source} has columns {sorted(columns)}: no usable field; {FIELDS_HELP}")
    _check_fields(dataset, shape, source, name)
    if "input_ids" in columns:
        if "prompt_mask" in columns:
            rows = dataset.select_columns(["input_ids", "prompt_mask"])
        else:
            rows = dataset.select_columns(["input_ids"]).map(
                lambda row: {"prompt_mask": [False] * len(row["input_ids"])})
    elif tokenizer is None:
        raise ValueError(f"{source} holds text, but the model directory has no tokenizer; save one beside the model")
    else:
        rows = dataset.map(_tokenize, fn_kwargs={"tokenizer": tokenizer}, remove_columns=sorted(columns))
    check_rows(rows, source, max_length, row_name=name, **checks)
    return rows


def load_training_data(spec: str, tokenizer: Any, samples_per_toyset: int = 2000, seed: int = 0,
                       max_length: int | None = None, *, vocab_size: int | None = None,
                       mask_token_id: int | None = None, min_response_tokens: int = 1) -> datasets.Dataset:
    """Toy set names (comma-separated) or a local file / directory; see the module docstring.
    `max_length`: the model's positions (Denoiser.max_positions); longer rows are refused, and so are
    token ids outside `vocab_size`, the `mask_token_id` (None: allowed) and rows with fewer than
    `min_response_tokens` response tokens."""
    checks = {"vocab_size": vocab_size, "mask_token_id": mask_token_id, "min_response_tokens": min_response_tokens}
    if _is_toy_spec(spec):
        return toy_training_data([name.strip() for name in spec.split(",")], samples_per_toyset, seed, max_length,
                                 tokenizer, **checks)
    path = Path(spec)
    if not path.exists():
        raise ValueError(
            f"dataset {spec!r} is neither a local file or directory nor toy set names "
            f"(known: {', '.join(TOYSETS.names())})"
        )
    dataset, row_name = _read_local(path)
    return normalise_rows(dataset, tokenizer, str(path), max_length, row_name=row_name, **checks)
