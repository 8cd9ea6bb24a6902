"""Joint validity, distribution fidelity and cost (`Cost`: sequential steps and forward rows per sample).

    validity = joint_validity(toyset, prompt_ids, answer_ids)        # fraction the validator accepts
    tv = total_variation(toyset, answer_ids)                         # None for conditional sets
    floor = tv_noise_floor(toyset, n=len(answer_ids))                # what N exact samples would show
    cov = coverage(toyset, answer_ids)                               # probability mass seen

Fidelity is defined for unconditional sets (one prompt) only: with many prompts each seen a
handful of times an empirical conditional distribution is mostly sampling noise.

- **TV** = 0.5 * sum_x |p_hat(x) - p(x)| over the support and everything sampled outside it
  (invalid samples count fully). Even exact samples show TV > 0; `tv_noise_floor` is the
  mean (and spread) of the TV of N exact draws, simulated with a fixed seed, the number to
  read TV against.
- **coverage** = the probability mass of the support answers seen at least once:
  sum_{x in support, seen} p(x). Unlike a count of distinct answers it does not reward
  finding rare answers more than common ones; `expected_coverage` gives its value under N
  exact draws, sum_x p(x) (1 - (1 - p(x))^N), the ceiling to read it against.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from jointobj.toysets.builtin import ToySet

__all__ = [
    "Cost",
    "NoiseFloor",
    "TimedDenoiser",
    "answer_unigram",
    "coverage",
    "distribution_entropy",
    "empirical_distribution",
    "expected_coverage",
    "joint_validity",
    "kl_divergence",
    "total_variation",
    "tv_noise_floor",
    "validity_change_z",
    "validity_fell",
    "wilson_interval",
]


# ---------------------------------------------------------------- validity and fidelity


def joint_validity(toyset: ToySet, prompt_ids: torch.Tensor, answer_ids: torch.Tensor) -> float:
    """Fraction of (prompt, answer) rows the set's validator accepts."""
    return float(toyset.is_valid(prompt_ids.cpu(), answer_ids.cpu()).double().mean())


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval (low, high) for a proportion: the p whose score test accepts
    `successes` of `n`, i.e. |successes/n - p| <= z sqrt(p (1 - p) / n).

    Unlike the normal interval p_hat +- z se it is honest at 0 and 1: 400 successes of 400
    give (0.9905, 1.0), not the empty (1.0, 1.0). z = 1.96 is a 95% interval."""
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n >= 1, got successes={successes}, n={n}")
    if z <= 0:
        raise ValueError(f"z must be positive (1.96 for 95%), got {z}")
    p_hat, z2 = successes / n, z * z
    centre = (p_hat + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p_hat * (1 - p_hat) / n + z2 / (4 * n * n))
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def validity_change_z(base: float, base_n: int, tuned: float, tuned_n: int) -> float:
    """(tuned - base) in standard errors of the difference: the two-proportion test, its standard error from the
    pooled rate sqrt(p (1 - p) (1/n1 + 1/n2)), so a change from a perfect 400 / 400 is judged too (its own se is 0).
    0 when both are 0 or both are 1."""
    pooled = (base * base_n + tuned * tuned_n) / (base_n + tuned_n)
    se = math.sqrt(pooled * (1 - pooled) * (1 / base_n + 1 / tuned_n))
    return 0.0 if se == 0 else (tuned - base) / se


def validity_fell(base: float, base_n: int, tuned: float, tuned_n: int, z: float = 2.0) -> bool:
    """Do no harm: did validity fall from `base` (of base_n samples) to `tuned` (of tuned_n) by more than
    z standard errors of the difference (`validity_change_z`)?"""
    return validity_change_z(base, base_n, tuned, tuned_n) < -z


def empirical_distribution(toyset: ToySet, answer_ids: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Sample frequencies over the support of an unconditional set.

    answer_ids [n, la] -> (p_hat [S] float64 aligned with `toyset.answer_distribution()`,
    mass of the samples outside the support).
    """
    support, _ = toyset.answer_distribution()  # [S, la]
    answer_ids = answer_ids.cpu().long()
    if answer_ids.dim() != 2 or answer_ids.shape[1] != support.shape[1]:
        raise ValueError(f"answers must be [n, {support.shape[1]}] for toy set {toyset.name!r}, "
                         f"got {tuple(answer_ids.shape)}")
    index = {tuple(row): i for i, row in enumerate(support.tolist())}
    distinct, counts = answer_ids.unique(dim=0, return_counts=True)  # [u, la], [u]
    slot = torch.tensor([index.get(tuple(row), -1) for row in distinct.tolist()], dtype=torch.long)  # [u]
    inside = slot >= 0
    p_hat = torch.zeros(len(support), dtype=torch.float64)
    p_hat.index_add_(0, slot[inside], counts[inside].double())
    n = len(answer_ids)
    return p_hat / n, float(counts[~inside].sum()) / n


def total_variation(toyset: ToySet, answer_ids: torch.Tensor) -> float | None:
    """TV between the samples' empirical distribution and the set's; None for conditional sets."""
    if not toyset.unconditional:
        return None
    _, probs = toyset.answer_distribution()
    p_hat, outside = empirical_distribution(toyset, answer_ids)
    return 0.5 * (float((p_hat - probs).abs().sum()) + outside)


def coverage(toyset: ToySet, answer_ids: torch.Tensor) -> float | None:
    """Probability mass of the support answers seen at least once; None for conditional sets."""
    if not toyset.unconditional:
        return None
    _, probs = toyset.answer_distribution()
    p_hat, _ = empirical_distribution(toyset, answer_ids)
    return float(probs[p_hat > 0].sum())


def expected_coverage(toyset: ToySet, n: int) -> float | None:
    """Coverage that n exact draws reach on average (exact formula); None for conditional sets."""
    if not toyset.unconditional:
        return None
    _, probs = toyset.answer_distribution()
    return float((probs * (1 - (1 - probs) ** n)).sum())


@dataclass(frozen=True)
class NoiseFloor:
    """TV of N exact samples: mean and standard deviation over the simulated repetitions."""

    mean: float
    std: float
    repetitions: int


def tv_noise_floor(toyset: ToySet, n: int, repetitions: int = 20, seed: int = 0) -> NoiseFloor | None:
    """Expected TV of n exact draws from the set's own distribution, by simulation with a
    fixed seed (so tables are reproducible); None for conditional sets."""
    if not toyset.unconditional:
        return None
    if n < 1 or repetitions < 2:
        raise ValueError(f"need n >= 1 samples and repetitions >= 2, got n={n}, repetitions={repetitions}")
    _, probs = toyset.answer_distribution()  # [S]
    generator = torch.Generator().manual_seed(seed)
    draws = torch.multinomial(probs.expand(repetitions, -1), n, replacement=True, generator=generator)  # [r, n]
    counts = torch.zeros(repetitions, len(probs), dtype=torch.float64).scatter_add_(
        1, draws, torch.ones_like(draws, dtype=torch.float64))  # [r, S]
    tv = 0.5 * (counts / n - probs).abs().sum(1)  # [r]
    return NoiseFloor(float(tv.mean()), float(tv.std()), repetitions)


# ---------------------------------------------------------------- token distributions


def answer_unigram(toyset: ToySet) -> torch.Tensor:
    """[V] float64: the frequency of each token among answer tokens of the set's data
    (exact: weighted by p(prompt) p(answer | prompt), each answer position counted once)."""
    owner = torch.repeat_interleave(torch.arange(len(toyset.prompts)), toyset.offsets.diff())  # [T]
    weight = toyset.prompt_probs[owner] * toyset.flat_probs  # [T]
    la = toyset.answer_length
    tokens = toyset.flat_answers.reshape(-1)  # [T * la]
    unigram = torch.bincount(tokens, weights=weight.repeat_interleave(la), minlength=len(toyset.tokenizer))
    return unigram / unigram.sum()


def distribution_entropy(probs: torch.Tensor) -> torch.Tensor:
    """[..., V] probabilities -> [...] entropy in nats."""
    return torch.special.entr(probs.double()).sum(-1)


def kl_divergence(p: torch.Tensor, q: torch.Tensor, floor: float = 1e-12) -> torch.Tensor:
    """[..., V] KL(p || q) in nats; q is floored at `floor` where p > 0 so an exact zero
    (e.g. an oracle's impossible token) gives a large finite number, not inf."""
    p, q = p.double(), q.double()
    return (torch.special.xlogy(p, p) - torch.special.xlogy(p, q.clamp(min=floor))).sum(-1)


# ---------------------------------------------------------------- cost


@dataclass(frozen=True)
class Cost:
    """Per-sample cost of a decoder run, honestly counted.

    steps_per_sample  sequential denoiser forwards one sample waits for (latency); N candidates
                      drawn together are one step; a K-block likelihood is one step
    rows_per_sample   forward rows spent per sample (compute): each candidate, each energy
                      block, each extra pass counts
    gen_length        generated tokens per sample
    wall_s            wall-clock seconds of the whole run

    Later stages add to it: `cost + Cost(gen_length, steps_per_sample=1, rows_per_sample=K * N)`
    for an energy score of N candidates with a K-block likelihood.
    """

    gen_length: int
    steps_per_sample: float
    rows_per_sample: float
    wall_s: float = 0.0

    @property
    def tokens_per_step(self) -> float:
        return self.gen_length / self.steps_per_sample

    @classmethod
    def of(cls, output: Any, wall_s: float = 0.0) -> "Cost":
        """From a SampleOutput."""
        return cls(output.gen_length, output.steps_per_sample, output.rows_per_sample, wall_s)

    def __add__(self, other: "Cost") -> "Cost":
        if other.gen_length != self.gen_length:
            raise ValueError(f"cannot add costs of {self.gen_length} and {other.gen_length} generated tokens")
        return Cost(self.gen_length, self.steps_per_sample + other.steps_per_sample,
                    self.rows_per_sample + other.rows_per_sample, self.wall_s + other.wall_s)

    def as_dict(self) -> dict[str, float]:
        return {**dataclasses.asdict(self), "tokens_per_step": self.tokens_per_step}


class TimedDenoiser:
    """Wraps a denoiser and counts its forwards: calls, rows and seconds (synchronising CUDA
    so the time is the forward's, not its launch's). Everything else is forwarded, so a
    sampler runs on it unchanged; benchmarks use it to split step time into forward and
    sampler overhead, tests to count forwards independently of the sampler's own count."""

    def __init__(self, denoiser: Any):
        self.denoiser = denoiser
        self.calls, self.rows, self.seconds = 0, 0, 0.0

    def reset(self) -> None:
        self.calls, self.rows, self.seconds = 0, 0, 0.0

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and ids.is_cuda:
            torch.cuda.synchronize(ids.device)
        start = time.perf_counter()
        logits = self.denoiser(*args, **kwargs)
        if logits.is_cuda:
            torch.cuda.synchronize(logits.device)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        self.rows += logits.shape[0]
        return logits

    def __getattr__(self, name: str) -> Any:
        if name == "denoiser":
            raise AttributeError(name)
        return getattr(self.denoiser, name)
