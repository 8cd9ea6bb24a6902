"""Tiny ModernBERTs trained with the per-token loss on toy sets, for tests (cached per configuration,
so every test of a session shares one training run).

A plain loop on purpose (the Trainer path has its own tests): AdamW, warm-up then linear decay to
zero, batches indexed from a table `DiffusionCollator` built once. On likes_tennis 600 steps leave
the all-masked marginals within a few hundredths of the truth and the conditionals wrong about once
in 1000 (the tests that use it say how close they need them).
"""

import functools

import datasets
import torch
from transformers import get_linear_schedule_with_warmup

from jointobj import Denoiser, DiffusionCollator, TokenCELoss
from jointobj.model.tiny import tiny_masked_lm
from jointobj.toysets.builtin import load_toyset, toy_tokenizer


@functools.cache
def train_token_ce(names: str | tuple[str, ...], steps: int = 600, batch_size: int = 128, lr: float = 1e-2,
                   seed: int = 0) -> Denoiser:
    """A tiny ModernBERT (hidden 64) trained with TokenCELoss on the named toy set(s), in eval mode."""
    names = (names,) if isinstance(names, str) else names
    tokenizer, toysets = toy_tokenizer(), [load_toyset(name) for name in names]
    data = datasets.concatenate_datasets([t.dataset(4096, seed=seed) for t in toysets])
    table = DiffusionCollator(tokenizer.pad_token_id)(data)  # {input_ids, attention_mask, prompt_mask} [N, l]
    model = tiny_masked_lm("modernbert", vocab_size=len(tokenizer), hidden_size=64,
                           max_positions=max(8, max(t.length for t in toysets)), seed=seed)
    denoiser = Denoiser(model, tokenizer=tokenizer)
    optimizer = torch.optim.AdamW(denoiser.parameters(), lr=lr, weight_decay=0.0)
    schedule = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=max(1, steps // 10),
                                               num_training_steps=steps)
    loss_fn, generator = TokenCELoss(), torch.Generator().manual_seed(seed)
    for _ in range(steps):
        rows = torch.randint(0, len(data), (batch_size,), generator=generator)  # [batch]
        loss = loss_fn(denoiser, {k: v[rows] for k, v in table.items()}, generator=generator).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return denoiser.eval()
