r"""Your own toy sets: an exact distribution (or a Dataset) and a validator on the answer text.

    # mysets.py
    from jointobj.toysets.user_sets import make_toyset

    dates = make_toyset("dates", {                    # {(prompt, answer): p(prompt, answer)}
        ("when is christmas", "december 25"): 0.5,
        ("when is halloween", "october 31"): 0.5,
    })
    colours = make_toyset("colours", {"red apple": 0.7, "green pear": 0.3})   # {text: p(text)}

    jointobj eval --oracle --toyset mysets:dates,mysets:colours --decoder random --tokens-per-step 1,all \
        --json out/mine.json

Layout. Words are split on whitespace, one token each. Every prompt is the set's tag `<name>`,
then the prompt's words and `[SEP]` (conditional sets), or the tag alone ({text: p} sets), as
the built-in sets are laid out; all prompts of a set need one word count, and so do all
answers (pad short ones with a word of your own, e.g. `<end>`).

Tokenizer. By default the set's tokenizer is the built-in one (`toy_tokenizer()`) with the
set's new words (and its tag) appended, sorted, so built-in sets keep their ids, one model can
learn both, and the same file gives the same ids in every process. Sets named together in one
command share one vocabulary built from all of them (`jointobj.toysets.combined`), so several of
your sets need no shared tokenizer of their own. With `extend_vocabulary=False` an unknown word is
an error listing them.

Validator. `validator(answer: str, prompt: str) -> bool`, called with the answer's words joined
by single spaces and the prompt's words likewise (without the tag and `[SEP]`; '' for {text: p}
sets). Without one, an answer is valid when it has positive probability under the set given
its prompt. The validator must accept every example of the set (checked when it is built).

A set is reachable from every command by its import reference, `--toyset module:attribute`
(`jointobj.toysets.builtin.load_toyset`): the attribute is a ToySet, or a function of no arguments
returning one.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import datasets
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import PreTrainedTokenizerFast

from jointobj.toysets.builtin import SPECIAL_TOKENS, ToySet, toy_tokenizer, toyset_from_dataset

__all__ = ["TextValidator", "extended_tokenizer", "is_word_level", "make_toyset"]

TextValidator = Callable[[str, str], bool]  # (answer_text, prompt_text) -> valid
SEP = "[SEP]"
PROBABILITY_TOLERANCE = 1e-6


def extended_tokenizer(words, base: PreTrainedTokenizerFast | None = None) -> PreTrainedTokenizerFast:
    """A word-level tokenizer: `base`'s vocabulary (default `toy_tokenizer()`), then `words` it lacks, sorted."""
    base = base if base is not None else toy_tokenizer()
    vocab = dict(base.get_vocab())
    new = sorted(set(words) - set(vocab))
    if not new:
        return base
    for word in new:
        vocab[word] = len(vocab)
    model = WordLevel(vocab, unk_token="[UNK]")
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]",
                                   mask_token="[MASK]", sep_token="[SEP]")


def is_word_level(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and isinstance(backend.model, WordLevel)


def _joint_table(name: str, data: Mapping) -> dict[tuple[str, str], float]:
    """{(prompt, answer): p} or {text: p} -> {(prompt words, answer words): p}, keys normalised to single spaces."""
    table: dict[tuple[str, str], float] = {}
    for key, probability in data.items():
        if isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, str) for k in key):
            prompt, answer = key
        elif isinstance(key, str):
            prompt, answer = "", key
        else:
            raise ValueError(f"toy set {name!r}: key {key!r} is neither a (prompt, answer) pair of strings nor a "
                             "text; give {(prompt, answer): probability} or {text: probability}")
        try:
            probability = float(probability)
        except (TypeError, ValueError):
            raise ValueError(f"toy set {name!r}: the probability of {key!r} is {probability!r}, not a number") from None
        if not probability > 0 or math.isinf(probability):
            raise ValueError(f"toy set {name!r}: the probability of {key!r} is {probability!r}; every entry needs a "
                             "positive, finite probability (drop entries that cannot occur)")
        words = (" ".join(prompt.split()), " ".join(answer.split()))
        if not words[1]:
            raise ValueError(f"toy set {name!r}: the answer of {key!r} is empty; every answer needs a word")
        table[words] = table.get(words, 0.0) + probability
    if not table:
        raise ValueError(f"toy set {name!r}: the distribution is empty; give at least one entry")
    return table


def _table_from_dataset(name: str, dataset: datasets.Dataset) -> dict[tuple[str, str], float]:
    """Text rows -> {(prompt, answer): p}: the 'probability' column when present, else each row counts once."""
    columns = set(dataset.column_names)
    answer_column = "answer" if "answer" in columns else "response" if "response" in columns else "text"
    if answer_column not in columns:
        raise ValueError(f"toy set {name!r}: the dataset has columns {sorted(columns)}; give 'prompt' and 'answer' "
                         "(or 'response'), or 'text', optionally with 'probability' (else every row counts once); "
                         "or token rows with 'input_ids' and 'prompt_mask'")
    prompts = dataset["prompt"] if "prompt" in columns else [""] * len(dataset)
    weights = dataset["probability"] if "probability" in columns else [1.0] * len(dataset)
    table: dict = {}
    for prompt, answer, weight in zip(prompts, dataset[answer_column], weights):
        key = (prompt, answer)
        table[key] = table.get(key, 0.0) + float(weight)
    return table


def _check_total(name: str, table: dict[tuple[str, str], float], normalise: bool) -> dict[tuple[str, str], float]:
    total = math.fsum(table.values())
    if abs(total - 1) > PROBABILITY_TOLERANCE and not normalise:
        how = f"{1 - total:.6g} short of 1" if total < 1 else f"{total - 1:.6g} over 1"
        raise ValueError(f"toy set {name!r}: the probabilities sum to {total:.6g} ({how}); fix the table, or pass "
                         "normalise=True to divide every probability by their sum")
    return {key: p / total for key, p in table.items()}


def _encode(name: str, texts: list[str], tokenizer: Any, extend: bool) -> tuple[Any, list[list[int]]]:
    """(tokenizer, ids of every text); the word-level tokenizer is extended to unknown words, or they are refused."""
    words = {word for text in texts for word in text.split()}
    word_level = is_word_level(tokenizer)
    unknown = sorted(words - set(tokenizer.get_vocab())) if word_level else []
    if unknown and extend:
        tokenizer = extended_tokenizer(unknown, tokenizer)
    elif unknown:
        shown = ", ".join(repr(w) for w in unknown[:20]) + (" ..." if len(unknown) > 20 else "")
        raise ValueError(f"toy set {name!r}: the tokenizer does not know {len(unknown)} word(s): {shown}. Pass "
                         "extend_vocabulary=True (the default) to append them, or build the tokenizer yourself with "
                         "jointobj.toysets.user_sets.extended_tokenizer(words) and pass tokenizer=")
    if word_level:
        vocab = tokenizer.get_vocab()
        return tokenizer, [[vocab[w] for w in text.split()] for text in texts]
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    unk = tokenizer.unk_token_id
    for text, row in zip(texts, ids):
        if unk is not None and unk in row:
            raise ValueError(f"toy set {name!r}: the tokenizer maps part of {text!r} to its unknown token "
                             f"{tokenizer.unk_token!r}; use words it knows, or the default word-level tokenizer")
    return tokenizer, ids


def _same_lengths(name: str, what: str, texts: list[str], ids: list[list[int]]) -> int:
    lengths = {len(row) for row in ids}
    if len(lengths) > 1:
        by_length = {}
        for text, row in zip(texts, ids):
            by_length.setdefault(len(row), text)
        examples = "; ".join(f"{n} tokens: {text!r}" for n, text in sorted(by_length.items()))
        raise ValueError(f"toy set {name!r}: {what}s differ in length ({examples}); every {what} of a set needs the "
                         "same number of tokens: pad the shorter ones with a word of your own (e.g. '<end>')")
    return lengths.pop()


def _text_validator(validator: TextValidator | None, tag: str) -> Callable[[list, list], bool] | None:
    """The user's text validator as the ToySet's token validator (tag and [SEP] stripped from the prompt)."""
    if validator is None:
        return None

    def on_tokens(prompt_tokens: list, answer_tokens: list) -> bool:
        words = [t for t in prompt_tokens if t not in (tag, SEP)]
        return bool(validator(" ".join(answer_tokens), " ".join(words)))

    on_tokens.text_validator = validator  # for messages and introspection
    return on_tokens


def make_toyset(name: str, data: Mapping | datasets.Dataset, validator: TextValidator | None = None, *,
                tokenizer: PreTrainedTokenizerFast | None = None, extend_vocabulary: bool = True,
                normalise: bool = False) -> ToySet:
    """A user's toy set (see the module docstring): checked, not registered (pass it by import reference).

    data       {(prompt, answer): p(prompt, answer)} (conditional), {text: p(text)} (unconditional), or a
               Dataset of text rows ('prompt' + 'answer' / 'response', or 'text'; a 'probability' column,
               else each row counts once) or of token rows ('input_ids' + 'prompt_mask', used as given)
    validator  (answer_text, prompt_text) -> bool; None: valid iff the set gives it positive probability
    tokenizer  a word-level tokenizer to extend (default `toy_tokenizer()`), or any tokenizer that knows
               every word (it is not extended)
    normalise  divide the probabilities by their sum instead of refusing a table that misses 1
    """
    if not name or any(c.isspace() for c in name):
        raise ValueError(f"toy set name {name!r} must be a non-empty word without spaces (it becomes the tag <{name}>)")
    if validator is not None and not callable(validator):
        raise ValueError(f"toy set {name!r}: validator must be a function (answer_text, prompt_text) -> bool")
    base = tokenizer if tokenizer is not None else toy_tokenizer()
    tag = f"<{name}>"
    if isinstance(data, datasets.Dataset) and {"input_ids", "prompt_mask"} <= set(data.column_names):
        toyset = toyset_from_dataset(name, data, _text_validator(validator, tag) or _always, base)
    else:
        toyset = _from_table(name, data, validator, base, tag, extend_vocabulary, normalise)
    if validator is None:
        toyset.validator = _in_support(toyset)
    return toyset.check()


def _from_table(name: str, data: Mapping | datasets.Dataset, validator: TextValidator | None, base: Any, tag: str,
                extend_vocabulary: bool, normalise: bool) -> ToySet:
    counted = isinstance(data, datasets.Dataset) and "probability" not in data.column_names  # counts, not p
    table = _joint_table(name, _table_from_dataset(name, data) if isinstance(data, datasets.Dataset) else data)
    table = _check_total(name, table, normalise or counted)
    reserved = set(SPECIAL_TOKENS) & {word for key in table for text in key for word in text.split()}
    if reserved:
        raise ValueError(f"toy set {name!r}: the texts use the reserved token(s) {', '.join(sorted(reserved))}; "
                         "pick other words")
    conditional = any(prompt for prompt, _ in table)
    prompts = sorted({prompt for prompt, _ in table})
    slot = {prompt: i for i, prompt in enumerate(prompts)}
    prompt_texts = [f"{tag} {prompt} {SEP}" if conditional else tag for prompt in prompts]
    keys = sorted(table, key=lambda key: (slot[key[0]], key[1]))
    answers = [answer for _, answer in keys]
    tokenizer, ids = _encode(name, prompt_texts + answers, base, extend_vocabulary)
    prompt_ids, answer_ids = ids[:len(prompts)], ids[len(prompts):]
    _same_lengths(name, "prompt", prompt_texts, prompt_ids)
    _same_lengths(name, "answer", answers, answer_ids)
    joint = torch.tensor([table[key] for key in keys], dtype=torch.float64)  # [T]
    owner = torch.tensor([slot[prompt] for prompt, _ in keys])  # [T]
    prompt_probs = torch.zeros(len(prompts), dtype=torch.float64).index_add_(0, owner, joint)  # [P]
    counts = torch.bincount(owner, minlength=len(prompts))  # [P]
    return ToySet.from_flat(name, tokenizer, torch.tensor(prompt_ids), prompt_probs, torch.tensor(answer_ids),
                            joint / prompt_probs[owner], counts, _text_validator(validator, tag) or _always)


def _always(prompt_tokens: list, answer_tokens: list) -> bool:
    return True


def _in_support(toyset: ToySet) -> Callable[[list, list], bool]:
    """Validator: the answer has positive probability given the prompt (on token strings)."""
    vocab = toyset.tokenizer.get_vocab()

    def valid(prompt_tokens: list, answer_tokens: list) -> bool:
        prompt = torch.tensor([[vocab.get(t, -1) for t in prompt_tokens]])  # [1, lp]
        answer = torch.tensor([[vocab.get(t, -1) for t in answer_tokens]])  # [1, la]
        try:
            return bool(torch.isfinite(toyset.log_prob(prompt, answer))[0])
        except ValueError:  # a prompt the set does not hold
            return False

    return valid
