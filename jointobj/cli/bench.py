"""`jointobj bench`: sampler throughput and overhead on a tiny ModernBERT: how much of a step is not the forward.

    jointobj bench --json out/bench_sampler.json

For each batch size and decoder: samples per second, sequential steps, the forward's time
per step and the sampler's own time per step (policy, Gumbel draws, bookkeeping), and the
fraction of the run spent outside the denoiser forward (target: <= 10% at batch 256).
Forward time is measured by wrapping the denoiser (`jointobj.evaluation.metrics.TimedDenoiser`);
each configuration runs `--repeats` times after a warm-up, and the fastest run is kept
(the least disturbed by other processes). One intra-op thread by default: on a shared
machine it gives stable ratios; with more threads the forward speeds up more than the
sampler's small ops do, so the outside-forward fraction grows (pass --threads to see it).
Prints a table and writes the JSON.
"""

from __future__ import annotations

import argparse
import time

import torch

from jointobj.cli.progress import add_no_progress
from jointobj.decoding.budget import parse_tokens_per_step
from jointobj.decoding.registry import build_decoder
from jointobj.evaluation.metrics import TimedDenoiser
from jointobj.evaluation.report import format_table, write_json
from jointobj.model.denoiser import Denoiser
from jointobj.model.tiny import tiny_masked_lm

COLUMNS = ["batch", "decoder", "tokens_per_step", "steps", "samples_per_s", "forward_ms_per_step",
           "sampler_ms_per_step", "outside_forward_fraction"]


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="jointobj bench", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--batches", type=_ints, default=[1, 16, 256])
    parser.add_argument("--decoder", default="confidence,random,threshold", type=lambda s: s.split(","))
    parser.add_argument("--tokens-per-step", default="1", help="K (>= 1) or 'all'")
    parser.add_argument("--gen-length", type=int, default=32)
    parser.add_argument("--prompt-length", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="bench_sampler.json", metavar="FILE")
    add_no_progress(parser)
    return parser.parse_args(argv)


def bench_one(denoiser: TimedDenoiser, decoder, prompts: torch.Tensor, gen_length: int, repeats: int,
              seed: int) -> dict:
    decoder.sample(denoiser, prompts, gen_length, torch.Generator().manual_seed(seed))  # warm-up
    best = None
    for _ in range(repeats):
        denoiser.reset()
        start = time.perf_counter()
        out = decoder.sample(denoiser, prompts, gen_length, torch.Generator().manual_seed(seed))
        wall = time.perf_counter() - start
        if best is None or wall < best[0]:
            best = (wall, denoiser.seconds, out.steps, out.tokens_per_step)
    wall, forward, steps, tokens_per_step = best
    return {
        "batch": len(prompts),
        "decoder": decoder.name,
        "tokens_per_step": tokens_per_step,
        "steps": steps,
        "samples_per_s": len(prompts) / wall,
        "forward_ms_per_step": 1000 * forward / steps,
        "sampler_ms_per_step": 1000 * (wall - forward) / steps,
        "outside_forward_fraction": (wall - forward) / wall,
        "wall_s": wall,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model = tiny_masked_lm("modernbert", vocab_size=args.vocab_size, max_positions=args.prompt_length + args.gen_length,
                           seed=args.seed)
    denoiser = TimedDenoiser(Denoiser(model, mask_token_id=1).eval())
    k = parse_tokens_per_step(args.tokens_per_step)
    rows = []
    for batch in args.batches:
        generator = torch.Generator().manual_seed(args.seed)
        prompts = torch.randint(2, args.vocab_size, (batch, args.prompt_length), generator=generator)  # [b, lp]
        for name in args.decoder:
            rows.append(bench_one(denoiser, build_decoder(name, k), prompts, args.gen_length, args.repeats, args.seed))
    rows = [{**r, "gen_length": args.gen_length, "threads": args.threads} for r in rows]
    print(format_table(rows, COLUMNS))
    write_json(args.json, rows)
    return rows

