"""Several toy sets on one vocabulary: what every command that names more than one set uses.

    sets = load_toysets(["mysets:dates", "mysets:colours", "likes_tennis"])   # one tokenizer for all
    sets = combine_toysets(sets, tokenizer=model.tokenizer)                   # the ids a model was trained on

The rule (README "Your own sets"): sets whose vocabularies already agree (the built-in sets, a set
built on another's tokenizer) keep their ids and share the largest tokenizer. Otherwise the sets
are re-encoded on one word-level vocabulary: the built-in one (`toy_tokenizer()`), then every other
word of the sets' tokenizers, sorted. That vocabulary depends on which sets are named, not on their
order, so training (the embedded base, the data) and evaluation (`jointobj eval`, the recipe's
report) that name the same sets get the same ids. Given a model's word-level tokenizer, the sets
are re-encoded on it instead (a word it lacks is a UserError: the model never saw that set).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from jointobj.toysets.builtin import ToySet, load_toyset, shared_tokenizer, toy_tokenizer
from jointobj.toysets.user_sets import extended_tokenizer, is_word_level
from jointobj.utils.errors import UserError

__all__ = ["combine_toysets", "combined_tokenizer", "load_toysets"]


def load_toysets(names: Sequence[str | ToySet], tokenizer: Any = None) -> list[ToySet]:
    """The named sets (names or import references, see load_toyset) on one vocabulary (see above)."""
    return combine_toysets([load_toyset(name) if isinstance(name, str) else name for name in names], tokenizer)


def combined_tokenizer(toysets: Sequence[ToySet]):
    """The one tokenizer `toysets` share after combine_toysets (the largest one when they agree)."""
    try:
        return shared_tokenizer(toysets)
    except ValueError:
        pass
    plain = [t.name for t in toysets if not is_word_level(t.tokenizer)]
    if plain:
        raise UserError(f"toy sets {', '.join(repr(t.name) for t in toysets)} have different vocabularies and "
                        f"{', '.join(map(repr, plain))} use a tokenizer that is not word-level, so they cannot be "
                        "combined; build every set with make_toyset's default (word-level) tokenizer")
    base = toy_tokenizer()
    known = set(base.get_vocab())
    words = sorted({word for t in toysets for word in t.tokenizer.get_vocab()} - known)
    return extended_tokenizer(words, base)


def combine_toysets(toysets: Sequence[ToySet], tokenizer: Any = None) -> list[ToySet]:
    """`toysets` on one vocabulary: `tokenizer` when it is word-level (a model's), else the combined one."""
    if not toysets:
        return []
    if tokenizer is None or not is_word_level(tokenizer):
        tokenizer = combined_tokenizer(toysets)
    return [reencoded(toyset, tokenizer) for toyset in toysets]


def reencoded(toyset: ToySet, tokenizer: Any) -> ToySet:
    """`toyset` with its ids in `tokenizer`'s vocabulary (itself when they agree already). The validator
    reads token strings, so it carries over unchanged."""
    if toyset.tokenizer is tokenizer:
        return toyset
    old = toyset.tokenizer.get_vocab()
    vocab = tokenizer.get_vocab()
    used = torch.cat([toyset.prompts.reshape(-1), toyset.flat_answers.reshape(-1)]).unique().tolist()
    names = toyset.tokenizer.convert_ids_to_tokens(used)
    if all(vocab.get(word) == i for word, i in zip(names, used)) and vocab.get("[MASK]") == old.get("[MASK]"):
        return toyset if len(vocab) == len(old) else _rebuilt(toyset, tokenizer, lambda ids: ids)
    missing = sorted({word for word in names if word not in vocab})
    if missing:
        shown = ", ".join(map(repr, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise UserError(f"toy set {toyset.name!r} uses {len(missing)} word(s) the model's vocabulary lacks ({shown}): "
                        "the model was not trained on this set; evaluate it on the sets it was trained on")
    table = torch.full((max(used) + 1,), -1, dtype=torch.long)
    table[torch.tensor(used)] = torch.tensor([vocab[word] for word in names])
    return _rebuilt(toyset, tokenizer, lambda ids: table[ids])


def _rebuilt(toyset: ToySet, tokenizer: Any, mapped) -> ToySet:
    combined = ToySet.from_flat(toyset.name, tokenizer, mapped(toyset.prompts), toyset.prompt_probs,
                                mapped(toyset.flat_answers), toyset.flat_probs, toyset.offsets.diff(),
                                toyset.validator)
    return combined
