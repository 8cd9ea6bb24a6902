"""Metrics: TV and its noise floor, coverage, unigram / KL, cost, the headline."""

import math

import pytest
import torch

from jointobj.decoding.budget import parse_tokens_per_step
from jointobj.evaluation.metrics import (
    Cost,
    answer_unigram,
    coverage,
    expected_coverage,
    joint_validity,
    kl_divergence,
    total_variation,
    tv_noise_floor,
)
from jointobj.evaluation.sweep import headline
from jointobj.toysets.builtin import load_toyset


def words(toyset, *sentences):
    """Answer ids [n, la] from space-separated words."""
    vocab = toyset.tokenizer.get_vocab()
    return torch.tensor([[vocab[w] for w in s.split()] for s in sentences])


# ---------------------------------------------------------------- TV and coverage by hand


def test_tv_of_a_point_mass_by_hand():
    likes, cities = load_toyset("likes_tennis"), load_toyset("cities")
    # all mass on one of two equally likely answers: 0.5 * (|1 - 0.5| + |0 - 0.5|) = 0.5
    assert total_variation(likes, words(likes, "he likes apple").repeat(10, 1)) == pytest.approx(0.5)
    # one of four answers with p = (1/4, 1/4, 1/4, 1/4): 0.5 * (3/4 + 3 * 1/4) = 0.75
    assert total_variation(cities, words(cities, "new york").repeat(7, 1)) == pytest.approx(0.75)


def test_tv_counts_samples_outside_the_support_fully():
    likes = load_toyset("likes_tennis")
    answers = words(likes, "he likes apple", "i play tennis", "i likes tennis", "he likes tennis")
    # p_hat = (1/4, 1/4) on the support, 1/2 outside: 0.5 * (1/4 + 1/4 + 1/2) = 0.5
    assert total_variation(likes, answers) == pytest.approx(0.5)
    assert joint_validity(likes, likes.prompts[[0] * 4], answers) == pytest.approx(0.5)


def test_coverage_is_the_probability_mass_seen():
    cities = load_toyset("cities")  # new york, new orleans (1/4 each); mexico city, panama city (1/4 each)
    assert coverage(cities, words(cities, "new york", "new york", "new city")) == pytest.approx(0.25)
    assert coverage(cities, words(cities, "new york", "panama city", "mexico city")) == pytest.approx(0.75)


def test_fidelity_is_undefined_for_conditional_sets():
    shuffle = load_toyset("shuffle_3")
    _, answers = shuffle.sample(10, torch.Generator().manual_seed(0))
    assert total_variation(shuffle, answers) is None
    assert coverage(shuffle, answers) is None and expected_coverage(shuffle, 10) is None
    assert tv_noise_floor(shuffle, 10) is None


# ---------------------------------------------------------------- against exact samples


@pytest.mark.parametrize("name,n", [("agreement", 2000), ("cities", 500), ("latin_square_4", 3000)])
def test_tv_of_exact_samples_sits_on_the_noise_floor(name, n):
    toyset = load_toyset(name)
    floor = tv_noise_floor(toyset, n, repetitions=20, seed=0)
    tvs = torch.tensor([total_variation(toyset, toyset.sample(n, torch.Generator().manual_seed(s))[1])
                        for s in range(5)])
    # the mean of 5 draws lies within 4.5 standard errors of the floor (std from the simulation)
    assert abs(float(tvs.mean()) - floor.mean) <= 4.5 * floor.std / math.sqrt(5) + 1e-3


def test_noise_floor_shrinks_like_one_over_root_n():
    agreement = load_toyset("agreement")
    small, large = tv_noise_floor(agreement, 1000), tv_noise_floor(agreement, 16000)
    assert large.mean == pytest.approx(small.mean / 4, rel=0.15)
    assert tv_noise_floor(agreement, 1000) == small  # fixed seed: reproducible


def test_expected_coverage_matches_exact_samples():
    agreement, n = load_toyset("agreement"), 400  # 432 equally likely answers: about 60% coverage
    expected = expected_coverage(agreement, n)
    seen = torch.tensor([coverage(agreement, agreement.sample(n, torch.Generator().manual_seed(s))[1])
                         for s in range(10)])
    # coverage = (#distinct seen) / 432; its variance is below the binomial bound p(1-p)/432 per draw
    assert abs(float(seen.mean()) - expected) <= 4.5 * math.sqrt(expected * (1 - expected) / 432 / 10)
    assert expected == pytest.approx(1 - (1 - 1 / 432) ** n)


# ---------------------------------------------------------------- token distributions


def test_unigram_of_likes_tennis_is_uniform_over_its_six_words():
    likes = load_toyset("likes_tennis")
    unigram = answer_unigram(likes)
    ids = words(likes, "he likes apple", "i play tennis").flatten()
    torch.testing.assert_close(unigram[ids], torch.full((6,), 1 / 6, dtype=torch.float64))
    assert unigram.sum() == pytest.approx(1.0) and len(unigram) == len(likes.tokenizer)


def test_kl_divergence_by_hand():
    p, q = torch.tensor([0.5, 0.5, 0.0]), torch.tensor([0.25, 0.25, 0.5])
    assert float(kl_divergence(p, q)) == pytest.approx(math.log(2))
    assert float(kl_divergence(p, p)) == pytest.approx(0.0)
    assert math.isfinite(float(kl_divergence(q, p)))  # floored, not inf


# ---------------------------------------------------------------- cost and headline


def test_cost_adds_steps_and_rows_and_reports_tokens_per_step():
    sampler = Cost(gen_length=8, steps_per_sample=4, rows_per_sample=4, wall_s=1.0)
    energy = Cost(gen_length=8, steps_per_sample=1, rows_per_sample=16)  # a 4-block likelihood of 4 candidates
    total = sampler + energy
    assert (total.steps_per_sample, total.rows_per_sample, total.wall_s) == (5, 20, 1.0)
    assert sampler.tokens_per_step == 2 and total.tokens_per_step == pytest.approx(8 / 5)
    with pytest.raises(ValueError, match="generated tokens"):
        sampler + Cost(gen_length=4, steps_per_sample=1, rows_per_sample=1)


def rows_of(decoder, pairs, toyset="t"):
    return [{"decoder": decoder, "toyset": toyset, "tokens_per_step": k, "validity": v,
             "steps_per_sample": 8 / k, "rows_per_sample": 8 / k} for k, v in pairs]


def test_headline_picks_the_highest_tokens_per_step_with_validity_at_least_99():
    rows = rows_of("a", [(4, 0.5), (1, 1.0), (2, 0.995)]) + rows_of("b", [(1, 0.98), (2, 0.999)])
    rows += rows_of("c", [(1, 0.99), (8, 0.991)])
    heads = {h["decoder"]: h for h in headline(rows)}
    assert heads["a"]["tokens_per_step"] == 2 and heads["a"]["steps_per_sample"] == 4
    assert heads["b"]["tokens_per_step"] is None  # fails at the slowest rate: validity does not *stay* >= 0.99
    assert heads["c"]["tokens_per_step"] == 8  # 0.99 itself passes


def test_headline_is_per_toy_set():
    rows = rows_of("a", [(1, 1.0), (2, 1.0)], toyset="x") + rows_of("a", [(1, 1.0), (2, 0.5)], toyset="y")
    assert [(h["toyset"], h["tokens_per_step"]) for h in headline(rows)] == [("x", 2), ("y", 1)]


@pytest.mark.parametrize("bad", [0, -2, "two", 1.5])
def test_tokens_per_step_parsing_refuses_nonsense(bad):
    with pytest.raises(ValueError, match="whole number >= 1 or 'all'"):
        parse_tokens_per_step(bad)
    assert parse_tokens_per_step("all") is None and parse_tokens_per_step("3") == 3


def test_write_json_turns_non_finite_numbers_into_null(tmp_path):
    # json.dumps would write NaN and Infinity, which strict JSON readers (and jq) refuse.
    import json

    from jointobj.evaluation.report import write_json

    path = write_json(tmp_path / "rows.json",
                      [{"tv": float("nan"), "gap": float("inf"), "low": -float("inf"), "ok": 0.5}])
    assert json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-standard {c}")) == [
        {"tv": None, "gap": None, "low": None, "ok": 0.5}]


# ---------------------------------------------------------------- Wilson interval


def test_wilson_interval_matches_published_values_and_is_honest_at_zero_and_one():
    from jointobj.evaluation.metrics import wilson_interval

    # Brown, Cai & DasGupta (2001) style check values: 0 of 10 -> (0, 0.2775); 5 of 10 -> (0.2366, 0.7634)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.27754), abs=1e-5)
    assert wilson_interval(5, 10) == pytest.approx((0.23659, 0.76341), abs=1e-5)
    low, high = wilson_interval(400, 400)
    assert high == 1.0 and 0.985 < low < 0.995  # a normal interval would be the empty (1, 1)
    assert wilson_interval(0, 400)[0] == 0.0 and wilson_interval(0, 400)[1] > 0.005


@pytest.mark.parametrize("successes,n", [(0, 7), (3, 7), (7, 7), (1, 50), (37, 50), (199, 200)])
def test_wilson_interval_is_the_set_of_p_the_score_test_accepts(successes, n):
    """Brute force: scan p on a fine grid, keep those with |p_hat - p| <= z sqrt(p(1-p)/n)."""
    from jointobj.evaluation.metrics import wilson_interval

    z, p_hat = 1.96, successes / n
    grid = torch.linspace(0, 1, 200_001, dtype=torch.float64)
    accepted = grid[(p_hat - grid).abs() <= z * (grid * (1 - grid) / n).sqrt()]
    low, high = wilson_interval(successes, n, z)
    assert low == pytest.approx(float(accepted.min()), abs=1e-5)
    assert high == pytest.approx(float(accepted.max()), abs=1e-5)


@pytest.mark.parametrize("successes,n,z", [(-1, 5, 1.96), (6, 5, 1.96), (0, 0, 1.96), (1, 5, 0.0)])
def test_wilson_interval_refuses_impossible_counts(successes, n, z):
    from jointobj.evaluation.metrics import wilson_interval

    with pytest.raises(ValueError, match="successes|z must"):
        wilson_interval(successes, n, z)
