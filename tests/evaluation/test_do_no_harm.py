"""The do-no-harm mark: a validity drop beyond two standard errors fires; sampling noise does not."""

import torch

from jointobj.evaluation.metrics import validity_fell
from jointobj.evaluation.run_report import mark_harm

N = 400


def test_a_planted_regression_fires():
    assert validity_fell(0.792, N, 0.685, N)  # the README's main-job latin_square_3 threshold drop
    assert validity_fell(1.0, N, 0.985, N)  # from a perfect score, whose own standard error is 0
    assert not validity_fell(0.685, N, 0.792, N)  # a rise is no harm


def test_noise_does_not_fire():
    # Base and fine-tuned drawn from the same rate: a one-sided 2-se test fires about 2.3% of the time.
    generator = torch.Generator().manual_seed(0)
    for rate in (0.05, 0.5, 0.9, 0.99):
        draws = torch.binomial(torch.full((2, 1000), float(N)), torch.full((2, 1000), rate), generator=generator) / N
        fired = sum(validity_fell(float(a), N, float(b), N) for a, b in zip(draws[0], draws[1]))
        assert fired / 1000 < 0.05, (rate, fired)
    assert not validity_fell(1.0, N, 1.0, N)


def test_the_report_marks_only_the_settings_that_fell():
    lines = [{"base valid": 0.9, "base n": N, "fine-tuned valid": 0.8, "fine-tuned n": N},
             {"base valid": 0.9, "base n": N, "fine-tuned valid": 0.89, "fine-tuned n": N}]
    assert mark_harm(lines) == [lines[0]] and lines[0]["harm"] == "FELL" and "harm" not in lines[1]
