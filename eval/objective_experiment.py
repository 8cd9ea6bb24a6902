"""The objectives, tied to decoding: same initialisation, same steps; how fast does the speculative decoder go?

    python eval/objective_experiment.py --toyset agreement,latin_square_3,shuffle_4 --steps 600 \\
        --json runs/objective_experiment.json

The speculative decoder samples the model's own one-token-per-step law in a verification order
exactly; how many tokens it accepts per step depends on how close the model's parallel
marginals (the draft) are to its conditionals in that order (the verifier). This script asks
which training objective brings them closest. For each toy set one freshly initialised tiny
ModernBERT is trained from scratch (all parameters, no DeepSpeed, through the recipe flow) once
per objective with the same data, steps and seed:

- token_ce    the per-token masked CE (MDLM / LLaDA);
- mixture     0.5 token_ce + 0.5 log-sum over orders {l2r, r2l, random, random}, one block per position;
- logsum      the pure log-sum over the same orders, one block per position (any-order AR likelihood);
- logsum_kK   the pure log-sum with K < n blocks per order: the likelihood of a K-step sampler in
              that order (`--blocks K`, default 2).

Each trained model is then decoded at T = 1 by the speculative decoder (l2r verification, one
draft of the rest of the answer) and by the one-token-per-step l2r sampler it is exact for, and
scored by `jointobj.evaluation.order_nll.order_nll` (NLL per order family against the set's entropy).
Prints a table (accepted tokens per sequential step, validity, TV) and writes the JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from jointobj import Denoiser, evaluate
from jointobj.cli.progress import add_no_progress
from jointobj.evaluation.benchmark import write_measurements
from jointobj.evaluation.order_nll import order_nll
from jointobj.evaluation.report import format_table
from jointobj.model.tiny import tiny_masked_lm
from jointobj.toysets.builtin import load_toyset, toy_tokenizer
from jointobj.training.recipe import run_recipe

ORDERS = ["l2r", "r2l", "random", "random"]


def objectives(blocks: int) -> dict[str, list[str]]:
    """Name -> recipe flags of each objective compared (the objective and its keyword arguments)."""
    def logsum(k: int | str) -> dict:
        return {"orders": ORDERS, "blocks": k, "mode": "sampled", "max_rows": 1024}

    kwargs = {
        "token_ce": ("token_ce", {}),
        "mixture": ("mixture", {"token_ce_weight": 0.5, "logsum": logsum("all")}),
        "logsum": ("logsum", logsum("all")),
        f"logsum_k{blocks}": ("logsum", logsum(blocks)),
    }
    return {name: ["--objective", objective, "--objective_kwargs", json.dumps(options)]
            for name, (objective, options) in kwargs.items()}


def fresh_model(directory: Path, max_positions: int, seed: int, hidden_size: int, num_layers: int) -> Path:
    """One initialisation shared by every objective of a toy set."""
    tokenizer = toy_tokenizer()
    model = tiny_masked_lm("modernbert", vocab_size=len(tokenizer), hidden_size=hidden_size, num_layers=num_layers,
                           max_positions=max_positions, seed=seed)
    Denoiser(model, tokenizer=tokenizer).save_pretrained(directory)
    return directory


def train(init: Path, toyset: str, name: str, flags: list[str], args: argparse.Namespace) -> Denoiser:
    common = ["--model_name_or_path", str(init), "--lora_r", "0", "--dataset", toyset, "--samples_per_toyset", "4096",
              "--max_steps", str(args.steps), "--per_device_train_batch_size", "64", "--learning_rate",
              str(args.learning_rate), "--lr_scheduler_type", "linear", "--warmup_steps", str(max(1, args.steps // 20)),
              "--deepspeed", "", "--output_dir", str(Path(args.out) / toyset / name), "--save_strategy", "no",
              "--report_samples", "0", "--logging_steps", str(max(1, args.steps // 4)), "--disable_tqdm", "true",
              "--seed", str(args.seed), "--report_to", "none", "--overwrite_output_dir", "true"]
    return run_recipe(common + flags).denoiser.eval()


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--toyset", default="agreement,latin_square_3,shuffle_4")
    parser.add_argument("--objectives", default=None, help="comma-separated subset (default: all four)")
    parser.add_argument("--blocks", type=int, default=2, help="K of the K-block log-sum (K < answer length)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--drafts", default="1", help="comma-separated draft counts of the speculative decoder")
    parser.add_argument("--samples", type=int, default=1000, help="examples scored and samples drawn per cell")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/objective_experiment")
    parser.add_argument("--json", default="runs/objective_experiment.json")
    add_no_progress(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    compared = objectives(args.blocks)
    chosen = list(compared) if args.objectives is None else [n.strip() for n in args.objectives.split(",")]
    unknown = [n for n in chosen if n not in compared]
    if unknown:
        raise ValueError(f"unknown objective(s) {', '.join(unknown)}; compared here: {', '.join(compared)}")
    grid = {"speculative": {"tokens_per_step": [None], "drafts": [int(d) for d in args.drafts.split(",")]}}
    fixed = {"speculative": {"order": "l2r", "temperature": 1.0}, "l2r": {"temperature": 1.0}}

    nll_rows, decode_rows = [], []
    for name in args.toyset.split(","):
        toyset = load_toyset(name)
        if args.blocks >= toyset.answer_length:
            raise ValueError(f"--blocks {args.blocks} is not fewer than {name}'s {toyset.answer_length} answer tokens")
        init = fresh_model(Path(args.out) / name / "init", max(8, toyset.length), args.seed, args.hidden_size,
                           args.num_layers)
        for objective in chosen:
            denoiser = train(init, name, objective, compared[objective], args)
            for row in order_nll(denoiser, toyset, args.samples, seed=args.seed):
                nll_rows.append({"toyset": name, "objective": objective, **row})
            for row in evaluate(denoiser, [toyset], ["l2r"], [1], args.samples, seed=args.seed,
                                decoder_options=fixed, grid=grid):
                decode_rows.append({"objective": objective, **row})
            write_measurements(args.json, nll_rows + decode_rows, config=vars(args))  # a killed run keeps what it has

    print(format_table(nll_rows, ["toyset", "objective", "order", "nll_nats", "se", "entropy_nats", "gap_nats"]))
    print()
    print(format_table(decode_rows, ["toyset", "objective", "decoder", "knobs", "tokens_per_step", "validity",
                                     "validity_low", "validity_high", "tv", "tv_floor", "rows_per_token"]))
    write_measurements(args.json, nll_rows + decode_rows, config=vars(args))
    print(f"wrote {args.json}")
    return nll_rows + decode_rows


if __name__ == "__main__":
    main()
