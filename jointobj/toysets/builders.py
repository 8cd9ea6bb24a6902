"""Generators for the built-in toy sets: each returns its exact distribution as id tensors.

Kept apart from `toysets.py` (the `ToySet` class and its API). Nothing here knows about
tokenizers beyond a `word -> id` dict, so `toysets.py` can build the vocabulary from the
word lists below and then call the generators.

Every set is laid out as `prompt tokens` then `answer tokens`; the first prompt token is
the set's tag `<name>`, conditional sets end their prompt with `[SEP]`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch

__all__ = ["FAMILY_RANGES", "SetTables", "builtin_set_names", "builtin_words", "latin_squares", "sudoku_grids"]

Validator = Callable[[list, list], bool]

SEP = "[SEP]"
ITEMS = tuple("ABCDEFGH")  # shared by shuffle / copy / reverse
LIKES_TENNIS = (("he", "likes", "apple"), ("i", "play", "tennis"))
CITIES = (("new", "york"), ("new", "orleans"), ("mexico", "city"), ("panama", "city"))
DETERMINERS = {"sg": ("this", "that"), "pl": ("these", "those")}
NOUNS = {"sg": ("dog", "cat", "bird"), "pl": ("dogs", "cats", "birds")}
VERBS = {"sg": ("sees", "likes", "chases"), "pl": ("see", "like", "chase")}
SUDOKU_BLANK = "_"

# Parametrised families and the n each accepts. copy/reverse stop at 6: 8**n prompts.
FAMILY_RANGES = {
    "shuffle": range(2, 9),
    "latin_square": range(2, 6),
    "copy": range(2, 7),
    "reverse": range(2, 7),
}
FIXED_SETS = ("likes_tennis", "cities", "sudoku_4", "agreement")
ALIASES = {"copy": "copy_4", "reverse": "reverse_4"}


def tag(name: str) -> str:
    """The tag token that opens every prompt of set `name`."""
    return f"<{name}>"


def builtin_set_names() -> list[str]:
    """Every concrete built-in set (one tag each), e.g. `shuffle_3`, `latin_square_4`."""
    names = list(FIXED_SETS)
    for family, ns in FAMILY_RANGES.items():
        names += [f"{family}_{n}" for n in ns]
    return sorted(names)


def builtin_words() -> list[str]:
    """All non-special, non-tag words of the built-in sets, sorted."""
    words = set(ITEMS) | {str(k) for k in range(1, max(FAMILY_RANGES["latin_square"]) + 1)} | {SUDOKU_BLANK}
    words |= {w for sentence in LIKES_TENNIS + CITIES for w in sentence}
    for table in (DETERMINERS, NOUNS, VERBS):
        words |= {w for group in table.values() for w in group}
    return sorted(words)


@dataclass
class SetTables:
    """A set's exact distribution in flat form: answers of prompt p are rows
    `offsets[p]:offsets[p+1]` of `answers` (offsets = cumsum of `counts`)."""

    prompts: torch.Tensor  # [P, lp] long, distinct
    prompt_probs: torch.Tensor  # [P] float64
    answers: torch.Tensor  # [T, la] long, grouped by prompt
    answer_probs: torch.Tensor  # [T] float64, conditional on the prompt
    counts: torch.Tensor  # [P] long, answers per prompt
    validator: Validator


def _lookup(vocab: Mapping[str, int], words: Sequence[str]) -> torch.Tensor:
    return torch.tensor([vocab[w] for w in words], dtype=torch.long)


def _uniform(n: int) -> torch.Tensor:
    return torch.full((n,), 1.0 / n, dtype=torch.float64)


def _unconditional(vocab: Mapping[str, int], name: str, answers: torch.Tensor, validator: Validator) -> SetTables:
    """One prompt (the tag), answers uniform."""
    return SetTables(
        prompts=_lookup(vocab, [tag(name)])[None],  # [1, 1]
        prompt_probs=torch.ones(1, dtype=torch.float64),
        answers=answers,
        answer_probs=_uniform(len(answers)),
        counts=torch.tensor([len(answers)]),
        validator=validator,
    )


# ---------------------------------------------------------------- sentence sets


def build_likes_tennis(vocab: Mapping[str, int]) -> SetTables:
    allowed = {tuple(s) for s in LIKES_TENNIS}
    answers = torch.stack([_lookup(vocab, s) for s in LIKES_TENNIS])  # [2, 3]
    return _unconditional(vocab, "likes_tennis", answers, lambda prompt, answer: tuple(answer) in allowed)


def build_cities(vocab: Mapping[str, int]) -> SetTables:
    allowed = {tuple(s) for s in CITIES}
    answers = torch.stack([_lookup(vocab, s) for s in CITIES])  # [4, 2]
    return _unconditional(vocab, "cities", answers, lambda prompt, answer: tuple(answer) in allowed)


def _number(word: str, table: Mapping[str, Sequence[str]]) -> str | None:
    return next((number for number, words in table.items() if word in words), None)


def agreement_valid(prompt: list, answer: list) -> bool:
    """DET NOUN VERB DET NOUN with det-noun agreement in both NPs and subject-verb agreement."""
    if len(answer) != 5:
        return False
    det1, noun1, verb, det2, noun2 = answer
    subject = {_number(det1, DETERMINERS), _number(noun1, NOUNS), _number(verb, VERBS)}
    obj = {_number(det2, DETERMINERS), _number(noun2, NOUNS)}
    return len(subject) == 1 and None not in subject and len(obj) == 1 and None not in obj


def build_agreement(vocab: Mapping[str, int]) -> SetTables:
    """Subject and object number 1/2 each, words uniform in their class: all 432 sentences equally likely."""
    sentences = [
        (d1, n1, v, d2, n2)
        for subject, obj in itertools.product(("sg", "pl"), repeat=2)
        for d1, n1, v, d2, n2 in itertools.product(
            DETERMINERS[subject], NOUNS[subject], VERBS[subject], DETERMINERS[obj], NOUNS[obj]
        )
    ]
    answers = torch.stack([_lookup(vocab, s) for s in sentences])  # [432, 5]
    return _unconditional(vocab, "agreement", answers, agreement_valid)


# ---------------------------------------------------------------- item sets


def _item_prompts(vocab: Mapping[str, int], name: str, items: torch.Tensor) -> torch.Tensor:
    """[P, n] item indices -> [P, n + 2] prompt ids: tag, items, [SEP]."""
    item_ids = _lookup(vocab, ITEMS)[items]  # [P, n]
    tags = torch.full((len(items), 1), vocab[tag(name)], dtype=torch.long)
    seps = torch.full((len(items), 1), vocab[SEP], dtype=torch.long)
    return torch.cat([tags, item_ids, seps], dim=1)


def build_shuffle(vocab: Mapping[str, int], n: int) -> SetTables:
    """Prompt: n distinct items ascending; answer: a uniform permutation of them."""
    subsets = torch.tensor(list(itertools.combinations(range(len(ITEMS)), n)))  # [C, n]
    perms = torch.tensor(list(itertools.permutations(range(n))))  # [n!, n]
    answers = _lookup(vocab, ITEMS)[subsets[:, perms]]  # [C, n!, n]

    def valid(prompt: list, answer: list) -> bool:
        items = prompt[1:-1]
        return len(answer) == len(items) and sorted(answer) == sorted(items)

    return SetTables(
        prompts=_item_prompts(vocab, f"shuffle_{n}", subsets),
        prompt_probs=_uniform(len(subsets)),
        answers=answers.reshape(-1, n),  # [C * n!, n]
        answer_probs=_uniform(len(perms)).repeat(len(subsets)),
        counts=torch.full((len(subsets),), len(perms)),
        validator=valid,
    )


def _all_sequences(n: int) -> torch.Tensor:
    """[8**n, n]: every item sequence of length n, lexicographic."""
    codes = torch.arange(len(ITEMS) ** n)  # [8**n]
    powers = len(ITEMS) ** torch.arange(n - 1, -1, -1)  # [n]
    return codes[:, None] // powers % len(ITEMS)  # [8**n, n]


def build_copy(vocab: Mapping[str, int], n: int, reverse: bool = False) -> SetTables:
    """Prompt: n items (repetition allowed, uniform); answer: the same items (or reversed)."""
    name = f"{'reverse' if reverse else 'copy'}_{n}"
    items = _all_sequences(n)  # [P, n]
    answers = _lookup(vocab, ITEMS)[items.flip(1) if reverse else items]  # [P, n]

    def valid(prompt: list, answer: list) -> bool:
        given = prompt[1:-1]
        return list(answer) == (given[::-1] if reverse else given)

    return SetTables(
        prompts=_item_prompts(vocab, name, items),
        prompt_probs=_uniform(len(items)),
        answers=answers,
        answer_probs=torch.ones(len(items), dtype=torch.float64),
        counts=torch.ones(len(items), dtype=torch.long),
        validator=valid,
    )


def build_reverse(vocab: Mapping[str, int], n: int) -> SetTables:
    return build_copy(vocab, n, reverse=True)


# ---------------------------------------------------------------- grids


def latin_squares(n: int) -> torch.Tensor:
    """[N, n, n] every Latin square of order n over symbols 0..n-1, lexicographic by rows.

    Row by row: a partial square keeps a bitmask of the symbols used in each column and is
    extended by every permutation that avoids them; the last row is forced.
    """
    perms = torch.tensor(list(itertools.permutations(range(n))))  # [n!, n]
    bits = 1 << perms  # [n!, n]
    squares, used = perms[:, None, :], bits.clone()  # [N, 1, n], [N, n]
    for _ in range(n - 2):
        pieces = []
        for start in range(0, len(used), 4096):  # chunks bound the [chunk, n!, n] temporary
            ok = (used[start : start + 4096, None, :] & bits[None]).eq(0).all(-1)  # [chunk, n!]
            rows, perm = ok.nonzero(as_tuple=True)
            pieces.append((rows + start, perm))
        rows = torch.cat([r for r, _ in pieces])
        perm = torch.cat([p for _, p in pieces])
        squares = torch.cat([squares[rows], perms[perm][:, None]], dim=1)  # [N', k + 1, n]
        used = used[rows] | bits[perm]  # [N', n]
    if n > 1:
        full = (1 << n) - 1
        last = (full ^ used).float().log2().round().long()  # [N, n]: the one missing symbol per column
        squares = torch.cat([squares, last[:, None]], dim=1)  # [N, n, n]
    return squares


def _is_latin(cells: list, symbols: Sequence[str]) -> bool:
    n = len(symbols)
    if len(cells) != n * n:
        return False
    rows = [cells[r * n : (r + 1) * n] for r in range(n)]
    lines = rows + [list(col) for col in zip(*rows)]
    return all(sorted(line) == list(symbols) for line in lines)


def build_latin_square(vocab: Mapping[str, int], n: int) -> SetTables:
    """Unconditional: every Latin square of order n, row-major, symbols `1`..`n`, uniform."""
    symbols = [str(k) for k in range(1, n + 1)]
    answers = _lookup(vocab, symbols)[latin_squares(n).reshape(-1, n * n)]  # [N, n*n]
    return _unconditional(vocab, f"latin_square_{n}", answers, lambda prompt, answer: _is_latin(answer, symbols))


def sudoku_grids() -> torch.Tensor:
    """[288, 16] every 4x4 sudoku solution (symbols 0..3), row-major."""
    squares = latin_squares(4)  # [576, 4, 4]
    boxes = squares.reshape(-1, 2, 2, 2, 2).permute(0, 1, 3, 2, 4).reshape(-1, 4, 4)  # [576, box, cell]
    ok = (boxes.sort(-1).values == torch.arange(4)).all(-1).all(-1)  # [576]
    return squares[ok].reshape(-1, 16)


def minimal_puzzle(grids: torch.Tensor, index: int) -> torch.Tensor:
    """[16] bool givens for grids[index]: start from the full grid, drop cells in a fixed
    random order (seeded by `index`) while the solution stays unique among `grids`.
    Greedy dropping gives a minimal puzzle: no remaining given can go."""
    solution = grids[index]  # [16]
    given = torch.ones(16, dtype=torch.bool)
    order = torch.randperm(16, generator=torch.Generator().manual_seed(index))
    for cell in order.tolist():
        given[cell] = False
        matches = ((grids == solution) | ~given).all(-1).sum()  # grids agreeing with the givens
        if matches > 1:
            given[cell] = True
    return given


def sudoku_valid(prompt: list, answer: list) -> bool:
    """A valid 4x4 sudoku (rows, columns, 2x2 boxes) that agrees with every given cell."""
    symbols = ["1", "2", "3", "4"]
    if not _is_latin(answer, symbols):
        return False
    boxes = [[answer[4 * (2 * br + r) + 2 * bc + c] for r in (0, 1) for c in (0, 1)] for br in (0, 1) for bc in (0, 1)]
    givens = prompt[1:-1]
    agrees = len(givens) == 16 and all(g == SUDOKU_BLANK or g == a for g, a in zip(givens, answer))
    return agrees and all(sorted(box) == symbols for box in boxes)


def build_sudoku_4(vocab: Mapping[str, int]) -> SetTables:
    """One minimal unique-solution puzzle per 4x4 solution grid; puzzles uniform."""
    grids = sudoku_grids()  # [288, 16]
    givens = torch.stack([minimal_puzzle(grids, i) for i in range(len(grids))])  # [288, 16]
    symbols = _lookup(vocab, ["1", "2", "3", "4"])
    answers = symbols[grids]  # [288, 16]
    cells = torch.where(givens, answers, vocab[SUDOKU_BLANK])  # [288, 16]
    tags = torch.full((len(grids), 1), vocab[tag("sudoku_4")], dtype=torch.long)
    seps = torch.full((len(grids), 1), vocab[SEP], dtype=torch.long)
    return SetTables(
        prompts=torch.cat([tags, cells, seps], dim=1),  # [288, 18]
        prompt_probs=_uniform(len(grids)),
        answers=answers,
        answer_probs=torch.ones(len(grids), dtype=torch.float64),
        counts=torch.ones(len(grids), dtype=torch.long),
        validator=sudoku_valid,
    )


# name (fixed) or family -> generator; families take n
FIXED_BUILDERS: dict[str, Callable[[Mapping[str, int]], SetTables]] = {
    "likes_tennis": build_likes_tennis,
    "cities": build_cities,
    "agreement": build_agreement,
    "sudoku_4": build_sudoku_4,
}
FAMILY_BUILDERS: dict[str, Callable[[Mapping[str, int], int], SetTables]] = {
    "shuffle": build_shuffle,
    "latin_square": build_latin_square,
    "copy": build_copy,
    "reverse": build_reverse,
}

