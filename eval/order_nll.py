"""NLL of a toy set's examples under each generation-order family, against the set's true entropy.

    python eval/order_nll.py --model DIR --toyset likes_tennis --json runs/order_nll.json --samples 256

Draws N examples (prompt, answer) from the toy set, scores each answer under one l2r, one
r2l and one random order with one position per block (K = n: the exact any-order
autoregressive likelihood, jointobj.diffusion.likelihood), and reports the mean NLL in nats per
sequence with its standard error. `logsum` is -log of the uniform mixture of those three
orders (LogSumOrdersLoss's objective). The reference is the set's conditional entropy
H(answer | prompt): a model that matches the data under an order reaches it; the gap is
the KL from the data to the model under that order (up to sampling error).
"""

from __future__ import annotations

import argparse

from jointobj import Denoiser
from jointobj.cli.progress import add_no_progress
from jointobj.evaluation.benchmark import write_measurements
from jointobj.evaluation.order_nll import order_nll
from jointobj.toysets.builtin import load_toyset


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a directory saved by Denoiser.save_pretrained")
    parser.add_argument("--toyset", required=True, help="a toy set name, e.g. likes_tennis, shuffle_3")
    parser.add_argument("--json", required=True, help="where to write the results")
    parser.add_argument("--samples", type=int, default=256, help="examples drawn from the toy set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-rows", type=int, default=256, help="rows per forward")
    parser.add_argument("--decoders", default="", help="comma-separated decoders at their budgets, e.g. "
                        "confidence:steps=2,l2r:steps=3: their exact NLL of the answers, one row each")
    parser.add_argument("--trust-remote-code", action="store_true")
    add_no_progress(parser)
    args = parser.parse_args(argv)
    if args.samples < 1:
        parser.error(f"--samples must be >= 1, got {args.samples}")

    denoiser = Denoiser.from_pretrained(args.model, trust_remote_code=args.trust_remote_code).eval()
    toyset = load_toyset(args.toyset)
    decoders = [name for name in args.decoders.split(",") if name.strip()]
    rows = order_nll(denoiser, toyset, args.samples, args.seed, args.max_rows, decoders=decoders)
    entropy = toyset.entropy()
    print(f"toy set {toyset.name}: {args.samples} samples, answer length {toyset.answer_length}, "
          f"H(answer | prompt) = {entropy:.4f} nats; model {args.model}")
    width = max(8, *(len(row["order"]) for row in rows))
    print(f"{'order':<{width}} {'NLL (nats/seq)':>15} {'± se':>8} {'gap to H':>9}")
    for row in rows:
        print(f"{row['order']:<{width}} {row['nll_nats']:>15.4f} {row['se']:>8.4f} {row['gap_nats']:>9.4f}")
    write_measurements(args.json, rows, model=str(args.model), toyset=toyset.name, samples=args.samples, seed=args.seed,
               blocks="all", entropy_nats=entropy)
    print(f"wrote {args.json}")
    return rows


if __name__ == "__main__":
    main()
