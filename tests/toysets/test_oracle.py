"""OracleDenoiser against naive enumeration, the known marginal-trap validities, and its errors.

    /work/venv/bin/python -m pytest tests/test_oracle.py -q
"""

from __future__ import annotations

import itertools
import math

import datasets
import pytest
import torch

from jointobj.toysets.builtin import load_toyset, toy_tokenizer, toyset_from_dataset
from jointobj.toysets.oracle import IMPOSSIBLE_LOGIT, OracleDenoiser

TOK = toy_tokenizer()
MASK = TOK.mask_token_id


def ids(*tokens: str) -> list[int]:
    return TOK.convert_tokens_to_ids(list(tokens))


def naive_marginals(toyset, prompt: list[int], answer: list[int]) -> list[dict[int, float]]:
    """p(x_i | prompt, visible answer tokens) per answer position, by Python loops over the support,
    conditioning on the supported answers with the fewest mismatches against the visible tokens."""
    p = toyset.prompts.tolist().index(prompt)
    support = list(zip(toyset.answers[p].tolist(), toyset.answer_probs[p].tolist()))
    visible = [i for i, token in enumerate(answer) if token != MASK]
    mismatches = [sum(candidate[i] != answer[i] for i in visible) for candidate, _ in support]
    fewest = min(mismatches)
    kept = [(candidate, q) for (candidate, q), m in zip(support, mismatches) if m == fewest]
    total = sum(q for _, q in kept)
    marginals = []
    for i in range(len(answer)):
        position: dict[int, float] = {}
        for candidate, q in kept:
            position[candidate[i]] = position.get(candidate[i], 0.0) + q / total
        marginals.append(position)
    return marginals


def partial_rows(toyset, n: int, seed: int, corrupt: float = 0.0) -> torch.Tensor:
    """[n, l] rows drawn from the set with random answer positions masked (at least one), and a
    fraction `corrupt` of the visible answer tokens replaced by a random answer token."""
    generator = torch.Generator().manual_seed(seed)
    prompts, answers = toyset.sample(n, generator)  # [n, lp], [n, la]
    masked = torch.rand(answers.shape, generator=generator) < 0.5  # [n, la]
    masked[torch.arange(n), torch.randint(answers.shape[1], (n,), generator=generator)] = True
    pool = toyset.flat_answers.unique()  # answer tokens of the set
    noise = pool[torch.randint(len(pool), answers.shape, generator=generator)]  # [n, la]
    swap = torch.rand(answers.shape, generator=generator) < corrupt
    answers = torch.where(swap, noise, answers)
    return torch.cat([prompts, torch.where(masked, MASK, answers)], dim=1)  # [n, l]


# ---------------------------------------------------------------- exactness


@pytest.mark.parametrize("corrupt", [0.0, 0.3])
@pytest.mark.parametrize("name", ["likes_tennis", "cities", "shuffle_3", "latin_square_3", "shuffle_5", "agreement"])
def test_oracle_matches_naive_enumeration(name, corrupt):
    # shuffle_5 and agreement have supports above 32: they take the one-hot matmul path
    toyset = load_toyset(name)
    rows = partial_rows(toyset, 24, seed=len(name), corrupt=corrupt)  # [24, l]
    probs = OracleDenoiser(toyset)(rows).softmax(-1)  # [24, l, V]
    lp = toyset.prompt_length
    for row, p in zip(rows.tolist(), probs):
        expected = naive_marginals(toyset, row[:lp], row[lp:])
        for i, token in enumerate(row[lp:]):
            want = torch.zeros(len(TOK))
            if token == MASK:
                for v, q in expected[i].items():
                    want[v] = q
            else:
                want[token] = 1.0  # visible answer tokens are given, even when inconsistent
            assert torch.allclose(p[lp + i], want, atol=1e-6), (TOK.convert_ids_to_tokens(row), i)


@pytest.mark.parametrize("n_answers", [3, 40])
def test_oracle_weights_answers_by_their_probabilities(n_answers):
    """A non-uniform user set (agreement sentence k drawn k + 1 times); 40 answers take the matmul path."""
    agreement = load_toyset("agreement")
    sentences = agreement.flat_answers[:: len(agreement.flat_answers) // n_answers][:n_answers].tolist()
    rows = [s for k, s in enumerate(sentences) for _ in range(k + 1)]
    data = datasets.Dataset.from_dict({"input_ids": [agreement.prompts[0].tolist() + s for s in rows],
                                       "prompt_mask": [[True] + [False] * 5] * len(rows)})
    toyset = toyset_from_dataset("weighted_agreement", data, agreement.validator)
    batch = partial_rows(toyset, 16, seed=n_answers, corrupt=0.2)  # [16, 6]
    probs = OracleDenoiser(toyset)(batch).softmax(-1)  # [16, 6, V]
    for row, p in zip(batch.tolist(), probs):
        for i, expected in enumerate(naive_marginals(toyset, row[:1], row[1:])):
            if row[1 + i] == MASK:
                want = torch.zeros(len(TOK))
                want[list(expected)] = torch.tensor(list(expected.values()), dtype=torch.float32)
                assert torch.allclose(p[1 + i], want, atol=1e-6)


def test_visible_positions_are_one_hot_and_distributions_sum_to_one():
    toyset = load_toyset("latin_square_4")
    rows = partial_rows(toyset, 16, seed=0)
    logits = OracleDenoiser(toyset)(rows)  # [16, 17, V]
    assert logits.dtype == torch.float32 and logits.shape == (16, 17, len(TOK))
    probs = logits.softmax(-1)
    assert torch.allclose(probs.sum(-1), torch.ones(16, 17), atol=1e-6)
    visible = rows != MASK
    assert torch.equal(probs.argmax(-1)[visible], rows[visible])
    assert (probs.max(-1).values[visible] == 1.0).all()
    assert logits.min() == IMPOSSIBLE_LOGIT and torch.isfinite(logits).all()


def test_fully_masked_likes_tennis_is_half_half_per_position():
    oracle = OracleDenoiser(load_toyset("likes_tennis"))
    probs = oracle(torch.tensor([ids("<likes_tennis>", *["[MASK]"] * 3)])).softmax(-1)
    for position, words in enumerate([("he", "i"), ("likes", "play"), ("apple", "tennis")], start=1):
        assert probs[0, position, ids(*words)].tolist() == pytest.approx([0.5, 0.5])


def test_fully_masked_cities_first_word():
    probs = OracleDenoiser(load_toyset("cities"))(torch.tensor([ids("<cities>", "[MASK]", "[MASK]")])).softmax(-1)
    assert probs[0, 1, ids("new", "mexico", "panama")].tolist() == pytest.approx([0.5, 0.25, 0.25])
    assert probs[0, 2, ids("city", "york", "orleans")].tolist() == pytest.approx([0.5, 0.25, 0.25])


@pytest.mark.parametrize("name, validity", [("likes_tennis", 0.25), ("cities", 0.5), ("shuffle_3", 6 / 27)])
def test_independent_product_of_marginals_gives_the_marginal_trap_validity(name, validity):
    """One fully parallel step: each position drawn from its oracle marginal, independently."""
    toyset = load_toyset(name)
    prompt = toyset.prompts[0].tolist()
    row = torch.tensor([prompt + [MASK] * toyset.answer_length])
    probs = OracleDenoiser(toyset)(row).softmax(-1)[0, toyset.prompt_length :].double()  # [la, V]
    options = [[(v, float(probs[i, v])) for v in probs[i].nonzero().flatten().tolist()] for i in range(len(probs))]
    total = 0.0
    for choice in itertools.product(*options):  # the whole product distribution
        answer = torch.tensor([[v for v, _ in choice]])
        if toyset.is_valid(torch.tensor([prompt]), answer)[0]:
            total += math.prod(q for _, q in choice)
    assert total == pytest.approx(validity, abs=1e-6)  # logits are float32


def test_inconsistent_context_follows_the_fewest_mismatch_rule():
    # "i likes _": each supported answer mismatches one visible token, so both stay in.
    logits = OracleDenoiser(load_toyset("likes_tennis"))(torch.tensor([ids("<likes_tennis>", "i", "likes", "[MASK]")]))
    assert torch.isfinite(logits).all()
    probs = logits.softmax(-1)[0, 3]
    assert probs.sum() == pytest.approx(1.0)
    assert probs[ids("apple", "tennis")].tolist() == pytest.approx([0.5, 0.5])
    # "he likes _" is consistent: only "he likes apple" has 0 mismatches, so conditioning is exact.
    oracle = OracleDenoiser(load_toyset("likes_tennis"))
    probs = oracle(torch.tensor([ids("<likes_tennis>", "he", "likes", "[MASK]")])).softmax(-1)
    assert probs[0, 3, ids("apple")].item() == pytest.approx(1.0)


# ---------------------------------------------------------------- several sets, padding, errors


def test_multi_set_oracle_equals_per_set_oracles():
    likes, cities = load_toyset("likes_tennis"), load_toyset("cities")
    rows = [ids("<likes_tennis>", "[MASK]", "likes", "[MASK]"), ids("<cities>", "[MASK]", "city", "[PAD]"),
            ids("<likes_tennis>", "i", "[MASK]", "[MASK]"), ids("<cities>", "new", "[MASK]", "[PAD]")]
    attention = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 0]])
    both = OracleDenoiser(likes, cities)(torch.tensor(rows), attention_mask=attention)  # [4, 4, V]
    alone_likes = OracleDenoiser(likes)(torch.tensor(rows[0::2]))  # [2, 4, V]
    alone_cities = OracleDenoiser(cities)(torch.tensor([r[:3] for r in rows[1::2]]))  # [2, 3, V]
    assert torch.equal(both[0::2], alone_likes)
    assert torch.equal(both[1::2, :3], alone_cities)
    assert (both[1::2, 3] == 0).all()  # padding gets zeros


def test_user_set_without_prompt_works_alone():
    rows = [ids("he", "likes", "apple"), ids("i", "play", "tennis"), ids("i", "play", "tennis")]
    data = datasets.Dataset.from_dict({"input_ids": rows, "prompt_mask": [[False] * 3] * 3})
    toyset = toyset_from_dataset("untagged", data, lambda prompt, answer: True)
    probs = OracleDenoiser(toyset)(torch.tensor([[MASK] * 3])).softmax(-1)  # [1, 3, V]
    assert probs[0, 0, ids("he", "i")].tolist() == pytest.approx([1 / 3, 2 / 3])
    with pytest.raises(ValueError, match="has no tag"):
        OracleDenoiser(toyset, load_toyset("cities"))


def test_interface_attributes():
    oracle = OracleDenoiser("cities", "shuffle_3")
    assert oracle.mask_token_id == MASK and oracle.vocab_size == len(TOK) and oracle.tokenizer is TOK


def test_errors_name_the_row():
    oracle = OracleDenoiser(load_toyset("likes_tennis"), load_toyset("shuffle_2"))
    with pytest.raises(ValueError, match=r"row 1 starts with '<cities>'.*likes_tennis"):
        oracle(torch.tensor([ids("<likes_tennis>", "[MASK]", "[MASK]", "[MASK]"),
                             ids("<cities>", "new", "york", "[PAD]")]))
    with pytest.raises(ValueError, match="row 0: prompt .* is not a prompt of toy set 'shuffle_2'"):
        oracle(torch.tensor([ids("<shuffle_2>", "B", "A", "[SEP]", "[MASK]", "[MASK]")]))
    with pytest.raises(ValueError, match="row 0 is a 'likes_tennis' row but has 3 real tokens"):
        oracle(torch.tensor([ids("<likes_tennis>", "he", "[MASK]", "[MASK]")]),
               attention_mask=torch.tensor([[1, 1, 1, 0]]))
    with pytest.raises(ValueError, match="share the tag"):
        OracleDenoiser(load_toyset("cities"), load_toyset("cities"))
    with pytest.raises(ValueError, match="at least one toy set"):
        OracleDenoiser()


@pytest.mark.parametrize("corrupt", [0.0, 0.3])
def test_fast_large_support_path_equals_the_dense_fewest_mismatch_rule(corrupt):
    # latin_square_4 (576 answers) takes the packed answer-set path: remembered contexts (<= 2 visible tokens),
    # few matching answers summed alone, many by matmul, and no match (corrupted) by dense_marginals.
    # Fails if any of these differs from dense_marginals, the fewest-mismatch rule by one-hot matmul.
    from jointobj.toysets.oracle import dense_marginals

    toyset = load_toyset("latin_square_4")
    oracle = OracleDenoiser(toyset)
    generator = torch.Generator().manual_seed(7)
    prompts, answers = toyset.sample(200, generator)  # [200, lp], [200, la]
    la = toyset.answer_length
    shown = torch.arange(200) % (la + 1)  # every count of visible tokens, 0..la
    order = torch.rand(answers.shape, generator=generator).argsort(1)
    visible = order < shown[:, None]  # [200, la]
    pool = toyset.flat_answers.unique()
    noise = pool[torch.randint(len(pool), answers.shape, generator=generator)]
    answers = torch.where(torch.rand(answers.shape, generator=generator) < corrupt, noise, answers)
    rows = torch.cat([prompts, torch.where(visible, answers, MASK)], dim=1)
    for _ in range(2):  # the second pass reads remembered contexts
        fast = oracle(rows).softmax(-1)[:, toyset.prompt_length:]  # [200, la, V]
        tokens, to_local = oracle._answer_vocab(toyset)
        onehot = oracle._support_onehot(toyset, 0, to_local, len(tokens))
        reference = dense_marginals(onehot, toyset.answer_probs[0], to_local[answers], visible)  # [200, la, U]
        masked = ~visible
        torch.testing.assert_close(fast[..., tokens][masked], reference[masked], atol=1e-6, rtol=0)
