"""Small builders shared by the tests: padded random batches, scripts loaded by path, saved tiny models,
a free port and a harness that runs a function on two gloo ranks."""

import datetime
import importlib.util
import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from jointobj import Denoiser
from jointobj.model.tiny import tiny_masked_lm
from jointobj.toysets.builtin import toy_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def padded_batch(lengths, prompt_lengths, vocab: int, pad: int = 0, pad_to: int | None = None, seed: int = 0) -> dict:
    """Random rows of the given lengths (ids in [2, vocab)), right-padded, the first prompt_lengths[i] the prompt."""
    pad_to = pad_to or max(lengths)
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.full((len(lengths), pad_to), pad)
    attention_mask = torch.zeros(len(lengths), pad_to, dtype=torch.long)
    prompt_mask = torch.zeros(len(lengths), pad_to, dtype=torch.bool)
    for row, (length, prompt) in enumerate(zip(lengths, prompt_lengths)):
        input_ids[row, :length] = torch.randint(2, vocab, (length,), generator=generator)
        attention_mask[row, :length] = 1
        prompt_mask[row, :prompt] = True
    return {"input_ids": input_ids, "attention_mask": attention_mask, "prompt_mask": prompt_mask}


def load_script(relative_path: str):
    """Import a script of the repository (eval/*.py, recipes/*.py) by path, as its own module."""
    path = ROOT / relative_path
    spec = importlib.util.spec_from_file_location(f"script_{path.parent.name}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def save_tiny_toy_model(directory: Path, max_positions: int = 32, seed: int = 0) -> Path:
    """An untrained tiny ModernBERT over the toy vocabulary, saved as a Denoiser directory."""
    tokenizer = toy_tokenizer()
    model = tiny_masked_lm("modernbert", vocab_size=len(tokenizer), max_positions=max_positions, seed=seed)
    Denoiser(model, tokenizer=tokenizer).save_pretrained(directory)
    return directory


def free_port() -> int:
    """A TCP port nobody listens on right now, for a process group's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def on_gloo_ranks(worker, out_dir: Path, *args, world: int = 2) -> list:
    """Run `worker(rank, *args)` in `world` spawned processes joined in a gloo group (one thread
    each); returns what each rank's worker returned (saved with torch.save in `out_dir`), by rank.

    `worker` must be a module-level function, so the spawned processes can import it."""
    mp.spawn(_gloo_rank, args=(world, free_port(), str(out_dir), worker, args), nprocs=world, join=True)
    return [torch.load(Path(out_dir) / f"rank{rank}.pt") for rank in range(world)]


def _gloo_rank(rank: int, world: int, port: int, out_dir: str, worker, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        torch.save(worker(rank, *args), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
