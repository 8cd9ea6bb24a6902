"""Marginal-trap toy sets: finite (prompt, answer) distributions with exact probabilities.

    from jointobj.toysets.builtin import load_toyset, toy_tokenizer
    likes = load_toyset("likes_tennis")           # "he likes apple" / "i play tennis"
    prompts, answers = likes.sample(8, torch.Generator().manual_seed(0))
    likes.is_valid(prompts, answers)              # [8] bool
    train = load_toyset("shuffle_3").dataset(10_000, seed=0)   # columns input_ids, prompt_mask

Every sequence is `prompt tokens` then `answer tokens`, with the same lengths across a set.
The first prompt token is the set's tag (`<likes_tennis>`), so one model (and one oracle,
see `oracle.py`) can serve several sets; unconditional sets have only the tag as prompt,
conditional ones end their prompt with `[SEP]`. All built-in sets share `toy_tokenizer()`.
Users build their own sets with `jointobj.toysets.user_sets.make_toyset` and pass them to any command
by import reference (`--toyset mysets:dates`); `register_toyset` registers a Dataset's set by name.
"""

from __future__ import annotations

import difflib
import functools
import math
import re
from typing import Any, Callable, Sequence

import datasets
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import PreTrainedTokenizerFast

from jointobj.toysets import builders
from jointobj.utils.errors import UserError
from jointobj.utils.registry import Registry

__all__ = [
    "SPECIAL_TOKENS",
    "TOYSETS",
    "ToySet",
    "load_toyset",
    "register_toyset",
    "resolve_toyset_reference",
    "shared_tokenizer",
    "toy_tokenizer",
    "toyset_from_dataset",
]

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[MASK]", "[SEP]")  # ids 0, 1, 2, 3
Validator = Callable[[list, list], bool]


@functools.lru_cache(maxsize=None)
def toy_tokenizer() -> PreTrainedTokenizerFast:
    """The shared word-level tokenizer of all built-in sets (one cached instance: don't mutate it).

    Vocabulary, fixed and deterministic: `[PAD]`=0, `[UNK]`=1, `[MASK]`=2, `[SEP]`=3, then the
    tags of every built-in set (sorted), then every word of every built-in set (sorted).
    Text is split on whitespace. Encoding adds no special tokens (there is no post-processor),
    so `tok("he likes apple")["input_ids"]` is exactly the three word ids.
    """
    words = list(SPECIAL_TOKENS) + [builders.tag(n) for n in builders.builtin_set_names()] + builders.builtin_words()
    model = WordLevel({word: i for i, word in enumerate(words)}, unk_token="[UNK]")
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]", sep_token="[SEP]"
    )


class _Ragged(Sequence):
    """Read-only view `view[p]` = rows `offsets[p]:offsets[p+1]` of a flat tensor."""

    def __init__(self, flat: torch.Tensor, offsets: torch.Tensor):
        self._flat, self._offsets = flat, offsets.tolist()

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, p):
        if isinstance(p, slice):
            return [self[i] for i in range(*p.indices(len(self)))]
        if not -len(self) <= p < len(self):
            raise IndexError(f"prompt index {p} out of range for {len(self)} prompts")
        p %= len(self)
        return self._flat[self._offsets[p] : self._offsets[p + 1]]


class ToySet:
    """A finite distribution over (prompt, answer) token sequences, with a validator.

    prompts        [P, lp] long      distinct prompts
    prompt_probs   [P] float64       p(prompt)
    answers[p]     [S_p, la] long    the support of p(answer | prompt p)
    answer_probs[p][S_p] float64     its probabilities (sum 1)
    validator(prompt_tokens, answer_tokens) -> bool, on token strings

    Internally the answers are stored flat (`flat_answers [T, la]`, `flat_probs [T]`,
    `offsets [P + 1]`), which the oracle reads directly.
    """

    def __init__(self, name: str, tokenizer, prompts: torch.Tensor, prompt_probs: torch.Tensor,
                 answers: Sequence[torch.Tensor], answer_probs: Sequence[torch.Tensor], validator: Validator):
        if len(answers) != len(prompts) or len(answer_probs) != len(prompts):
            raise ValueError(f"toy set {name!r}: {len(prompts)} prompts but {len(answers)} answer tensors "
                             f"and {len(answer_probs)} probability tensors; give one of each per prompt")
        counts = torch.tensor([len(a) for a in answers], dtype=torch.long)
        self._setup(name, tokenizer, prompts, prompt_probs, torch.cat(list(answers)),
                    torch.cat(list(answer_probs)), counts, validator)

    @classmethod
    def from_flat(cls, name: str, tokenizer, prompts, prompt_probs, flat_answers, flat_probs, counts,
                  validator: Validator) -> "ToySet":
        """Build from the flat form: the answers of prompt p are the next `counts[p]` rows."""
        toyset = cls.__new__(cls)
        toyset._setup(name, tokenizer, prompts, prompt_probs, flat_answers, flat_probs, counts, validator)
        return toyset

    def _setup(self, name, tokenizer, prompts, prompt_probs, flat_answers, flat_probs, counts, validator):
        self.name, self.tokenizer, self.validator = name, tokenizer, validator
        self.prompts = torch.as_tensor(prompts, dtype=torch.long)  # [P, lp]
        self.prompt_probs = torch.as_tensor(prompt_probs, dtype=torch.float64)  # [P]
        self.flat_answers = torch.as_tensor(flat_answers, dtype=torch.long)  # [T, la]
        self.flat_probs = torch.as_tensor(flat_probs, dtype=torch.float64)  # [T]
        counts = torch.as_tensor(counts, dtype=torch.long)  # [P]
        if self.prompts.dim() != 2 or self.flat_answers.dim() != 2:
            raise ValueError(f"toy set {name!r}: prompts must be [P, prompt_len] and answers [S, answer_len]")
        if self.flat_answers.shape[1] == 0:
            raise ValueError(f"toy set {name!r}: answers are empty; every example needs at least one answer token")
        if len(self.prompt_probs) != len(self.prompts) or len(counts) != len(self.prompts):
            raise ValueError(f"toy set {name!r}: prompt_probs and counts need one entry per prompt")
        if (counts < 1).any():
            raise ValueError(f"toy set {name!r}: prompt {int((counts < 1).nonzero()[0])} has no answer")
        if len(self.flat_probs) != len(self.flat_answers) or int(counts.sum()) != len(self.flat_answers):
            raise ValueError(f"toy set {name!r}: answer rows, answer probabilities and counts disagree in size")
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])  # [P + 1]
        self.answers = _Ragged(self.flat_answers, self.offsets)
        self.answer_probs = _Ragged(self.flat_probs, self.offsets)

    def __repr__(self) -> str:
        return (f"ToySet({self.name!r}, prompts={len(self.prompts)}, support={len(self.flat_answers)}, "
                f"prompt_length={self.prompt_length}, answer_length={self.answer_length})")

    # ------------------------------------------------------------------ shape facts

    @property
    def prompt_length(self) -> int:
        return self.prompts.shape[1]

    @property
    def answer_length(self) -> int:
        return self.flat_answers.shape[1]

    @property
    def length(self) -> int:
        return self.prompt_length + self.answer_length

    @property
    def unconditional(self) -> bool:
        return len(self.prompts) == 1

    @property
    def tag_id(self) -> int | None:
        """Id of the first prompt token when all prompts share it (the set's tag), else None."""
        if self.prompt_length == 0 or not (self.prompts[:, 0] == self.prompts[0, 0]).all():
            return None
        return int(self.prompts[0, 0])

    # ------------------------------------------------------------------ lookups

    @functools.cached_property
    def _owner(self) -> torch.Tensor:
        """[T] long: the prompt index of every flat answer row."""
        return torch.repeat_interleave(torch.arange(len(self.prompts)), self.offsets.diff())

    @functools.cached_property
    def _prompt_index(self) -> dict[tuple, int]:
        return {tuple(p): i for i, p in enumerate(self.prompts.tolist())}

    @functools.cached_property
    def _answer_index(self) -> dict[tuple, int]:
        rows = zip(self._owner.tolist(), self.flat_answers.tolist())
        return {(p, tuple(a)): i for i, (p, a) in enumerate(rows)}

    def prompt_index(self, prompt_ids: torch.Tensor, row_names: Sequence[int] | None = None) -> torch.Tensor:
        """[n, lp] prompt ids -> [n] long index into `prompts`; a prompt not in the set is a ValueError."""
        prompt_ids = torch.as_tensor(prompt_ids, dtype=torch.long).cpu()
        if prompt_ids.dim() != 2 or prompt_ids.shape[1] != self.prompt_length:
            raise ValueError(f"toy set {self.name!r} expects prompts of shape [n, {self.prompt_length}], "
                             f"got {tuple(prompt_ids.shape)}")
        if self.prompt_length == 0:  # a user set without a prompt: one empty prompt
            return torch.zeros(len(prompt_ids), dtype=torch.long)
        unique, inverse = prompt_ids.unique(dim=0, return_inverse=True)  # [u, lp], [n]
        found = [self._prompt_index.get(tuple(p), -1) for p in unique.tolist()]
        index = torch.tensor(found, dtype=torch.long)[inverse]  # [n]
        if (index < 0).any():
            row = int((index < 0).nonzero()[0])
            name = row if row_names is None else row_names[row]
            raise ValueError(f"row {name}: prompt {self.describe(prompt_ids[row])!r} is not a prompt of toy set "
                             f"{self.name!r}; draw prompts with .sample() or from .prompts")
        return index

    def describe(self, ids: torch.Tensor) -> str:
        """Ids -> space-joined tokens, for messages."""
        tokens = self.tokenizer.convert_ids_to_tokens(torch.as_tensor(ids).tolist())
        return " ".join(f"<id {i}>" if t is None else t for i, t in zip(torch.as_tensor(ids).tolist(), tokens))

    # ------------------------------------------------------------------ distribution

    def conditional(self, prompt_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[lp] prompt -> (answers [S, la], probs [S]): the exact p(answer | prompt)."""
        p = int(self.prompt_index(torch.as_tensor(prompt_ids)[None])[0])
        return self.answers[p], self.answer_probs[p]

    def answer_distribution(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(answers [S, la], probs [S]) of an unconditional set (for TV distance)."""
        if not self.unconditional:
            raise ValueError(f"toy set {self.name!r} has {len(self.prompts)} prompts; use .conditional(prompt) "
                             "for one of them, answer_distribution() is for unconditional sets")
        return self.answers[0], self.answer_probs[0]

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact draws from the joint: (prompt_ids [n, lp], answer_ids [n, la])."""
        prompt_cdf = self.prompt_probs.cumsum(0)  # [P]
        u = torch.rand(n, generator=generator, dtype=torch.float64)  # [n]
        p = torch.searchsorted(prompt_cdf / prompt_cdf[-1], u, right=True).clamp(max=len(self.prompts) - 1)  # [n]
        # Within-prompt cdf shifted by the prompt index: prompt p's keys lie in (p, p + 1].
        cum = torch.cat([torch.zeros(1, dtype=torch.float64), self.flat_probs.cumsum(0)])  # [T + 1]
        start = cum[self.offsets[:-1]]  # [P]
        total = cum[self.offsets[1:]] - start  # [P]
        keys = self._owner + (cum[1:] - start[self._owner]) / total[self._owner]  # [T]
        v = torch.rand(n, generator=generator, dtype=torch.float64)  # [n]
        a = torch.searchsorted(keys, p + v, right=True)  # [n]
        a = torch.minimum(torch.maximum(a, self.offsets[p]), self.offsets[p + 1] - 1)  # stay inside prompt p
        return self.prompts[p], self.flat_answers[a]

    def dataset(self, num_samples: int, seed: int = 0) -> datasets.Dataset:
        """`num_samples` exact draws as a Dataset with `input_ids` (prompt + answer) and `prompt_mask`."""
        if num_samples < 1:
            raise ValueError(f"num_samples must be a positive number of rows, got {num_samples}; "
                             "pass e.g. dataset(10_000)")
        prompts, answers = self.sample(num_samples, torch.Generator().manual_seed(seed))
        ids = torch.cat([prompts, answers], dim=1).tolist()
        mask = [True] * self.prompt_length + [False] * self.answer_length
        return datasets.Dataset.from_dict({"input_ids": ids, "prompt_mask": [mask] * num_samples})

    def log_prob(self, prompt_ids: torch.Tensor, answer_ids: torch.Tensor) -> torch.Tensor:
        """[n, lp], [n, la] -> [n] float64 exact log p(answer | prompt); -inf outside the support."""
        p = self.prompt_index(prompt_ids).tolist()
        flat = [self._answer_index.get((pi, tuple(a)), -1) for pi, a in zip(p, torch.as_tensor(answer_ids).tolist())]
        flat = torch.tensor(flat, dtype=torch.long)  # [n]
        out = torch.full((len(flat),), -math.inf, dtype=torch.float64)
        out[flat >= 0] = self.flat_probs[flat[flat >= 0]].log()
        return out

    def entropy(self) -> float:
        """Exact H(answer | prompt) in nats, averaged over the prompt distribution."""
        q = self.flat_probs
        terms = torch.where(q > 0, -q * q.log(), torch.zeros_like(q))  # [T]
        per_prompt = torch.zeros(len(self.prompts), dtype=torch.float64).index_add_(0, self._owner, terms)  # [P]
        return float((self.prompt_probs * per_prompt).sum())

    # ------------------------------------------------------------------ validity

    def is_valid(self, prompt_ids: torch.Tensor, answer_ids: torch.Tensor) -> torch.Tensor:
        """[n, lp], [n, la] -> [n] bool by the validator; an answer holding [MASK] or [PAD] is invalid."""
        prompt_ids, answer_ids = torch.as_tensor(prompt_ids), torch.as_tensor(answer_ids)
        if len(prompt_ids) != len(answer_ids):
            raise ValueError(f"{len(prompt_ids)} prompts but {len(answer_ids)} answers; pass one prompt per answer")
        unfinished = {self.tokenizer.mask_token_id, self.tokenizer.pad_token_id} - {None}
        tokens = self.tokenizer.convert_ids_to_tokens
        size = len(self.tokenizer)
        out = []
        for prompt, answer in zip(prompt_ids.tolist(), answer_ids.tolist()):
            named = all(0 <= i < size for i in answer)  # a model's id this set's vocabulary cannot name: invalid
            done = named and not unfinished & set(answer)
            out.append(done and bool(self.validator(tokens(prompt), tokens(answer))))
        return torch.tensor(out, dtype=torch.bool)

    def check(self) -> "ToySet":
        """Probabilities sum to 1 and the validator accepts every supported example; else a ValueError."""
        if (self.prompt_probs <= 0).any() or (self.flat_probs <= 0).any():
            raise ValueError(f"toy set {self.name!r}: probabilities must be positive; drop zero-probability entries")
        if abs(float(self.prompt_probs.sum()) - 1) > 1e-9:
            raise ValueError(f"toy set {self.name!r}: prompt probabilities sum to {float(self.prompt_probs.sum())!r}, "
                             "not 1; normalise them")
        sums = torch.zeros(len(self.prompts), dtype=torch.float64).index_add_(0, self._owner, self.flat_probs)  # [P]
        bad = ((sums - 1).abs() > 1e-9).nonzero()
        if len(bad):
            p = int(bad[0])
            raise ValueError(f"toy set {self.name!r}: answer probabilities of prompt "
                             f"{self.describe(self.prompts[p])!r} sum to {float(sums[p])!r}, not 1; normalise them")
        owner = self._owner  # [T]
        valid = self.is_valid(self.prompts[owner], self.flat_answers)  # [T]
        if not valid.all():
            i = int((~valid).nonzero()[0])
            prompt, answer = self.prompts[owner[i]], self.flat_answers[i]
            unk = self.tokenizer.unk_token_id
            if unk is not None and bool((prompt == unk).any() or (answer == unk).any()):
                raise ValueError(
                    f"toy set {self.name!r}: example {i} holds the unknown token {self.tokenizer.unk_token!r} "
                    f"(prompt {self.describe(prompt)!r}, answer {self.describe(answer)!r}): the tokenizer does not "
                    "know its words. Build the set with jointobj.make_toyset (it extends the tokenizer to "
                    "the set's words), or pass a tokenizer that knows them."
                )
            raise ValueError(
                f"toy set {self.name!r}: the validator rejects the set's own example {i}: prompt "
                f"{self.describe(prompt)!r}, answer {self.describe(answer)!r}. "
                "Fix the validator, or remove the example from the data."
            )
        return self


# ---------------------------------------------------------------- registry

TOYSETS: Registry = Registry("toy set")
_FAMILY = re.compile(r"(?P<family>.+)_(?P<n>\d+)")


@functools.lru_cache(maxsize=None)
def _build_builtin(name: str) -> ToySet:
    """Build (once) a concrete built-in set such as `shuffle_3`."""
    tokenizer = toy_tokenizer()
    vocab = tokenizer.get_vocab()
    if name in builders.FIXED_BUILDERS:
        tables = builders.FIXED_BUILDERS[name](vocab)
    else:
        family, n = _FAMILY.fullmatch(name).group("family", "n")
        tables = builders.FAMILY_BUILDERS[family](vocab, int(n))
    return ToySet.from_flat(name, tokenizer, tables.prompts, tables.prompt_probs, tables.answers,
                            tables.answer_probs, tables.counts, tables.validator)


def _build_family(family: str, n: int) -> ToySet:
    allowed = builders.FAMILY_RANGES[family]
    if n not in allowed:
        raise ValueError(f"{family}_<n> takes n in {allowed.start}..{allowed.stop - 1}, got {n}; "
                         f"e.g. load_toyset('{family}_{allowed.start + 1}')")
    return _build_builtin(f"{family}_{n}")


for _name in builders.FIXED_BUILDERS:
    TOYSETS.register(_name)(functools.partial(_build_builtin, _name))
for _alias, _target in builders.ALIASES.items():
    TOYSETS.register(_alias)(functools.partial(_build_builtin, _target))
for _family in builders.FAMILY_BUILDERS:
    TOYSETS.register(f"{_family}_<n>")(functools.partial(_build_family, _family))


def load_toyset(name: str) -> ToySet:
    """A toy set by name: `likes_tennis`, `cities`, `agreement`, `sudoku_4`, `copy`, `reverse`,
    `shuffle_<n>` (2..8), `latin_square_<n>` (2..5), `copy_<n>` / `reverse_<n>` (2..6), a name
    given to `register_toyset`, or an import reference `package.module:attribute` (a ToySet, or
    a function of no arguments returning one; see `resolve_toyset_reference`). Built-in sets are
    built once and cached (shared instances)."""
    if ":" in name:
        return resolve_toyset_reference(name)
    if name in TOYSETS:
        return TOYSETS.get(name)()
    match = _FAMILY.fullmatch(name)
    if match and f"{match['family']}_<n>" in TOYSETS:
        return TOYSETS.get(f"{match['family']}_<n>")(int(match["n"]))
    return TOYSETS.get(name)()  # raises, listing the known names


def shared_tokenizer(toysets: Sequence[ToySet]):
    """The one tokenizer several sets can share: the largest of theirs, when every other set's
    vocabulary is contained in it with the same ids (as `make_toyset` extends the built-in one);
    else a ValueError naming two sets that disagree."""
    if not toysets:
        raise ValueError("shared_tokenizer needs at least one toy set")
    largest = max(toysets, key=lambda t: len(t.tokenizer))
    vocab = largest.tokenizer.get_vocab()
    for toyset in toysets:
        if toyset.tokenizer is largest.tokenizer:
            continue
        clash = [w for w, i in toyset.tokenizer.get_vocab().items() if vocab.get(w) != i]
        if clash:
            raise ValueError(
                f"toy sets {toyset.name!r} and {largest.name!r} give different ids to {clash[:5]}; one model (or "
                f"oracle) needs one vocabulary: build the later set on the earlier one's tokenizer, e.g. "
                f"make_toyset({largest.name!r}, ..., tokenizer={toyset.name}.tokenizer)"
            )
    return largest.tokenizer


# ---------------------------------------------------------------- user sets


@functools.lru_cache(maxsize=None)
def resolve_toyset_reference(reference: str) -> ToySet:
    """`package.module:attribute` -> the ToySet it names (the Python entry-point convention).

    The module is imported (nothing is exec'd from a file path); when it is not found on
    sys.path, the current directory is tried too, so `mysets:dates` finds ./mysets.py from a
    console command. The attribute (dotted names allowed) is a ToySet, or a function of no
    arguments returning one. Resolved once per process (the same instance every time)."""
    import importlib
    import importlib.util
    import os
    import sys

    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute or ":" in attribute:
        raise UserError(f"toy set reference {reference!r} is not 'package.module:attribute' (e.g. mysets:dates)")
    try:
        module = _import_sets(reference, module_name)
    except ModuleNotFoundError as error:
        if error.name is None or not f"{module_name}.".startswith(f"{error.name}."):  # the module's own import failed
            raise UserError(f"toy set reference {reference!r}: importing module {module_name!r} failed: "
                            f"{error}") from error
        if os.getcwd() in sys.path:
            module = None
        else:
            sys.path.append(os.getcwd())
            module = importlib.util.find_spec(module_name.split(".")[0]) and _import_sets(reference, module_name)
        if module is None:
            raise UserError(
                f"toy set reference {reference!r}: no module {module_name!r} ({error}); make it importable: run from "
                "the directory holding it, add that directory to PYTHONPATH, or install its package"
            ) from error
    value: Any = module
    for part in attribute.split("."):
        if not hasattr(value, part):
            sets = public_toysets(module)
            close = difflib.get_close_matches(attribute, sets, n=3, cutoff=0.6)
            hint = f"did you mean {' or '.join(f'{module_name}:{name}' for name in close)}? " if close else ""
            raise UserError(f"toy set reference {reference!r}: module {module_name!r} "
                            f"({getattr(module, '__file__', '?')}) has no attribute {attribute!r}; {hint}its toy "
                            f"sets: {', '.join(sets) or 'none'}")
        value = getattr(value, part)
    if callable(value) and not isinstance(value, ToySet):
        value = value()
    if not isinstance(value, ToySet):
        raise UserError(f"toy set reference {reference!r}: {module_name}.{attribute} is a {type(value).__name__}, "
                         "not a ToySet (or a function returning one); build it with jointobj.make_toyset")
    return value


def _import_sets(reference: str, module_name: str):
    """Import the user's module; a ValueError while it builds its sets (make_toyset's checks) is theirs to fix."""
    import importlib

    try:
        return importlib.import_module(module_name)
    except UserError:
        raise
    except ValueError as error:
        raise UserError(f"toy set reference {reference!r}: building the sets of module {module_name!r} failed: "
                        f"{error}") from error


def public_toysets(module: Any) -> list[str]:
    """The toy sets a module offers by name: its ToySet attributes, private ones (leading _) left out."""
    return sorted(k for k, v in vars(module).items() if isinstance(v, ToySet) and not k.startswith("_"))


def toyset_from_dataset(name: str, dataset: datasets.Dataset, validator: Validator, tokenizer=None) -> ToySet:
    """A user's set: the empirical distribution of the distinct (prompt, answer) rows of `dataset`.

    Rows need `input_ids` (prompt then answer) and `prompt_mask` (True on the prompt prefix);
    all rows share one prompt length and one answer length. By the library's convention the
    first prompt token should be a tag naming the set, so an oracle can serve several sets.
    `validator(prompt_tokens, answer_tokens)` is run on every distinct row (`check()`).
    """
    tokenizer = tokenizer if tokenizer is not None else toy_tokenizer()
    expected = ("rows with 'input_ids' (token ids, prompt then answer) and 'prompt_mask' "
                "(bools, True on the prompt tokens)")
    columns = list(getattr(dataset, "column_names", None) or [])
    if not {"input_ids", "prompt_mask"} <= set(columns):
        raise ValueError(f"toy set {name!r}: the dataset has columns {columns}; it needs {expected}")
    if len(dataset) == 0:
        raise ValueError(f"toy set {name!r}: the dataset is empty; it needs {expected}")
    if not callable(validator):
        raise ValueError(f"toy set {name!r}: validator must be a function (prompt_tokens, answer_tokens) -> bool")
    counts: dict[tuple, dict[tuple, int]] = {}
    lengths = None
    for row, (ids, mask) in enumerate(zip(dataset["input_ids"], dataset["prompt_mask"])):
        ids, mask = list(ids), [bool(m) for m in mask]
        prompt_length = sum(mask)
        if len(mask) != len(ids) or mask != [True] * prompt_length + [False] * (len(ids) - prompt_length):
            raise ValueError(f"toy set {name!r}, row {row}: prompt_mask must have one entry per token, True on a "
                             f"prefix (the prompt) and False on the answer; got {mask}")
        if lengths is None:
            lengths = (prompt_length, len(ids) - prompt_length)
        if (prompt_length, len(ids) - prompt_length) != lengths:
            raise ValueError(f"toy set {name!r}, row {row}: prompt/answer lengths {prompt_length}/"
                             f"{len(ids) - prompt_length} differ from row 0's {lengths[0]}/{lengths[1]}; all rows "
                             "of a toy set share both lengths (pad them with a token of your own)")
        if any(not 0 <= i < len(tokenizer) for i in ids):
            raise ValueError(f"toy set {name!r}, row {row}: ids {ids} fall outside the tokenizer's "
                             f"{len(tokenizer)} tokens; pass the tokenizer that made them")
        answers = counts.setdefault(tuple(ids[:prompt_length]), {})
        answers[tuple(ids[prompt_length:])] = answers.get(tuple(ids[prompt_length:]), 0) + 1
    prompts = sorted(counts)
    totals = torch.tensor([sum(counts[p].values()) for p in prompts], dtype=torch.float64)  # [P]
    flat, probs = [], []
    for p, total in zip(prompts, totals.tolist()):
        for answer in sorted(counts[p]):
            flat.append(answer)
            probs.append(counts[p][answer] / total)
    toyset = ToySet.from_flat(
        name, tokenizer, torch.tensor(prompts, dtype=torch.long).reshape(len(prompts), lengths[0]),
        totals / totals.sum(), torch.tensor(flat, dtype=torch.long), torch.tensor(probs, dtype=torch.float64),
        torch.tensor([len(counts[p]) for p in prompts]), validator)
    return toyset.check()


def register_toyset(name: str, dataset: datasets.Dataset, validator: Validator, tokenizer=None) -> ToySet:
    """Build a user set (`toyset_from_dataset`) and register it so `load_toyset(name)` finds it."""
    if name in TOYSETS:
        raise ValueError(f"toy set {name!r} is already registered; pick another name")
    toyset = toyset_from_dataset(name, dataset, validator, tokenizer)
    TOYSETS.register(name)(lambda: toyset)
    return toyset
