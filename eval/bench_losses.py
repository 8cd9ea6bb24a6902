"""TokenCELoss forward+backward against a bare HF masked-LM step on the same tokens.

    python eval/bench_losses.py --json runs/bench_losses.json
    python eval/bench_losses.py --big_vocab --json runs/bench_losses_big_vocab.json

The bare step is what a user would write without jointobj: `model(input_ids, labels=...)` with
labels on the masked positions, then backward. The ratio is jointobj's overhead (timestep
sampling, corruption, ELBO weighting, float32 logits); the target is <= 1.05.

`--big_vocab`: LLaDA's vocabulary (126,464 tokens), batch 8, length 256, on a model with a small
hidden size: step time and peak memory of the bare step, TokenCE, and log-sum (exact, M = 4
orders, K = 8 blocks). Each step runs in a fresh process, its peak memory measured once (CUDA: peak
allocated bytes; Linux CPU: the largest resident set a sampling thread sees during the step,
less what the process held just before it). Target: TokenCE <= 1.1x the bare step's peak memory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

from jointobj import Denoiser, TokenCELoss
from jointobj.evaluation.benchmark import peak_bytes, time_interleaved, write_measurements
from jointobj.model.tiny import tiny_masked_lm

BIG_VOCAB_DEFAULTS = {"vocab": 126_464, "batch": 8, "length": 256, "hidden": 64, "layers": 1, "repeats": 2}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--big_vocab", action="store_true",
                        help="the big-vocabulary table, with peak memory and log-sum (defaults: "
                        + ", ".join(f"{k} {v}" for k, v in BIG_VOCAB_DEFAULTS.items()) + ")")
    parser.add_argument("--orders", type=int, default=4, help="--big_vocab: log-sum orders M")
    parser.add_argument("--blocks", type=int, default=8, help="--big_vocab: log-sum blocks K")
    parser.add_argument("--memory_of", default=None, help=argparse.SUPPRESS)  # internal: one step's peak, in a child
    parser.add_argument("--json", default="runs/bench_losses.json")
    if argv is not None and "--big_vocab" in argv or argv is None and "--big_vocab" in sys.argv:
        parser.set_defaults(**BIG_VOCAB_DEFAULTS)
    return parser.parse_args(argv)


def build_steps(args: argparse.Namespace, with_logsum: bool) -> dict:
    """The steps to compare, each a function running one forward+backward on the same tokens."""
    model = tiny_masked_lm("modernbert", vocab_size=args.vocab, hidden_size=args.hidden, num_layers=args.layers,
                           num_heads=4, max_positions=args.length, seed=0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device)
    denoiser = Denoiser(model, mask_token_id=1)
    generator = torch.Generator().manual_seed(0)
    batch = {
        "input_ids": torch.randint(2, args.vocab, (args.batch, args.length), generator=generator),
        "attention_mask": torch.ones(args.batch, args.length, dtype=torch.long),
        "prompt_mask": torch.zeros(args.batch, args.length, dtype=torch.bool),
    }
    batch = {key: value.to(device) for key, value in batch.items()}
    loss_fn = TokenCELoss()
    noised = loss_fn.corrupt(batch, denoiser.mask_token_id, torch.Generator().manual_seed(0))
    labels = torch.where(noised.masked, batch["input_ids"], -100)  # [b, l] HF's ignore index off the masks

    def bare_step() -> None:
        model.zero_grad(set_to_none=True)
        model(input_ids=noised.input_ids, attention_mask=batch["attention_mask"], labels=labels).loss.backward()

    def token_ce_step() -> None:
        model.zero_grad(set_to_none=True)
        loss_fn(denoiser, batch, generator=generator).loss.backward()

    steps = {"bare_hf": bare_step, "token_ce": token_ce_step}
    if with_logsum:
        from jointobj.objectives.logsum import LogSumOrdersLoss

        orders = (["l2r", "r2l"] + ["random"] * args.orders)[: args.orders]
        logsum = LogSumOrdersLoss(orders, blocks=args.blocks, mode="exact")

        def logsum_step() -> None:
            model.zero_grad(set_to_none=True)
            logsum(denoiser, batch, generator=generator).loss.backward()

        steps[f"logsum_exact_M{args.orders}_K{args.blocks}"] = logsum_step
    return steps


def measure_in_child(step: str, argv: list[str]) -> dict:
    """A step's median seconds and peak memory, measured in a fresh process (see `measure_step`)."""
    command = [sys.executable, __file__, *argv, "--memory_of", step]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def measure_step(args: argparse.Namespace) -> dict:
    """In the child: one warm-up run (none for log-sum: minutes a run here), then peak memory and
    time of one run, then `repeats - 1` more timed runs."""
    run = build_steps(args, with_logsum=True)[args.memory_of]
    if not args.memory_of.startswith("logsum"):
        run()
    start = time.perf_counter()
    peak = peak_bytes(run)
    seconds = [time.perf_counter() - start]
    for _ in range(args.repeats - 1 if not args.memory_of.startswith("logsum") else 0):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    return {"peak_bytes": peak, "median_s": statistics.median(seconds), "runs": len(seconds)}


def big_vocab_table(args: argparse.Namespace, argv: list[str]) -> list[dict]:
    rows = []
    for name in ("bare_hf", "token_ce", f"logsum_exact_M{args.orders}_K{args.blocks}"):
        measured = measure_in_child(name, argv)
        rows.append({"step": name, "vocab": args.vocab, "batch": args.batch, "length": args.length,
                     "hidden": args.hidden, **measured})
    for row in rows:
        row["time_ratio"] = row["median_s"] / rows[0]["median_s"]
        row["memory_ratio"] = row["peak_bytes"] / max(1, rows[0]["peak_bytes"])
    print(f"{'step':<22} {'median s':>9} {'ratio':>6} {'peak MiB':>9} {'ratio':>6}   "
          f"(vocab {args.vocab}, batch {args.batch}, length {args.length}, hidden {args.hidden}, "
          f"{args.layers} layer(s), ModernBERT)")
    for row in rows:
        print(f"{row['step']:<22} {row['median_s']:>9.2f} {row['time_ratio']:>6.2f} "
              f"{row['peak_bytes'] / 2**20:>9.0f} {row['memory_ratio']:>6.2f}")
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    given = list(sys.argv[1:] if argv is None else argv)
    if args.memory_of is not None:  # the child of measure_in_child
        print(json.dumps(measure_step(args)))
        return []
    if args.big_vocab:
        rows = big_vocab_table(args, given)
        write_measurements(args.json, rows, config=vars(args))
        print(f"wrote {args.json}")
        return rows
    steps = build_steps(args, with_logsum=False)
    seconds = time_interleaved(steps, repeats=args.repeats)
    rows = [
        {"step": name, "batch": args.batch, "length": args.length, "median_s": s,
         "ratio_to_bare": s / seconds["bare_hf"]}
        for name, s in seconds.items()
    ]
    print(f"{'step':<10} {'median ms':>10} {'ratio':>7}   (batch {args.batch}, length {args.length}, tiny ModernBERT)")
    for row in rows:
        print(f"{row['step']:<10} {1000 * row['median_s']:>10.2f} {row['ratio_to_bare']:>7.3f}")
    write_measurements(args.json, rows, config=vars(args))
    print(f"wrote {args.json}")
    return rows


if __name__ == "__main__":
    main()
