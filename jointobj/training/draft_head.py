"""Train a draft head on a frozen denoiser: distil its own sequential law (jointobj/objectives/draft_distillation.py).

    head = attach_draft_head(denoiser, width=64, layers=2)
    report = train_draft_head(denoiser, prompts, steps=300, samples=1000, seed=0)
    denoiser.save_pretrained("runs/with_head")          # the head is saved beside the model or adapter

The answers are the model's own samples of its one-token-per-step law in the verification order
(drawn with the exact speculative decoder, marginal drafts), so the head learns the law the
verifier checks, where the model puts its mass. The denoiser is frozen: its L teacher rows per
answer are computed once (no grad; [samples, L, V], each row read at its own column) and the head is
trained on them for `steps` Adam steps, each on `batch` answers with one uniform cut each, whose
proposal rows (one forward row per answer, [batch, L, V]) are computed in the step: every row at
every column for the whole pool ([samples, L, L, V]) is never held. Seeded (`seed`: samples, cuts, batches); a short
loop with no checkpoints (a few minutes on a CPU for the toy sets), the no-DeepSpeed convenience.
The samples, the targets, the cuts and the loss are jointobj/objectives/draft_distillation.py's,
which the Trainer path uses too (objective `draft_distillation`, recipes/draft_head.py: DeepSpeed,
checkpoints, resume, answers drawn fresh each step, optionally the adapter trained jointly).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from jointobj.model.draft_head import find_draft_head
from jointobj.objectives.draft_distillation import (
    distillation_targets,
    draft_loss,
    own_samples,
    uniform_cuts,
    with_proposals,
)

__all__ = ["train_draft_head"]


def train_draft_head(denoiser: Any, prompts: torch.Tensor, gen_length: int, *, steps: int = 300,
                     samples: int = 1000, batch: int = 64, learning_rate: float = 3e-3, order: Any = "l2r",
                     seed: int = 0, answers: torch.Tensor | None = None, log_every: int = 0) -> dict[str, Any]:
    """Fit the denoiser's draft head (it must have one) to its sequential law in `order`.

    prompts [n, P] are cycled to `samples` rows; `answers` [samples, L] replaces the model's own samples
    (teacher-forced data). Returns {"history": [(step, kl_per_token, acceptance)], "seconds", ...}."""
    head = find_draft_head(denoiser)
    if head is None:
        raise ValueError("the denoiser has no draft head; attach one first "
                         "(jointobj.model.draft_head.attach_draft_head)")
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    rows = prompts[torch.arange(samples) % len(prompts)]  # [samples, P]
    if answers is None:
        answers = own_samples(denoiser, rows, gen_length, order, generator)
    targets = distillation_targets(denoiser, rows, answers, order, generator)
    sampled_s = time.perf_counter() - start
    parameters = [p for p in head.parameters()]
    for p in parameters:
        p.requires_grad_(True)
    optimiser = torch.optim.Adam(parameters, lr=learning_rate)
    history = []
    was_training = head.training
    head.train()
    for step in range(steps):
        index = torch.randint(0, len(targets), (batch,), generator=generator)
        cuts = uniform_cuts(batch, gen_length, generator, index.device)
        step_targets = with_proposals(denoiser, rows[index], targets.subset(index), cuts)  # the denoiser's mode,
        loss, metrics = draft_loss(head, step_targets)  # as for the teacher rows
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step == 0 or step == steps - 1 or (log_every and step % log_every == 0):
            history.append((step, metrics["kl_per_token"], metrics["acceptance"]))
            if log_every:
                print(f"step {step}: kl/token {metrics['kl_per_token']:.4f} acceptance {metrics['acceptance']:.4f}",
                      flush=True)
    head.train(was_training)
    head.trained_on = {"order": order if isinstance(order, str) else list(order), "samples": samples,
                       "steps": steps, "learning_rate": learning_rate, "seed": seed}
    return {"history": history, "seconds": time.perf_counter() - start, "targets_seconds": sampled_s,
            "targets": targets}
