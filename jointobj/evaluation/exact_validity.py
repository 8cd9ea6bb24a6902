"""The mass a decoder puts on a toy set's support, computed from its exact law instead of sampled:

    mass = sum_p P(p) sum_{a in support(p)} P_decoder(a | p)

P_decoder is the decoder's own law at its budget (jointobj/decoding/decoder_law.py: exact for the
state-determined policies -- confidence, margin, entropy, threshold, planned, l2r -- whose position
choices depend only on the visible tokens). Every answer of the support is valid, so the mass is a
lower bound of the decoder's validity, and equal to it where the support is every valid answer (latin
squares, shuffles). It has no sampling error: two models' figures differ only where the models do,
which the 2-standard-error mark of a sampled comparison cannot tell from a near-tie the decoder breaks
differently (see the README's "Do no harm").
"""

from __future__ import annotations

from typing import Sequence

import torch

from jointobj.decoding.decoder_law import decoder_log_likelihood
from jointobj.diffusion.batch import answer_batch


@torch.no_grad()
def support_mass(denoiser, toyset, decoders: Sequence[str], max_rows: int | None = 1024) -> list[dict]:
    """One row per decoder: `mass` (above) and `nll_nats`, the decoder's NLL of the set's answers weighted by
    the set's own probabilities (its exact cross-entropy, nats per answer)."""
    mass, nll = torch.zeros(len(decoders), dtype=torch.float64), torch.zeros(len(decoders), dtype=torch.float64)
    for p, prompt_prob in enumerate(toyset.prompt_probs.tolist()):
        answers, probs = toyset.answers[p], toyset.answer_probs[p]  # [S, la], [S]
        batch = answer_batch(toyset.prompts[p].expand(len(answers), -1), answers)
        batch = {name: value.to(denoiser.device) for name, value in batch.items()}
        loglik = decoder_log_likelihood(denoiser, batch, list(decoders), max_rows=max_rows).double().cpu()  # [S, D]
        mass += prompt_prob * loglik.exp().sum(0)
        nll -= prompt_prob * (probs.double()[:, None] * loglik).sum(0)
    return [{"decoder": str(name), "mass": float(m), "nll_nats": float(n)} for name, m, n in zip(decoders, mass, nll)]
