"""Peak memory of the speculative decoder at a big vocabulary, against the model's own forward.

    python eval/bench_speculative_memory.py --json runs/bench_speculative_memory.json

LLaDA's vocabulary (126,464 tokens) on a model with a small hidden size, so the logits dominate:
`batch` prompts, an answer of `gen_length` tokens in semi-autoregressive blocks of `block_length`,
one draft of the rest of the block (w = block_length). The largest forward a round runs holds
batch * w verification rows; the bare row is that forward alone (the model's own logits, in its
dtype), the decoder row a whole speculative decode (every round, its drafts, the kept logits).
The ratio decoder / bare is what jointobj adds on top of the model's own logits: the decoder keeps
float32 logits only for the positions a round can read (w + 1 per row), not for all L.

Peak memory: CUDA's peak allocated bytes, or on a Linux CPU the largest resident set during the
run less what the process held before it (jointobj.evaluation.benchmark.peak_bytes). Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse

import torch

from jointobj import Denoiser
from jointobj.decoding import build_decoder
from jointobj.evaluation.benchmark import peak_bytes, write_measurements
from jointobj.evaluation.report import format_table
from jointobj.model.tiny import tiny_masked_lm


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=126_464)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--prompt", type=int, default=8, help="prompt tokens")
    parser.add_argument("--gen_length", type=int, default=64)
    parser.add_argument("--block_length", type=int, default=16, help="the draft window w (one draft per block)")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--architecture", default="bert", help="tiny_masked_lm architecture (bert: logits as LLaDA's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="runs/bench_speculative_memory.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    length = args.prompt + args.gen_length
    model = tiny_masked_lm(args.architecture, vocab_size=args.vocab, hidden_size=args.hidden, num_layers=1,
                           max_positions=length, seed=args.seed)
    denoiser = Denoiser(model.to(device).eval(), mask_token_id=args.vocab - 1)
    generator = torch.Generator(device).manual_seed(args.seed)
    prompts = torch.randint(1, args.vocab - 1, (args.batch, args.prompt), generator=generator, device=device)
    rows = torch.full((args.batch * args.block_length, length), args.vocab - 1, device=device)
    rows[:, : args.prompt] = prompts.repeat_interleave(args.block_length, 0)
    decoder = build_decoder("speculative", None, block_length=args.block_length)

    def bare() -> None:
        with torch.no_grad():
            model(input_ids=rows)

    def speculative() -> None:
        decoder.sample(denoiser, prompts, args.gen_length, torch.Generator(device).manual_seed(args.seed))

    bare()  # warm-up: allocator and kernels
    measured = {"bare forward (batch x w rows)": peak_bytes(bare), "speculative decode": peak_bytes(speculative)}
    reference = measured["bare forward (batch x w rows)"]
    table = [{"run": name, "peak MiB": round(value / 2**20, 1), "vs bare": round(value / reference, 2)}
             for name, value in measured.items()]
    print(format_table(table, ["run", "peak MiB", "vs bare"]))
    write_measurements(args.json, table, config=vars(args))
    return table


if __name__ == "__main__":
    main()
