r"""The smallest tiny model that learns each toy set's joint: one-token-per-step validity >= 0.99.

    python eval/model_sizes.py --toyset likes_tennis,cities,agreement,shuffle_3 \
        --sizes xsmall,small,medium --steps 1200 --samples 400 --json out/model_sizes.json

For each set, sizes are tried from the smallest (`jointobj.model.tiny.TINY_SIZES`): a ModernBERT of
that size is trained on the set alone with the per-token loss, as the recipes' embedded base is
(batch 128, learning rate 3e-3, linear schedule), then decoded with `--decoder` at one token per
step; the first size whose validity reaches `--level` is the set's smallest, and larger sizes are
not run. One token per step is the setting where the decoder adds no marginal trap of its own:
what fails there is the model. Prints a table (validity with its 95% Wilson interval, coverage
beside exact sampling's at the same count, so a model that found only a few answers shows it;
'-' on conditional sets) and writes the JSON. Sets may be names or import references (module:attribute).
"""

from __future__ import annotations

import argparse
import sys
import tempfile

import torch

from jointobj.cli.progress import add_no_progress
from jointobj.evaluation.report import format_table, write_json
from jointobj.utils.registry import split_names

COLUMNS = ["toyset", "size", "hidden_size", "num_layers", "parameters", "steps", "validity", "validity_low",
           "validity_high", "coverage", "coverage_exact", "learned", "train_s"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from jointobj.model.tiny import TINY_SIZES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--toyset", required=True, type=split_names, help="comma-separated names or module:attribute")
    parser.add_argument("--sizes", type=split_names, default=list(TINY_SIZES), help=f"from: {', '.join(TINY_SIZES)}")
    parser.add_argument("--steps", type=int, default=1200, help="training steps per (set, size)")
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--samples", type=int, default=400, help="decoded samples per validity")
    parser.add_argument("--decoder", default="confidence")
    parser.add_argument("--level", type=float, default=0.99)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", required=True, metavar="FILE")
    add_no_progress(parser)
    return parser.parse_args(argv)


def train_and_measure(toyset, size: str, args: argparse.Namespace) -> dict:
    """Train a `size` model on `toyset` with the per-token loss; its one-token-per-step validity row."""
    import time

    from jointobj.evaluation.sweep import evaluate
    from jointobj.model.denoiser import Denoiser
    from jointobj.model.tiny import TINY_SIZES, tiny_masked_lm
    from jointobj.training.trainer import JointObjConfig, JointObjTrainer

    tokenizer = toyset.tokenizer
    model = tiny_masked_lm("modernbert", vocab_size=len(tokenizer), size=size, max_positions=max(32, toyset.length),
                           seed=args.seed)
    denoiser = Denoiser(model, tokenizer=tokenizer)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        config = JointObjConfig(
            output_dir=scratch, objective="token_ce", max_steps=args.steps, learning_rate=args.learning_rate,
            per_device_train_batch_size=args.batch_size, lr_scheduler_type="linear",
            warmup_steps=max(1, args.steps // 20), save_strategy="no", logging_steps=max(1, args.steps // 4),
            report_to="none", seed=args.seed, disable_tqdm=True,
        )
        data = toyset.dataset(max(args.batch_size * 8, 2000), seed=args.seed)
        JointObjTrainer(denoiser, config, train_dataset=data, processing_class=tokenizer).train()
    train_s = time.perf_counter() - start
    denoiser.eval()
    with torch.no_grad():
        row = evaluate(denoiser, [toyset], [args.decoder], [1], args.samples, seed=args.seed)[0]
    hidden, layers = TINY_SIZES[size]
    return {**row, "size": size, "hidden_size": hidden, "num_layers": layers, "steps": args.steps,
            "parameters": sum(p.numel() for p in model.parameters()), "learned": row["validity"] >= args.level,
            "train_s": train_s}


def main(argv: list[str] | None = None) -> list[dict]:
    from jointobj.model.tiny import TINY_SIZES
    from jointobj.toysets.builtin import load_toyset

    args = parse_args(argv)
    toysets = [load_toyset(name) for name in args.toyset]  # bad names fail before any training
    unknown = [s for s in args.sizes if s not in TINY_SIZES]
    if unknown:
        raise ValueError(f"unknown sizes {unknown}; known: {', '.join(TINY_SIZES)}")
    sizes = sorted(args.sizes, key=list(TINY_SIZES).index)
    rows = []
    for toyset in toysets:
        for size in sizes:
            rows.append(train_and_measure(toyset, size, args))
            print(format_table(rows[-1:], COLUMNS), flush=True)
            write_json(args.json, rows)
            if rows[-1]["learned"]:
                break
    print("\n" + format_table(rows, COLUMNS))
    smallest = {r["toyset"]: r["size"] for r in rows if r["learned"]}
    print("\nsmallest size reaching validity >= {:.2f} at one token per step:".format(args.level))
    for toyset in toysets:
        print(f"  {toyset.name}: {smallest.get(toyset.name, 'none of ' + ','.join(sizes))}")
    write_json(args.json, rows)
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
