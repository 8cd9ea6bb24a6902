"""Energy rescoring: SIR recovers the data distribution, best-of-N keeps one of its own draws and
never loses validity, the cost is counted as jointobj.evaluation.metrics.Cost counts it, bad input is refused.

Tolerances are 4.5 standard deviations of the sample size (a false alarm about once in
150,000 runs), with fixed seeds.
"""

import math
from typing import ClassVar

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from jointobj.decoding import build_decoder
from jointobj.decoding.energies import Energy, EnergyCost, ExactEnergy
from jointobj.decoding.rescore import (
    RescoreSpec,
    best_of_n,
    importance_log_weights,
    sampling_importance_resampling,
    select_best,
    select_sir,
    with_rescoring,
)
from jointobj.evaluation.metrics import TimedDenoiser
from jointobj.toysets.builtin import load_toyset
from jointobj.toysets.oracle import OracleDenoiser

SAMPLES = 2000


def tv_to_conditional(toyset, prompt: torch.Tensor, answers: torch.Tensor) -> float:
    """TV between the answers drawn for one prompt and p(answer | prompt); off-support mass counts fully."""
    support, probs = toyset.conditional(prompt)
    index = {tuple(a): i for i, a in enumerate(support.tolist())}
    counts = torch.zeros(len(support), dtype=torch.float64)
    outside = 0
    for answer in answers.tolist():
        if tuple(answer) in index:
            counts[index[tuple(answer)]] += 1
        else:
            outside += 1
    return 0.5 * (float((counts / len(answers) - probs).abs().sum()) + outside / len(answers))


def floor_of(toyset, prompt: torch.Tensor, n: int) -> tuple[float, float]:
    """Mean and spread of the TV of n exact draws for one prompt (20 simulated repetitions)."""
    _, probs = toyset.conditional(prompt)
    draws = torch.multinomial(probs.expand(20, -1), n, replacement=True, generator=torch.Generator().manual_seed(0))
    ones = torch.ones_like(draws, dtype=torch.float64)
    counts = torch.zeros(20, len(probs), dtype=torch.float64).scatter_add_(1, draws, ones)
    tv = 0.5 * (counts / n - probs).abs().sum(1)
    return float(tv.mean()), float(tv.std())


# ---------------------------------------------------------------- SIR recovers the distribution


@pytest.mark.slow  # large statistical samples
@pytest.mark.parametrize("name,valid_mass", [("likes_tennis", 2 / 8), ("cities", 4 / 8), ("shuffle_3", 6 / 27)])
def test_sir_with_the_exact_energy_recovers_the_data_distribution(name, valid_mass):
    """Proposal: the oracle's one-step parallel sampler (valid with probability `valid_mass`).
    SIR keeps an invalid sample only when none of its N candidates is valid, with probability
    (1 - valid_mass)^N; the rest is drawn ∝ p / q among the valid ones, i.e. exactly from p. So at
    N = 16 the TV may exceed the exact sampler's floor by that miss rate, plus 4.5 sd of noise."""
    toyset = load_toyset(name)
    prompt = toyset.prompts[0]
    prompts = prompt.expand(SAMPLES, -1)
    oracle, proposal = OracleDenoiser(toyset), build_decoder("random", None)
    tvs = {}
    for n in (1, 4, 16):
        out = sampling_importance_resampling(proposal, ExactEnergy(toyset), oracle, prompts, toyset.answer_length,
                                             candidates=n, generator=torch.Generator().manual_seed(n))
        tvs[n] = tv_to_conditional(toyset, prompt, out.gen_ids)
    floor, spread = floor_of(toyset, prompt, SAMPLES)
    miss = (1 - valid_mass) ** 16
    tolerance = 4.5 * spread + miss + 4.5 * math.sqrt(max(miss, 1 / SAMPLES) / SAMPLES)
    assert tvs[1] > tvs[4] > tvs[16], tvs
    assert tvs[16] <= floor + tolerance, (tvs, floor, tolerance)
    # N = 1 is the proposal
    assert tvs[1] >= (1 - valid_mass) - 4.5 * math.sqrt(valid_mass * (1 - valid_mass) / SAMPLES)


# ---------------------------------------------------------------- best-of-N


@pytest.mark.parametrize("name", ["likes_tennis", "shuffle_3"])
def test_best_of_n_keeps_one_of_its_own_candidates_and_never_loses_validity(name):
    toyset = load_toyset(name)
    prompts, _ = toyset.sample(400, torch.Generator().manual_seed(0))
    out = best_of_n(build_decoder("random", None), ExactEnergy(toyset), OracleDenoiser(toyset), prompts,
                    toyset.answer_length, candidates=8, generator=torch.Generator().manual_seed(1))
    rows = torch.arange(len(prompts))
    assert torch.equal(out.gen_ids, out.candidates[rows, out.chosen])  # one of the N drawn, nothing else
    assert torch.equal(out.energy[rows, out.chosen], out.energy.min(-1).values)  # the lowest energy
    candidate_valid = toyset.is_valid(prompts.repeat_interleave(8, 0), out.candidates.flatten(0, 1)).view(-1, 8)
    valid = toyset.is_valid(prompts, out.gen_ids)
    assert torch.equal(valid, candidate_valid.any(-1))  # valid whenever any candidate of the row is
    assert valid.double().mean() >= candidate_valid.double().mean()  # never below the proposal on the same draws
    assert torch.isnan(out.log_prob).all()  # the kept sample's probability is not known


@given(st.integers(1, 6), st.integers(1, 8), st.integers(0, 2**16))
def test_selections_stay_within_the_candidates(b, n, seed):
    generator = torch.Generator().manual_seed(seed)
    energy = torch.randint(0, 3, (b, n), generator=generator).double()  # ties on purpose
    energy[torch.rand(b, n, generator=generator) < 0.3] = math.inf
    log_q = -torch.rand(b, n, generator=generator, dtype=torch.float64)
    best, best_fallback = select_best(energy, log_q)
    assert ((0 <= best) & (best < n)).all()
    first_minimum = (energy == energy.min(-1, keepdim=True).values).double().argmax(-1)
    assert torch.equal(best, first_minimum) and torch.equal(best_fallback, torch.isinf(energy).all(-1))
    drawn, fallback = select_sir(energy, log_q, generator=generator)
    assert ((0 <= drawn) & (drawn < n)).all() and torch.equal(fallback, torch.isinf(energy).all(-1))
    chosen = energy[torch.arange(b), drawn]
    assert (torch.isfinite(chosen) | fallback).all()  # an infinite energy has weight 0 unless all do


# ---------------------------------------------------------------- cost


@pytest.mark.parametrize("k", [1, 2, 3])
def test_one_step_sampler_with_eight_candidates_and_a_k_block_self_energy_costs_two_steps(k):
    """N = 8 candidates drawn together (1 step, 8 rows), scored by a K-block likelihood (1 step,
    8 K rows): 2 sequential steps and 8 (1 + K) forward rows per sample, counted independently."""
    toyset = load_toyset("likes_tennis")
    counted = TimedDenoiser(OracleDenoiser(toyset))
    b = 5
    decoder = build_decoder("random", None, rescore=f"best:self:l2r:{k},8")
    out = decoder.sample(counted, toyset.prompts[[0] * b], 3, torch.Generator().manual_seed(0))
    assert out.steps == counted.calls == 2 and (out.row_steps == 2).all()
    assert out.rows_per_sample == counted.rows / b == 8 * (1 + k)
    assert out.energy_steps == 1


def test_in_loop_rescoring_counts_the_marginals_forward_and_the_energy_at_every_step():
    toyset = load_toyset("latin_square_4")
    counted = TimedDenoiser(OracleDenoiser(toyset))
    prompts = toyset.prompts[[0] * 3]
    out = build_decoder("random", 4, rescore="sir:self:l2r:2,4,step").sample(counted, prompts, 16,
                                                                            torch.Generator().manual_seed(0))
    assert out.steps == counted.calls == 4 * 2  # 4 denoising steps, each: marginals, then energy (not fused)
    assert (out.row_steps == 8).all() and out.tokens_per_step == 2
    assert out.rows_per_sample == counted.rows / 3 == 4 * (1 + 4 * 2)  # per step: 1 row + N candidates x K rows
    free = build_decoder("random", 4, rescore="sir:exact,4,step").sample(OracleDenoiser(toyset), prompts, 16)
    assert free.steps == 4 and free.rows_per_sample == 4  # the exact energy is oracle knowledge, no forward


@pytest.mark.parametrize("where", ["step", "fused", "loop"])
def test_in_loop_rescoring_runs_any_step_count_with_llada_quotas(where):
    # 16 positions in 5 denoising steps: 4, 3, 3, 3, 3 committed (no tokens_per_step gives 5 steps for 16).
    toyset = load_toyset("latin_square_4")
    prompts = toyset.prompts[[0] * 3]
    decoder = build_decoder("random", None, steps=5, rescore=f"best:exact,2,{where}")
    out = decoder.sample(OracleDenoiser(toyset), prompts, 16, torch.Generator().manual_seed(0), return_trace=True)
    assert all(torch.bincount(row).tolist() == [4, 3, 3, 3, 3] for row in out.commit_step)


def test_fused_scoring_gives_the_same_samples_in_one_step_per_denoising_step():
    """`fused` runs each candidate's energy and a lookahead on its next state as one step; the kept
    candidate's lookahead is the next marginals. Same draws as `step` (the oracle is deterministic),
    1 + D sequential steps instead of 2 D, and N more rows per denoising step but the last."""
    toyset = load_toyset("latin_square_4")
    prompts = toyset.prompts[[0] * 6]
    counted = TimedDenoiser(OracleDenoiser(toyset))
    fused = build_decoder("random", 4, rescore="sir:self:l2r:all,4,fused").sample(counted, prompts, 16,
                                                                                torch.Generator().manual_seed(3))
    step = build_decoder("random", 4, rescore="sir:self:l2r:all,4,step").sample(OracleDenoiser(toyset), prompts, 16,
                                                                              torch.Generator().manual_seed(3))
    assert torch.equal(fused.ids, step.ids)
    assert fused.steps == 1 + 4 and (fused.row_steps == 5).all() and step.steps == 2 * 4
    assert counted.calls == 1 + 4 + 3  # marginals once, energy every step, lookahead on all but the last
    assert fused.rows_per_sample == counted.rows / 6 == 1 + 4 * (4 * 4) + 3 * 4


@pytest.mark.slow  # large statistical samples
def test_in_loop_rescoring_escapes_the_trap_where_parallel_sampling_cannot():
    """Latin square 4x4 at 4 cells per step: the oracle alone is valid ~19% of the time; drawing 16
    candidates for each step's cells and keeping one the exact energy accepts gives > 90%."""
    toyset = load_toyset("latin_square_4")
    prompts = toyset.prompts[[0] * 300]
    oracle = OracleDenoiser(toyset)
    plain = build_decoder("random", 4).sample(oracle, prompts, 16, torch.Generator().manual_seed(0))
    rescored = build_decoder("random", 4, rescore="sir:exact,16,step").sample(oracle, prompts, 16,
                                                                             torch.Generator().manual_seed(0))
    assert toyset.is_valid(prompts, plain.gen_ids).double().mean() < 0.35
    assert toyset.is_valid(prompts, rescored.gen_ids).double().mean() > 0.9


# ---------------------------------------------------------------- refusals


class NoMasks(Energy):
    name = "no_masks"

    def __call__(self, ids, context, attention_mask=None):
        return torch.zeros(len(ids), dtype=torch.float64)

    def cost(self, context, attention_mask=None):
        return EnergyCost(1, float(len(context)))


def test_bad_rescoring_requests_are_refused():
    oracle = OracleDenoiser("cities")
    prompts = load_toyset("cities").prompts[[0, 0]]
    with pytest.raises(ValueError, match="N must be a whole number >= 1"):
        best_of_n(build_decoder("random", None), "exact", oracle, prompts, 2, candidates=0)
    with pytest.raises(ValueError, match="N must be a whole number >= 1"):
        RescoreSpec.parse("best:exact,0")
    with pytest.raises(ValueError, match="not MODE:ENERGY,N"):
        RescoreSpec.parse("best-exact-8")
    with pytest.raises(ValueError, match="unknown rescoring mode 'mean'"):
        RescoreSpec.parse("mean:exact,8")
    with pytest.raises(ValueError, match="cannot score partial candidates"):
        build_decoder("random", 1, rescore=RescoreSpec("sir", NoMasks(), 4, "step"))
    after_the_loop = build_decoder("random", 1, rescore="best:exact,4")  # not a hard-commit policy
    with pytest.raises(ValueError, match="not one. Rescore it after the loop"):
        with_rescoring(after_the_loop, "best:exact,4,loop")
    nested = build_decoder("random", None, rescore="best:exact,2")  # its samples' probability is unknown
    with pytest.raises(ValueError, match="log_prob is NaN"):
        sampling_importance_resampling(nested, "exact", oracle, prompts, 2, candidates=2)


def test_spec_round_trips():
    for text in ("best:self:l2r:4,8", "sir:exact,16,step", "sir:head,2,loop", "sir:self:l2r:all,64,fused"):
        assert str(RescoreSpec.parse(text)) == text
    assert build_decoder("confidence", 2, rescore="sir:exact,4").name == "confidence+sir:exact,4"


# ---------------------------------------------------------------- the evaluator


def test_joint_validity_rescore_flag_adds_a_row_per_spec_and_counts_candidates(tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "eval" / "joint_validity.py"
    spec = importlib.util.spec_from_file_location("eval_joint_validity_rescore", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "rows.json"
    script.main(["--oracle", "--toyset", "cities", "--decoder", "random", "--tokens-per-step", "all",
                 "--rescore", "best:self:l2r:2,4;sir:exact,8", "--samples", "50", "--json", str(out)])
    rows = json.loads(out.read_text())
    assert [r["decoder"] for r in rows] == ["random", "random+best:self:l2r:2,4", "random+sir:exact,8"]
    assert [r["rescore"] for r in rows] == [None, "best:self:l2r:2,4", "sir:exact,8"]
    assert [(r["steps_per_sample"], r["rows_per_sample"]) for r in rows] == [(1, 1), (2, 4 * (1 + 2)), (1, 8)]
    with pytest.raises(ValueError, match="not MODE:ENERGY,N"):
        script.main(["--oracle", "--toyset", "cities", "--decoder", "random", "--tokens-per-step", "all",
                     "--rescore", "best", "--json", str(tmp_path / "x.json")])


class Residual(NoMasks):
    residual = True
    trained_against: ClassVar[dict] = {"decoder": "random", "tokens_per_step": None,
                                       "repr": repr(build_decoder("random", None))}  # as EnergyNCELoss records it


def test_sir_with_a_residual_energy_only_for_the_sampler_it_was_trained_against():
    """p ∝ q_train exp(-E) is weighed by exp(-E): right for its own sampler after the loop only."""
    oracle, prompts = OracleDenoiser("cities"), load_toyset("cities").prompts[[0] * 4]
    out = build_decoder("random", None, rescore=RescoreSpec("sir", Residual(), 4)).sample(oracle, prompts, 2)
    assert out.gen_ids.shape == (4, 2)
    build_decoder("random", 1, rescore=RescoreSpec("best", Residual(), 4, "loop"))  # best-of-N only ranks
    for k, where in ((1, "end"), (None, "loop")):
        with pytest.raises(ValueError, match="energy is residual"):
            build_decoder("random", k, rescore=RescoreSpec("sir", Residual(), 4, where))


def test_rescoring_sweep_script_writes_its_rows_and_the_target(tmp_path, capsys):
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "eval" / "rescoring.py"
    spec = importlib.util.spec_from_file_location("eval_rescoring", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "sweep.json"
    rows = script.main(["--toyset", "cities,sudoku_4", "--energies", "exact,self:l2r:all", "--candidates", "2",
                        "--in-loop-candidates", "2", "--fused-candidates", "2", "--samples", "20", "--json", str(out)])
    assert json.loads(out.read_text()) == rows
    decoders = {(r["toyset"], r["decoder"], r["requested_tokens_per_step"]) for r in rows}
    assert ("cities", "random", "all") in decoders and ("cities", "random+sir:exact,2", 1) in decoders
    assert ("sudoku_4", "random+sir:self:l2r:all,2,fused", 6) in decoders
    assert ("sudoku_4", "random+best:exact,2,step", 2) in decoders
    printed = capsys.readouterr().out
    assert "sudoku_4: MET" in printed and "cities: " not in printed.split("target:")[1]


# ---------------------------------------------------------------- select_sir draws the importance weights

ROWS = 20_000  # one call, one draw per row: each candidate's frequency is a binomial proportion over ROWS


def draw_frequencies(energy: torch.Tensor, log_q: torch.Tensor, residual: bool,
                     seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One row of N candidates repeated ROWS times -> (frequency [N] of each index drawn, fallback [ROWS])."""
    index, fallback = select_sir(energy.expand(ROWS, -1), log_q.expand(ROWS, -1), residual,
                                 torch.Generator().manual_seed(seed))
    return torch.bincount(index, minlength=energy.shape[-1]).double() / ROWS, fallback


def within_five_standard_errors(frequency: torch.Tensor, target: torch.Tensor) -> bool:
    tolerance = 5 * (target * (1 - target) / ROWS).sqrt()  # 5 binomial standard errors of each proportion
    return bool(((frequency - target).abs() <= tolerance).all())


@pytest.mark.parametrize("residual", [False, True])
def test_sir_draws_in_proportion_to_the_importance_weights_with_unequal_proposal_probabilities(residual):
    """w = exp(-E) / q (residual: exp(-E), what importance_log_weights computes for each). The
    three targets are far apart (softmax(-E - log q) ~ [.22, .49, .30], softmax(-E) ~ [.51, .19, .31],
    softmax(-E + log q) ~ [.80, .04, .15]), more than 5 standard errors (<= 0.018 at 20,000 rows),
    so a selection blind to q, with q's sign flipped, or not residual-aware fails here."""
    energy = torch.tensor([[0.0, 1.0, 0.5]], dtype=torch.float64)  # [1, N]
    log_q = torch.tensor([[-0.2, -2.0, -1.0]], dtype=torch.float64)  # [1, N] unequal on purpose
    expected_log_w = -energy if residual else -energy - log_q
    torch.testing.assert_close(importance_log_weights(energy, log_q, residual), expected_log_w)
    target = torch.softmax(expected_log_w[0], -1)  # [N]
    frequency, fallback = draw_frequencies(energy, log_q, residual, seed=11)
    assert not fallback.any()
    assert within_five_standard_errors(frequency, target), (frequency, target)
    other = torch.softmax((-energy if not residual else -energy - log_q)[0], -1)  # the other mode's target
    assert not within_five_standard_errors(frequency, other)  # the test can tell the two apart


@pytest.mark.parametrize("energy", [[math.inf, math.inf, math.inf], [math.nan, math.nan, math.nan],
                                    [math.inf, math.nan, math.inf]])
def test_sir_with_no_positive_weight_falls_back_to_a_uniform_draw(energy):
    """All weights 0 (E = +inf) or undefined (NaN): fallback, and each candidate 1/3 of the time.
    Fails if such a row is not flagged, or if it always takes one index (argmax of equal -inf)."""
    frequency, fallback = draw_frequencies(torch.tensor([energy], dtype=torch.float64),
                                           torch.tensor([[-0.1, -1.0, -3.0]], dtype=torch.float64), False, seed=12)
    assert fallback.all()
    assert within_five_standard_errors(frequency, torch.full((3,), 1 / 3, dtype=torch.float64)), frequency


def test_sir_never_draws_a_nan_weight_and_flags_only_rows_without_a_positive_weight():
    """A NaN energy counts as weight 0: never drawn, the rest in proportion to their weights.
    Fails if NaN were kept (argmax of NaN picks it) or made the whole row fall back."""
    energy = torch.tensor([[0.0, math.nan, 1.0]], dtype=torch.float64)
    log_q = torch.tensor([[-1.0, -1.0, -0.5]], dtype=torch.float64)
    frequency, fallback = draw_frequencies(energy, log_q, False, seed=13)
    assert frequency[1] == 0 and not fallback.any()
    target = torch.softmax(torch.tensor([1.0, -math.inf, -0.5], dtype=torch.float64), -1)  # -E - log q
    assert within_five_standard_errors(frequency, target), (frequency, target)
    mixed = torch.tensor([[0.0, 1.0, 2.0], [math.inf] * 3, [math.nan, 0.0, math.inf], [math.nan] * 3],
                         dtype=torch.float64)  # [4, N]
    index, fallback = select_sir(mixed, torch.zeros_like(mixed), generator=torch.Generator().manual_seed(0))
    assert fallback.tolist() == [False, True, False, True]
    assert index[2] == 1  # the one candidate with a positive weight


def test_sir_draws_depend_only_on_the_seed():
    energy = torch.rand(50, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    log_q = -torch.rand(50, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    first, again, other = (select_sir(energy, log_q, generator=torch.Generator().manual_seed(s))[0] for s in (4, 4, 5))
    assert torch.equal(first, again) and not torch.equal(first, other)  # 50 rows of 6: a collision is ~impossible
