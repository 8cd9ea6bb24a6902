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

from jointobj.decoding.decoder_law import DecoderOrder, decoder_blocks, decoder_log_likelihood
from jointobj.decoding.sampler import EXCLUDED_LOGIT
from jointobj.diffusion.batch import answer_batch

MAX_SUPPORT = 5000  # explain_fall scores a set's support only up to this many answers per prompt


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


@torch.no_grad()
def first_step(denoiser, toyset, decoder: "str | DecoderOrder") -> tuple[list[int], float]:
    """The answer positions the decoder commits at its first step on the set's first prompt, and the policy's
    score of the last position it takes minus that of the best position it leaves (its margin: a few
    thousandths is a near-tie, a decision a small change of the model can flip)."""
    order = DecoderOrder.parse(decoder)
    batch = answer_batch(toyset.prompts[:1], toyset.answers[0][:1])
    batch = {name: value.to(denoiser.device) for name, value in batch.items()}
    scorable = ~batch["prompt_mask"]
    block, _ = decoder_blocks(denoiser, batch, scorable, order)  # [1, l]
    first = (block[0][scorable[0]] == 0).nonzero().flatten()  # answer columns of step 0
    state = batch["input_ids"].masked_fill(scorable, denoiser.mask_token_id)
    logits = denoiser(input_ids=state)[:, scorable[0]].float()  # [1, n, V]
    logits[..., denoiser.mask_token_id] = EXCLUDED_LOGIT
    scores = order.policy.for_denoiser(denoiser).scores(logits, None)[0].double()  # [n]
    taken = torch.zeros_like(scores, dtype=torch.bool)
    taken[first] = True
    margin = float(scores[taken].min() - scores[~taken].max()) if (~taken).any() else float("inf")
    return first.tolist(), margin


def explain_fall(base, tuned, toyset, decoder: "str | DecoderOrder") -> str | None:
    """For a setting whose sampled validity fell from `base` to `tuned`: both models' exact support mass
    under the decoder and, on a set with one prompt, whether its first step moved (a flipped near-tie
    rather than a worse model; eval/exact_validity.py --first-cells then compares every first position).
    None where the set's support is too large to score (MAX_SUPPORT)."""
    if max(len(answers) for answers in toyset.answers) > MAX_SUPPORT:
        return None
    spec = str(DecoderOrder.parse(decoder))
    (before,), (after,) = support_mass(base, toyset, [spec]), support_mass(tuned, toyset, [spec])
    note = f"exact {before['mass']:.3f} -> {after['mass']:.3f}"
    if len(toyset.prompts) == 1:
        (was, margin), (now, _) = first_step(base, toyset, spec), first_step(tuned, toyset, spec)
        if was != now:
            note += (f"; the first step moved from positions {was} to {now} (the base chose by {margin:.4f}): a "
                     "near-tie flipped, compare every first position with eval/exact_validity.py --first-cells")
    return note
