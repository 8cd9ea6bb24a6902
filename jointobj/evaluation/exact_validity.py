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
from jointobj.diffusion.batch import answer_batch

MAX_SUPPORT = 5000  # explain_fall scores a set's support only up to this many answers per prompt


def support_batch(toyset, prompt: int, device: torch.device, rows: int | None = None) -> dict[str, torch.Tensor]:
    """Prompt `prompt` of the set with each answer of its support (the first `rows` of them), one per row, on
    `device`: the batch the decoder's law is scored on."""
    answers = toyset.answers[prompt][:rows]  # [S, la]
    batch = answer_batch(toyset.prompts[prompt].expand(len(answers), -1), answers)
    return {name: value.to(device) for name, value in batch.items()}


@torch.no_grad()
def support_mass(denoiser, toyset, decoders: Sequence[str], max_rows: int | None = 1024) -> list[dict]:
    """One row per decoder: `mass` (above) and `nll_nats`, the decoder's NLL of the set's answers weighted by
    the set's own probabilities (its exact cross-entropy, nats per answer)."""
    mass, nll = torch.zeros(len(decoders), dtype=torch.float64), torch.zeros(len(decoders), dtype=torch.float64)
    for p, prompt_prob in enumerate(toyset.prompt_probs.tolist()):
        batch, probs = support_batch(toyset, p, denoiser.device), toyset.answer_probs[p]  # [S, l], [S]
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
    policy = order.policy.for_denoiser(denoiser)
    first: dict[str, torch.Tensor] = {}

    def choose(logits, eligible, quota, live):  # the decoder's own step; the first one's scores kept
        chosen = policy.select(logits, eligible, quota)  # [a, n]
        if not first:
            first["scores"], first["taken"] = policy.scores(logits, None)[0].double(), chosen[0]  # [n], [n]
        return chosen

    batch = support_batch(toyset, 0, denoiser.device, rows=1)
    decoder_blocks(denoiser, batch, ~batch["prompt_mask"], order, choose=choose)
    scores, taken = first["scores"], first["taken"]
    margin = float(scores[taken].min() - scores[~taken].max()) if (~taken).any() else float("inf")
    return taken.nonzero().flatten().tolist(), margin


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
