"""train_draft_head (the simple loop): the teacher rows once over its pool, each step's proposal rows computed
in the step; its steps are the old loop's, which indexed every row at every column of the pool.

The reference replays the loop on the full rows (tests/draft_reference.py) with the same seeded draws
(samples, then per step the batch's answers and cuts) and the same Adam: the logged KL and acceptance
and the head's final weights must agree.
"""

import torch

from jointobj import Denoiser
from jointobj.model.draft_head import attach_draft_head, find_draft_head
from jointobj.model.tiny import tiny_masked_lm
from jointobj.objectives.draft_distillation import own_samples, uniform_cuts
from jointobj.training.draft_head import train_draft_head

from draft_reference import full_rows, old_loss

V, LENGTH, STEPS, BATCH, SAMPLES = 40, 5, 4, 8, 24


def _denoiser() -> Denoiser:
    denoiser = Denoiser(tiny_masked_lm("modernbert", vocab_size=V, max_positions=16, seed=0),
                        mask_token_id=V - 1).eval()
    torch.manual_seed(0)
    attach_draft_head(denoiser, vocab_size=V, max_positions=16, width=16, layers=1, heads=2)
    with torch.no_grad():  # a head far from the marginals: every step moves it
        find_draft_head(denoiser).out.weight.normal_(0, 1, generator=torch.Generator().manual_seed(1))
    return denoiser


def test_the_loops_steps_are_the_full_rows_steps():
    # Fails if a step's proposal rows come from other prompts or cuts than its answers', or the loop's
    # draws move (samples, batch, cuts), or the loss it steps on differs from the full rows' loss.
    prompts = torch.randint(0, V - 1, (6, 2), generator=torch.Generator().manual_seed(2))
    denoiser = _denoiser()
    report = train_draft_head(denoiser, prompts, LENGTH, steps=STEPS, samples=SAMPLES, batch=BATCH, seed=0,
                              log_every=1)
    trained = find_draft_head(denoiser)

    reference = _denoiser()
    head = find_draft_head(reference)
    generator = torch.Generator().manual_seed(0)
    rows = prompts[torch.arange(SAMPLES) % len(prompts)]
    answers = own_samples(reference, rows, LENGTH, "l2r", generator)
    order_tokens, perm, full = full_rows(reference, rows, answers, "l2r", generator)
    optimiser = torch.optim.Adam(list(head.parameters()), lr=3e-3)
    head.train()
    history = []
    for step in range(STEPS):
        index = torch.randint(0, SAMPLES, (BATCH,), generator=generator)
        cuts = uniform_cuts(BATCH, LENGTH, generator, "cpu")
        loss, metrics = old_loss(head, order_tokens[index], perm[index], full[index], cuts)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        history.append((step, metrics["kl_per_token"], metrics["acceptance"]))
    assert [h[0] for h in report["history"]] == list(range(STEPS))
    for got, expected in zip(report["history"], history):
        assert abs(got[1] - expected[1]) < 1e-5 and abs(got[2] - expected[2]) < 1e-6, (got, expected)
    for (name, got), expected in zip(trained.named_parameters(), head.parameters()):
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0, msg=name)
