"""Training data for the recipes: toy sets by name, or a local dataset in one of three shapes.

    load_training_data("likes_tennis,cities,shuffle_3", tokenizer)   # toy sets, generated in code
    load_training_data("data/sft.jsonl", tokenizer)                  # JSONL file
    load_training_data("data/my_dataset", tokenizer)                 # datasets.save_to_disk directory

Rows become `input_ids` + `prompt_mask` (see jointobj.batch). A local dataset's rows may hold

- `input_ids` (token ids), with an optional `prompt_mask`;
- `prompt` and `response` (SFT): the prompt is context, only the response is scored;
- `text`: unconditional text, every token scored.

Text is tokenized without special tokens: apply your chat template (and any EOS padding the
model was trained with, as LLaDA's SFT does) before saving the data.

Every row is checked before training starts: it needs at least one response (non-prompt) token
to score, and, given `max_length` (the model's positions), it must fit in them. A bad row is
an error that names the dataset, the row and the limit, not a failure mid-training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets

from jointobj.toysets import TOYSETS, load_toyset

FIELDS_HELP = "rows need 'input_ids' (optionally 'prompt_mask'), or 'prompt' and 'response', or 'text'"


def _is_toy_spec(spec: str) -> bool:
    names = [name.strip() for name in spec.split(",")]
    return not Path(spec).exists() and all(_known_toyset(name) for name in names)


def _known_toyset(name: str) -> bool:
    try:
        load_toyset(name)
    except ValueError:
        return False
    return True


def toy_training_data(names: list[str], samples_per_set: int, seed: int = 0,
                      max_length: int | None = None) -> datasets.Dataset:
    """Samples from each named toy set (each checked, see check_rows), concatenated and shuffled."""
    parts = [load_toyset(name).dataset(samples_per_set, seed=seed + i) for i, name in enumerate(names)]
    for name, part in zip(names, parts):
        check_rows(part, f"toy set {name!r}", max_length)
    return datasets.concatenate_datasets(parts).shuffle(seed=seed)


def check_rows(dataset: datasets.Dataset, source: str, max_length: int | None = None, shown: int = 5) -> None:
    """Refuse rows with no response (non-prompt) token to score, rows whose prompt_mask does not match
    their input_ids, and (given max_length) rows longer than the model's positions, naming the
    dataset, the first offending rows and the limit."""
    too_long, no_response, mismatched = [], [], []
    offset = 0
    for chunk in dataset.select_columns(["input_ids", "prompt_mask"]).iter(batch_size=1024):
        for row, (ids, prompt) in enumerate(zip(chunk["input_ids"], chunk["prompt_mask"]), start=offset):
            if len(prompt) != len(ids):
                mismatched.append((row, len(ids), len(prompt)))
            elif all(prompt):
                no_response.append(row)
            if max_length is not None and len(ids) > max_length:
                too_long.append((row, len(ids)))
        offset += len(chunk["input_ids"])
    if mismatched:
        row, n, m = mismatched[0]
        raise ValueError(f"{source}: {len(mismatched)} row(s) have a prompt_mask whose length differs from their "
                         f"input_ids (first: row {row} counting from 0, {n} tokens, {m} mask entries); give one entry per token")
    if no_response:
        raise ValueError(f"{source}: {len(no_response)} row(s) have no response token to score (every token is "
                         f"prompt, or the row is empty): rows {no_response[:shown]} counting from 0"
                         f"{' ...' if len(no_response) > shown else ''}; drop them or give them a response")
    if too_long:
        rows = ", ".join(f"row {row} ({n} tokens)" for row, n in too_long[:shown])
        raise ValueError(f"{source}: {len(too_long)} row(s) are longer than the model's {max_length} positions: "
                         f"{rows}{' ...' if len(too_long) > shown else ''} (rows counted from 0); truncate or drop them "
                         f"(dataset.filter(lambda row: len(row['input_ids']) <= {max_length}))")


def _read_local(path: Path) -> datasets.Dataset:
    if path.is_dir():
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if "train" not in loaded:
                raise ValueError(f"{path} holds splits {sorted(loaded)} but no 'train' split; save the training split")
            loaded = loaded["train"]
        return loaded
    if path.suffix in (".jsonl", ".json"):
        if not path.read_text().strip():  # datasets raises a bare StopIteration on an empty file
            raise ValueError(f"{path} is empty; give it at least one example")
        return datasets.load_dataset("json", data_files=str(path), split="train")
    raise ValueError(f"{path}: expected a datasets directory (save_to_disk) or a .jsonl / .json file")


def _tokenize(row: dict[str, Any], tokenizer: Any) -> dict[str, list]:
    if "prompt" in row and "response" in row:
        prompt = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
        response = tokenizer(row["response"], add_special_tokens=False)["input_ids"]
        return {"input_ids": prompt + response, "prompt_mask": [True] * len(prompt) + [False] * len(response)}
    ids = tokenizer(row["text"], add_special_tokens=False)["input_ids"]
    return {"input_ids": ids, "prompt_mask": [False] * len(ids)}


def normalise_rows(dataset: datasets.Dataset, tokenizer: Any, source: str, max_length: int | None = None) -> datasets.Dataset:
    """Turn a dataset of any accepted shape into `input_ids` + `prompt_mask` rows, checked (check_rows)."""
    if len(dataset) == 0:
        raise ValueError(f"{source} is empty; give it at least one example")
    columns = set(dataset.column_names)
    if "input_ids" in columns:
        if "prompt_mask" in columns:
            rows = dataset.select_columns(["input_ids", "prompt_mask"])
        else:
            rows = dataset.select_columns(["input_ids"]).map(lambda row: {"prompt_mask": [False] * len(row["input_ids"])})
    elif not ({"prompt", "response"} <= columns or "text" in columns):
        raise ValueError(f"{source} has columns {sorted(columns)}: no usable field; {FIELDS_HELP}")
    elif tokenizer is None:
        raise ValueError(f"{source} holds text, but the model directory has no tokenizer; save one beside the model")
    else:
        rows = dataset.map(_tokenize, fn_kwargs={"tokenizer": tokenizer}, remove_columns=sorted(columns))
    check_rows(rows, source, max_length)
    return rows


def load_training_data(spec: str, tokenizer: Any, samples_per_toyset: int = 2000, seed: int = 0,
                       max_length: int | None = None) -> datasets.Dataset:
    """Toy set names (comma-separated) or a local file / directory; see the module docstring.
    `max_length`: the model's positions (Denoiser.max_positions); longer rows are refused."""
    if _is_toy_spec(spec):
        return toy_training_data([name.strip() for name in spec.split(",")], samples_per_toyset, seed, max_length)
    path = Path(spec)
    if not path.exists():
        raise ValueError(
            f"dataset {spec!r} is neither a local file or directory nor toy set names "
            f"(known: {', '.join(TOYSETS.names())})"
        )
    return normalise_rows(_read_local(path), tokenizer, str(path), max_length)
