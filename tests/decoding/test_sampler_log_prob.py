"""SampleOutput.log_prob is the exact log q(answer) for deterministic policies: checked by frequency.

An answer fixes the whole trajectory of a deterministic policy, so every sample of one answer
carries the same log_prob, and answers appear at frequency exp(log_prob).
"""

import math

import pytest
import torch

from jointobj.decoding import build_decoder
from jointobj.toysets.builtin import load_toyset
from jointobj.toysets.oracle import OracleDenoiser

SAMPLES = 20000


@pytest.mark.slow  # 20,000 samples per case
@pytest.mark.parametrize("decoder", ["confidence", "margin", "entropy", "threshold", "l2r"])
@pytest.mark.parametrize("toyset_name", ["likes_tennis", "shuffle_3"])
def test_answers_appear_at_frequency_exp_log_prob(decoder, toyset_name):
    toyset = load_toyset(toyset_name)
    prompts, _ = toyset.sample(SAMPLES, torch.Generator().manual_seed(0))
    prompt = prompts[:1].expand(SAMPLES, -1)  # one prompt: frequencies are over answers only
    out = build_decoder(decoder, 2).sample(OracleDenoiser(toyset), prompt, toyset.answer_length,
                                           torch.Generator().manual_seed(1))
    answers, inverse, counts = torch.unique(out.gen_ids, dim=0, return_inverse=True, return_counts=True)
    total = 0.0
    for index, count in enumerate(counts.tolist()):
        log_probs = out.log_prob[inverse == index]
        assert torch.allclose(log_probs, log_probs[0]), "one answer, one trajectory, one log_prob"
        q = math.exp(float(log_probs[0]))
        total += q
        tolerance = 4.5 * math.sqrt(q * (1 - q) / SAMPLES) + 1e-9  # 4.5 binomial standard deviations
        assert abs(count / SAMPLES - q) <= tolerance, (answers[index].tolist(), count / SAMPLES, q)
    assert total <= 1 + 1e-6  # answers never drawn can only hold the rest of the mass
