"""Step time and peak activation memory: TokenCE vs log-sum over orders (exact, sampled).

    python eval/bench_logsum.py --json runs/bench_logsum.json

Tiny ModernBERT, batch 8, length 32 (no prompt, so K = "all" is 32 blocks), M in {1, 2, 4, 8},
K in {4, 8, all}, chunks of --max-rows rows. Orders: l2r, r2l, then random ones (M = 1: l2r).

- time: median wall seconds of forward + backward, candidates interleaved (jointobj.evaluation.benchmark).
- reference: what sampled mode should cost: b*M*K no-grad rows plus b*K rows forward-backward,
  as bare denoiser calls in the same chunks. Target: sampled / reference <= 1.3.
- peak: on CUDA, max_memory_allocated above the step's start. On CPU torch keeps no allocator
  statistics, so a TorchDispatchMode ledger (jointobj.evaluation.benchmark.tensor_peak_bytes) counts
  the bytes of every tensor storage created inside the step and alive at the same moment
  (activations, logits, gradients; not the weights nor the batch). Target: exact-mode peak at
  M = 8 within 1.1x of M = 1 for every K.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from jointobj import Denoiser, TokenCELoss
from jointobj.evaluation.benchmark import cuda_peak_bytes, tensor_peak_bytes, time_interleaved, write_measurements
from jointobj.model.tiny import tiny_masked_lm
from jointobj.objectives import LogSumOrdersLoss


def peak_bytes(step, device: torch.device) -> int:
    return cuda_peak_bytes(step) if device.type == "cuda" else tensor_peak_bytes(step)


def order_families(num_orders: int) -> list[str]:
    return (["l2r", "r2l"] + ["random"] * num_orders)[:num_orders]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--orders", type=int, nargs="+", default=[1, 2, 4, 8], help="values of M")
    parser.add_argument("--blocks", nargs="+", default=["4", "8", "all"], help="values of K (int or 'all')")
    parser.add_argument("--max-rows", type=int, default=32, help="rows per forward chunk")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads; 1 keeps ratios stable on a shared machine (spinning threads under load "
                             "distort them)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default="runs/bench_logsum.json")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = tiny_masked_lm("modernbert", vocab_size=args.vocab, hidden_size=args.hidden, num_layers=args.layers,
                           num_heads=4, max_positions=args.length, seed=0)
    denoiser = Denoiser(model, mask_token_id=1).to(device)
    generator = torch.Generator().manual_seed(0)
    b, length = args.batch, args.length
    batch = {
        "input_ids": torch.randint(2, args.vocab, (b, length), generator=generator).to(device),
        "attention_mask": torch.ones(b, length, dtype=torch.long, device=device),
        "prompt_mask": torch.zeros(b, length, dtype=torch.bool, device=device),
    }
    noisy = torch.randint(1, args.vocab, (args.max_rows, length), generator=generator).to(device)  # reference rows
    ones = torch.ones_like(noisy)

    def step(loss_fn):
        def run() -> None:
            denoiser.zero_grad(set_to_none=True)
            loss_fn(denoiser, batch, generator=generator).loss.backward()
        return run

    def chunks(rows: int) -> list[int]:
        return [min(args.max_rows, rows - start) for start in range(0, rows, args.max_rows)]

    def reference(num_orders: int, k: int):
        def run() -> None:
            denoiser.zero_grad(set_to_none=True)
            with torch.no_grad():
                for r in chunks(b * num_orders * k):
                    denoiser(input_ids=noisy[:r], attention_mask=ones[:r])
            total = sum(F.cross_entropy(denoiser(input_ids=noisy[:r], attention_mask=ones[:r]).flatten(0, 1),
                                        noisy[:r].flatten())
                        for r in chunks(b * k))
            total.backward()
        return run

    token_ce = step(TokenCELoss())
    token_ce_peak = peak_bytes(token_ce, device)
    rows = []
    header = (f"{'M':>2} {'K':>4} | {'token_ce':>8} {'exact':>8} {'sampled':>8} {'ref':>8} {'samp/ref':>8} | "
              f"{'peak MB: token_ce':>17} {'exact':>7} {'sampled':>7}")
    print(f"batch {b}, length {length}, hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}, "
          f"max_rows {args.max_rows}, device {device}, {args.threads} threads; times in ms (median of {args.repeats})")
    print(header)
    for blocks in args.blocks:
        k_arg = blocks if blocks == "all" else int(blocks)
        k = length if blocks == "all" else int(blocks)
        for num_orders in args.orders:
            common = dict(orders=order_families(num_orders), blocks=k_arg, max_rows=args.max_rows)
            exact = step(LogSumOrdersLoss(mode="exact", **common))
            sampled = step(LogSumOrdersLoss(mode="sampled", **common))
            seconds = time_interleaved({"token_ce": token_ce, "exact": exact, "sampled": sampled,
                                        "reference": reference(num_orders, k)}, repeats=args.repeats, warmup=1)
            row = {"M": num_orders, "K": blocks, **{f"{n}_s": s for n, s in seconds.items()},
                   "sampled_over_reference": seconds["sampled"] / seconds["reference"],
                   "token_ce_peak_bytes": token_ce_peak, "exact_peak_bytes": peak_bytes(exact, device),
                   "sampled_peak_bytes": peak_bytes(sampled, device)}
            rows.append(row)
            ms = {n: 1000 * s for n, s in seconds.items()}
            print(f"{num_orders:>2} {blocks:>4} | {ms['token_ce']:>8.1f} {ms['exact']:>8.1f} {ms['sampled']:>8.1f} "
                  f"{ms['reference']:>8.1f} {row['sampled_over_reference']:>8.2f} | {token_ce_peak / 1e6:>17.2f} "
                  f"{row['exact_peak_bytes'] / 1e6:>7.2f} {row['sampled_peak_bytes'] / 1e6:>7.2f}")
    summary = {}
    for blocks in args.blocks:
        by_m = {r["M"]: r for r in rows if r["K"] == blocks}
        low, high = min(by_m), max(by_m)
        ratio = by_m[high]["exact_peak_bytes"] / by_m[low]["exact_peak_bytes"]
        summary[f"exact_peak_M{high}_over_M{low}_K{blocks}"] = ratio
    summary["worst_sampled_over_reference"] = max(r["sampled_over_reference"] for r in rows)
    for name, value in summary.items():
        print(f"{name}: {value:.3f}")
    write_measurements(args.json, rows, config=vars(args), summary=summary)
    print(f"wrote {args.json}")
    return rows


if __name__ == "__main__":
    main()
