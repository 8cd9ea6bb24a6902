"""Train an order head on a frozen denoiser: the score-function gradient of the decoder law's likelihood
(jointobj/objectives/order_gradient.py).

    head = attach_order_head(denoiser, max_length=toyset.answer_length)
    report = train_order_head(denoiser, prompts, answers, "learned:steps=3", steps=150, seed=0)
    denoiser.save_pretrained("runs/with_order_head")        # the head is saved beside the model or adapter

Each step draws `batch` (prompt, answer) pairs of the data, `samples` Plackett-Luce orders per answer
over the head's scores at the decoder's budget, and takes one Adam step on the leave-one-out REINFORCE
estimate. The decoder then commits by the head's ranking (`learned`). Seeded; a short loop, not a
Trainer recipe (the denoiser is frozen; to fine-tune it for the learned order afterwards, train the
decoder-order likelihood with "learned:steps=3" in its orders: the head is found on the model).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from jointobj.diffusion.batch import answer_batch
from jointobj.model.order_head import find_order_head
from jointobj.objectives.order_gradient import draw_orders

__all__ = ["train_order_head"]


def train_order_head(denoiser: Any, prompts: torch.Tensor, answers: torch.Tensor, order: Any = "learned:steps=2", *,
                     steps: int = 150, batch: int = 32, samples: int = 8, learning_rate: float = 1e-2,
                     seed: int = 0, seconds: float | None = None) -> dict[str, Any]:
    """Fit the denoiser's order head (it must have one) so the `learned` decoder at `order`'s budget gives
    the data [n, lp] / [n, la] a higher decoder-law likelihood. Stops after `steps`, or `seconds` of wall
    clock when given. Returns {"history": [(step, mean reward nats)], "steps", "seconds"}."""
    head = find_order_head(denoiser)
    if head is None:
        raise ValueError("the denoiser has no order head; attach one first "
                         "(jointobj.model.order_head.attach_order_head)")
    generator = torch.Generator().manual_seed(seed)
    device = getattr(denoiser, "device", torch.device("cpu"))
    parameters = list(head.parameters())
    for p in parameters:
        p.requires_grad_(True)
    optimiser = torch.optim.Adam(parameters, lr=learning_rate)
    history, start, step = [], time.perf_counter(), 0
    while step < steps and (seconds is None or time.perf_counter() - start < seconds):
        index = torch.randint(0, len(answers), (batch,), generator=generator)
        data = answer_batch(prompts[index], answers[index])
        rollout = draw_orders(denoiser, {k: v.to(device) for k, v in data.items()}, head, order, samples=samples,
                              generator=generator)
        optimiser.zero_grad()
        rollout.loss().backward()
        optimiser.step()
        history.append((step, float(rollout.reward.mean())))
        step += 1
    return {"history": history, "steps": step, "seconds": round(time.perf_counter() - start, 1)}
