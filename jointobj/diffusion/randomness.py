"""Random draws, all made the same way: on the generator's own device, then moved where they are used.

    u = uniform((b, l), generator, device)                 # [b, l] float64 in [0, 1)
    tokens, log_q = gumbel_max(logits, temperature, generator)
    pick = multinomial(probabilities, 1, generator)        # [b, 1]

A CUDA generator draws on the GPU and a CPU one on the CPU, so one seed gives one stream wherever
the model runs (torch refuses a generator of another device). Without a generator the global
stream is used, on `device`.
"""

from __future__ import annotations

import torch

__all__ = ["draw_device", "gumbel_max", "gumbel_noise", "multinomial", "uniform"]


def draw_device(generator: torch.Generator | None, device: torch.device | str) -> torch.device | str:
    """Where a draw from `generator` is made: its own device, else `device`."""
    return generator.device if generator is not None else device


def uniform(shape: tuple[int, ...] | torch.Size | int, generator: torch.Generator | None, device: torch.device | str,
            dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """U[0, 1) draws of `shape` from `generator`, made on its device, then moved to `device`."""
    return torch.rand(shape, generator=generator, dtype=dtype, device=draw_device(generator, device)).to(device)


def multinomial(probabilities: torch.Tensor, num_samples: int, generator: torch.Generator | None,
                replacement: bool = False) -> torch.Tensor:
    """torch.multinomial over the rows of `probabilities` [..., n], drawn on the generator's device:
    [..., num_samples] long, on the device of `probabilities`."""
    source = draw_device(generator, probabilities.device)
    drawn = torch.multinomial(probabilities.to(source), num_samples, replacement=replacement, generator=generator)
    return drawn.to(probabilities.device)


def gumbel_noise(shape: tuple[int, ...] | torch.Size, generator: torch.Generator | None,
                 device: torch.device | str) -> torch.Tensor:
    """Standard Gumbel draws -log(-log u), float64. In float32 u cannot come closer to 1 than
    2^-24, which caps the noise at ~16.6 (float64: ~36.7) and truncates the tail a rare token
    needs to win (a known LLaDA sampler bug). u = 0 is clamped to the smallest positive number."""
    u = uniform(shape, generator, device).clamp_(min=torch.finfo(torch.float64).tiny)
    return -(-u.log()).log()


def gumbel_max(logits: torch.Tensor, temperature: float,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, V] logits -> (tokens [n] long, log q(token) [n] float64) for q = softmax(logits / T),
    drawn as argmax(log q + Gumbel noise) with float64 noise (`gumbel_noise`).
    T = 0 is argmax, with log q = 0 (the choice is deterministic).
    """
    if temperature == 0:
        return logits.argmax(-1), torch.zeros(logits.shape[0], dtype=torch.float64, device=logits.device)
    log_q = (logits.double() / temperature).log_softmax(-1)  # [n, V]
    tokens = (log_q + gumbel_noise(logits.shape, generator, logits.device)).argmax(-1)  # [n]
    return tokens, log_q.gather(1, tokens[:, None]).squeeze(1)
