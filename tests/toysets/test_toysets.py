"""Toy sets: exact supports, entropies, sampling, datasets, user sets and their errors.

    /work/venv/bin/python -m pytest tests/test_toysets.py -q
"""

from __future__ import annotations

import collections
import itertools
import math
import uuid

import datasets
import pytest
import torch
from transformers import AutoTokenizer

from jointobj.toysets.builtin import TOYSETS, ToySet, load_toyset, register_toyset, toy_tokenizer, toyset_from_dataset

# name -> (number of prompts, support size per prompt, entropy in nats), from closed forms
KNOWN = {
    "likes_tennis": (1, 2, math.log(2)),
    "cities": (1, 4, math.log(4)),
    **{f"shuffle_{n}": (math.comb(8, n), math.factorial(n), math.log(math.factorial(n))) for n in range(2, 7)},
    "latin_square_3": (1, 12, math.log(12)),
    "latin_square_4": (1, 576, math.log(576)),
    "sudoku_4": (288, 1, 0.0),
    "agreement": (1, 2 * 2 * (2 * 3 * 3 * 2 * 3), math.log(432)),  # numbers x (det noun verb det noun)
    "copy": (8**4, 1, 0.0),
    "reverse": (8**4, 1, 0.0),
}


def ids(*tokens: str) -> list[int]:
    return toy_tokenizer().convert_tokens_to_ids(list(tokens))


def user_dataset(rows: list[tuple[list[str], list[str]]]) -> datasets.Dataset:
    return datasets.Dataset.from_dict({
        "input_ids": [ids(*p, *a) for p, a in rows],
        "prompt_mask": [[True] * len(p) + [False] * len(a) for p, a in rows],
    })


# ---------------------------------------------------------------- built-in sets


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_builtin_set_checks_and_matches_known_counts(name):
    toyset = load_toyset(name).check()
    prompts, per_prompt, entropy = KNOWN[name]
    assert len(toyset.prompts) == prompts
    assert [len(a) for a in toyset.answers] == [per_prompt] * prompts
    assert toyset.entropy() == pytest.approx(entropy, abs=1e-9)
    assert len(toyset.prompts.unique(dim=0)) == prompts  # prompts are distinct
    for answers in toyset.answers[:5]:
        assert len(answers.unique(dim=0)) == len(answers)  # so is each support


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_layout_tag_first_and_sep_last(name):
    toyset = load_toyset(name)
    tag = toyset.tokenizer.convert_ids_to_tokens(toyset.prompts[:, 0].tolist())
    assert set(tag) == {f"<{toyset.name}>"}
    if toyset.unconditional:
        assert toyset.prompt_length == 1
    else:
        assert (toyset.prompts[:, -1] == toyset.tokenizer.sep_token_id).all()
    assert toyset.length == toyset.prompt_length + toyset.answer_length


def test_shuffle_prompts_are_ascending_subsets_and_answers_their_permutations():
    toyset = load_toyset("shuffle_3")
    tokens = toyset.tokenizer.convert_ids_to_tokens
    subsets = {tuple(tokens(p[1:-1].tolist())) for p in toyset.prompts}
    assert subsets == set(itertools.combinations("ABCDEFGH", 3))
    items = tokens(toyset.prompts[0, 1:-1].tolist())
    assert {tuple(tokens(a.tolist())) for a in toyset.answers[0]} == set(itertools.permutations(items))


def test_sudoku_puzzles_have_a_unique_solution_and_are_minimal():
    toyset = load_toyset("sudoku_4")
    grids = torch.cat(list(toyset.answers))  # [288, 16]: one solution per puzzle
    assert len(grids.unique(dim=0)) == 288
    cells = toyset.prompts[:, 1:-1]  # [288, 16]
    blank = toyset.tokenizer.convert_tokens_to_ids("_")
    for puzzle, solution in zip(cells, grids):
        given = puzzle != blank
        agree = ((grids == puzzle) | ~given).all(1)  # [288] solution grids agreeing with the givens
        assert agree.sum() == 1 and (grids[agree] == solution).all()
        for cell in given.nonzero().flatten():  # dropping any given breaks uniqueness
            fewer = given.clone()
            fewer[cell] = False
            assert ((grids == puzzle) | ~fewer).all(1).sum() > 1


def test_agreement_validator_rejects_each_kind_of_disagreement():
    validator = load_toyset("agreement").validator
    assert validator(["<agreement>"], "these dogs chase a cat".split()) is False  # "a" is no determiner here
    assert validator(["<agreement>"], "these dogs chase this cat".split())
    assert not validator(["<agreement>"], "this dogs chase this cat".split())  # det-noun, subject
    assert not validator(["<agreement>"], "these dogs chases this cat".split())  # subject-verb
    assert not validator(["<agreement>"], "these dogs chase those cat".split())  # det-noun, object


def test_copy_and_reverse_answers():
    copy, reverse = load_toyset("copy"), load_toyset("reverse_3")
    assert copy.name == "copy_4" and reverse.answer_length == 3
    assert torch.equal(copy.flat_answers, copy.prompts[:, 1:-1])
    assert torch.equal(reverse.flat_answers, reverse.prompts[:, 1:-1].flip(1))


def test_builtin_sets_are_cached():
    assert load_toyset("latin_square_4") is load_toyset("latin_square_4")
    assert load_toyset("copy") is load_toyset("copy_4")


# ---------------------------------------------------------------- tokenizer


def test_tokenizer_special_ids_and_no_added_specials():
    tok = toy_tokenizer()
    assert (tok.pad_token_id, tok.unk_token_id, tok.mask_token_id, tok.sep_token_id) == (0, 1, 2, 3)
    assert tok.convert_ids_to_tokens([0, 1, 2, 3]) == ["[PAD]", "[UNK]", "[MASK]", "[SEP]"]
    assert tok("he likes apple")["input_ids"] == ids("he", "likes", "apple")
    vocab = tok.get_vocab()
    tags = sorted((i, w) for w, i in vocab.items() if w.startswith("<"))
    assert [i for i, _ in tags] == list(range(4, 4 + len(tags)))  # tags follow the specials
    assert [w for _, w in tags] == sorted(w for _, w in tags)


def test_tokenizer_round_trips_through_save_pretrained(tmp_path):
    tok = toy_tokenizer()
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.get_vocab() == tok.get_vocab()
    assert (loaded.pad_token_id, loaded.mask_token_id, loaded.sep_token_id) == (0, 2, 3)
    text = "<sudoku_4> 1 _ 3 4 [SEP] new york [MASK]"
    assert loaded(text)["input_ids"] == tok(text)["input_ids"]


# ---------------------------------------------------------------- distribution API


@pytest.mark.parametrize("name", ["likes_tennis", "cities", "shuffle_3"])
def test_sample_frequencies_match_probabilities(name):
    toyset = load_toyset(name)
    n = 60_000
    prompts, answers = toyset.sample(n, torch.Generator().manual_seed(0))
    counts = collections.Counter(map(tuple, torch.cat([prompts, answers], dim=1).tolist()))
    cells = 0
    for p, prompt in enumerate(toyset.prompts.tolist()):
        for answer, q in zip(toyset.answers[p].tolist(), toyset.answer_probs[p].tolist()):
            prob = float(toyset.prompt_probs[p]) * q  # joint probability of the cell
            sd = math.sqrt(n * prob * (1 - prob))  # binomial standard deviation of its count
            assert abs(counts[tuple(prompt + answer)] - n * prob) <= 4.5 * sd, (prompt, answer)
            cells += 1
    assert sum(counts.values()) == n and len(counts) == cells  # nothing drawn outside the support


def test_sample_follows_non_uniform_probabilities():
    rows = ([(["<cities>"], ["new", "york"])] * 7 + [(["<cities>"], ["mexico", "city"])] * 2
            + [(["<cities>"], ["panama", "city"])])
    toyset = toyset_from_dataset("weighted", user_dataset(rows), load_toyset("cities").validator)
    n = 50_000
    _, answers = toyset.sample(n, torch.Generator().manual_seed(1))
    for answer, prob in zip(*toyset.answer_distribution()):
        count = int((answers == answer).all(1).sum())
        assert abs(count - n * float(prob)) <= 4.5 * math.sqrt(n * float(prob) * (1 - float(prob)))


def test_dataset_columns_and_prompt_mask():
    toyset = load_toyset("shuffle_3")
    data = toyset.dataset(50, seed=3)
    assert data.column_names == ["input_ids", "prompt_mask"] and len(data) == 50
    assert all(len(row) == toyset.length for row in data["input_ids"])
    assert data["prompt_mask"][0] == [True] * 5 + [False] * 3
    rows = torch.tensor(data["input_ids"])  # [50, 8]
    assert toyset.is_valid(rows[:, :5], rows[:, 5:]).all()
    assert data["input_ids"] == toyset.dataset(50, seed=3)["input_ids"]  # seeded
    with pytest.raises(ValueError, match="positive number of rows"):
        toyset.dataset(0)


def test_is_valid_rejects_mixed_answers_and_masks():
    toyset = load_toyset("likes_tennis")
    prompt = torch.tensor([ids("<likes_tennis>")] * 4)
    answers = torch.tensor([ids("he", "likes", "apple"), ids("i", "likes", "tennis"),
                            ids("i", "play", "[MASK]"), ids("i", "play", "[PAD]")])
    assert toyset.is_valid(prompt, answers).tolist() == [True, False, False, False]


def test_log_prob_and_conditional():
    toyset = load_toyset("shuffle_2")
    prompt = torch.tensor(ids("<shuffle_2>", "B", "E", "[SEP]"))
    answers, probs = toyset.conditional(prompt)
    assert sorted(map(tuple, answers.tolist())) == sorted([tuple(ids("B", "E")), tuple(ids("E", "B"))])
    assert probs.tolist() == [0.5, 0.5]
    lp = toyset.log_prob(prompt.expand(3, -1), torch.tensor([ids("E", "B"), ids("B", "E"), ids("B", "B")]))
    assert lp[:2].tolist() == [math.log(0.5)] * 2 and lp[2] == -math.inf
    with pytest.raises(ValueError, match="not a prompt of toy set 'shuffle_2'"):
        toyset.conditional(torch.tensor(ids("<shuffle_2>", "E", "B", "[SEP]")))


def test_answer_distribution_only_for_unconditional_sets():
    answers, probs = load_toyset("cities").answer_distribution()
    assert answers.shape == (4, 2) and probs.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="conditional"):
        load_toyset("shuffle_2").answer_distribution()


def test_hand_built_toyset_and_check_of_bad_probabilities():
    prompts = torch.tensor([ids("<copy_2>", "A", "B", "[SEP]"), ids("<copy_2>", "C", "C", "[SEP]")])
    answers = [torch.tensor([ids("A", "B")]), torch.tensor([ids("C", "C")])]
    good = ToySet("pairs", toy_tokenizer(), prompts, torch.tensor([0.5, 0.5]), answers,
                  [torch.ones(1), torch.ones(1)], lambda p, a: a == p[1:-1])
    assert good.check().entropy() == 0.0 and not good.unconditional
    bad = ToySet("pairs", toy_tokenizer(), prompts, torch.tensor([0.5, 0.6]), answers,
                 [torch.ones(1), torch.ones(1)], lambda p, a: a == p[1:-1])
    with pytest.raises(ValueError, match="sum to"):
        bad.check()


# ---------------------------------------------------------------- names and errors


def test_unknown_name_lists_known_names_with_patterns():
    with pytest.raises(ValueError) as error:
        load_toyset("tennis")
    for known in ("likes_tennis", "cities", "shuffle_<n>", "latin_square_<n>", "copy_<n>"):
        assert known in str(error.value)


@pytest.mark.parametrize("name", ["shuffle_9", "shuffle_1", "latin_square_6", "copy_7"])
def test_out_of_range_n_is_a_clear_error(name):
    with pytest.raises(ValueError, match=r"takes n in \d+\.\.\d+"):
        load_toyset(name)


def test_user_set_gets_the_empirical_distribution_and_is_registered():
    rows = [(["<likes_tennis>"], ["he", "likes", "apple"])] * 3 + [(["<likes_tennis>"], ["i", "play", "tennis"])]
    name = f"user_{uuid.uuid4().hex}"
    toyset = register_toyset(name, user_dataset(rows), load_toyset("likes_tennis").validator)
    answers, probs = toyset.answer_distribution()
    got = {tuple(toyset.tokenizer.convert_ids_to_tokens(a.tolist())): float(q) for a, q in zip(answers, probs)}
    assert got == {("he", "likes", "apple"): 0.75, ("i", "play", "tennis"): 0.25}
    assert load_toyset(name) is toyset and name in TOYSETS.names()
    with pytest.raises(ValueError, match="already registered"):
        register_toyset(name, user_dataset(rows), load_toyset("likes_tennis").validator)


def test_user_conditional_set_groups_answers_by_prompt():
    rows = [(["<copy_2>", "A", "B", "[SEP]"], ["A", "B"]), (["<copy_2>", "A", "B", "[SEP]"], ["B", "A"]),
            (["<copy_2>", "C", "D", "[SEP]"], ["C", "D"])]
    toyset = toyset_from_dataset("pairs", user_dataset(rows), lambda p, a: sorted(a) == sorted(p[1:-1]))
    assert toyset.prompt_probs.tolist() == pytest.approx([2 / 3, 1 / 3])
    assert [len(a) for a in toyset.answers] == [2, 1]
    assert toyset.entropy() == pytest.approx(2 / 3 * math.log(2))


def test_user_validator_that_rejects_its_own_data_shows_the_example():
    rows = [(["<likes_tennis>"], ["he", "likes", "apple"]), (["<likes_tennis>"], ["i", "likes", "tennis"])]
    with pytest.raises(ValueError, match="rejects.*'i likes tennis'"):
        toyset_from_dataset("mixed", user_dataset(rows), load_toyset("likes_tennis").validator)


def test_user_dataset_errors():
    validator = load_toyset("likes_tennis").validator
    with pytest.raises(ValueError, match="empty"):
        toyset_from_dataset("none", datasets.Dataset.from_dict({"input_ids": [], "prompt_mask": []}), validator)
    with pytest.raises(ValueError, match="needs rows with 'input_ids'.*'prompt_mask'"):
        bare = datasets.Dataset.from_dict({"input_ids": [ids("<cities>", "new", "york")]})
        toyset_from_dataset("bare", bare, validator)
    ragged = user_dataset([(["<cities>"], ["new", "york"]), (["<cities>"], ["new"])])
    with pytest.raises(ValueError, match="share both lengths"):
        toyset_from_dataset("ragged", ragged, validator)
    holes = datasets.Dataset.from_dict({"input_ids": [ids("<cities>", "new", "york")],
                                        "prompt_mask": [[True, False, True]]})
    with pytest.raises(ValueError, match="True on a prefix"):
        toyset_from_dataset("holes", holes, validator)
