"""NLL of a toy set's examples under each generation-order family, against the set's true entropy.

Scores each answer under one l2r, one r2l and one random order with one position per block
(K = n: the exact any-order autoregressive likelihood, jointobj.diffusion.likelihood). `logsum` is
-log of the uniform mixture of the three (LogSumOrdersLoss's objective). The reference is the
set's conditional entropy H(answer | prompt): a model that matches the data under an order
reaches it; the gap is the KL from the data to the model under that order (up to sampling error).

`decoders` adds one row per decoder at its budget ("confidence:steps=2"): -log P_decoder(answer), the
decoder's exact law (jointobj/decoding/decoder_law.py, softmax without [MASK] as it samples). Its gap
to H is the KL from the data to what that decoder outputs.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from jointobj.decoding.decoder_law import decoder_log_likelihood
from jointobj.diffusion.batch import answer_batch
from jointobj.diffusion.likelihood import order_log_likelihood
from jointobj.diffusion.orders import OrderProposal
from jointobj.objectives.logsum import logsum_nll

FAMILIES = ("l2r", "r2l", "random")


def order_nll(denoiser, toyset, samples: int, seed: int = 0, max_rows: int = 256,
              decoders: Sequence[str] = ()) -> list[dict]:
    """Mean NLL (nats per sequence) and its standard error per order family (and per decoder of
    `decoders`), for `samples` draws of `toyset`."""
    generator = torch.Generator().manual_seed(seed)
    prompts, answers = toyset.sample(samples, generator)  # [n, lp], [n, la]
    batch = answer_batch(prompts.to(denoiser.device), answers.to(denoiser.device))  # [n, l]
    orders = OrderProposal(list(FAMILIES)).sample(batch["prompt_mask"].logical_not(), generator)
    with torch.no_grad():
        loglik = order_log_likelihood(denoiser, batch, orders, "all", max_rows=max_rows).double().cpu()  # [n, 3]
    nll = {name: -loglik[:, m] for m, name in enumerate(FAMILIES)}  # [n] each
    nll["logsum"] = logsum_nll(orders.log_weights.double().cpu(), loglik)  # [n]
    if decoders:
        with torch.no_grad():
            law = decoder_log_likelihood(denoiser, batch, list(decoders)).double().cpu()  # [n, D]
        nll.update({str(name): -law[:, d] for d, name in enumerate(decoders)})
    entropy = toyset.entropy()
    rows = []
    for name, values in nll.items():
        mean = float(values.mean())
        se = float(values.std()) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
        rows.append({"order": name, "nll_nats": mean, "se": se, "entropy_nats": entropy, "gap_nats": mean - entropy})
    return rows
