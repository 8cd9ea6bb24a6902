"""The frontier on every built-in set, for the exact oracle and a trained tiny model.

    python eval/frontier_all.py --out runs/frontier_all --json runs/frontier_all.json \\
        --plot eval/figures/frontier_all.png

The sets: likes_tennis, cities, agreement, shuffle_3, copy, reverse, latin_square_3,
latin_square_4, shuffle_8 and sudoku_4 (`SETS`). The trained models are the embedded base
recipe's (`jointobj.training.embedded.pretrain_base`: a tiny ModernBERT, all parameters, the per-token
loss), one per group of sets (`GROUPS`: its sets, steps and size), each written to `--out/GROUP`
and reused when that directory already holds a model pretrained on the group's sets (whatever
its steps and size: delete the folder to retrain it). Each set is then
decoded by the oracle and by its group's model under the plain decoders (l2r and confidence at
K = 1, 2, all), the speculative decoder (l2r verification of the whole rest, 1 and 4 drafts) and
the confidence threshold (`GRID`), all at T = 1 on the same prompts.

Prints every row, a headline table per set (the trained model's l2r K=1 validity, its and the
oracle's speculative tokens per step and validity) and the target status of the sets with 8 or
more answer tokens (`jointobj.evaluation.frontier.target_status`); writes the rows as JSON and draws the
frontier (`jointobj.evaluation.report.plot_frontier`) of every set on one picture.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from jointobj.cli.progress import add_no_progress
from jointobj.evaluation.benchmark import write_measurements
from jointobj.evaluation.frontier import TARGET, TARGET_COLUMNS, setting_label, sweep_points, target_status
from jointobj.evaluation.report import format_table, plot_frontier
from jointobj.training.embedded import BASE_SIZE, pretrain_base
from jointobj.utils.registry import split_names

# Group name -> (its sets, per-token pretraining steps, tiny size of its model: jointobj.model.tiny.TINY_SIZES).
GROUPS: dict[str, tuple[list[str], int, str]] = {
    "phrases": (["likes_tennis", "cities", "agreement"], 900, BASE_SIZE),
    "shuffle_3": (["shuffle_3"], 900, BASE_SIZE),
    "copying": (["copy", "reverse"], 600, BASE_SIZE),
    "latin_square_3": (["latin_square_3"], 900, BASE_SIZE),
    "latin_square_4": (["latin_square_4"], 1000, "medium"),  # the base size learns only its marginals
    "shuffle_8": (["shuffle_8"], 1000, "medium"),
    "sudoku_4": (["sudoku_4"], 1200, BASE_SIZE),
}
SETS = [name for sets, _, _ in GROUPS.values() for name in sets]
PLAIN = (["l2r", "confidence"], [1, 2, "all"])
GRID: dict[str, dict[str, list[Any]]] = {
    "speculative": {"tokens_per_step": [None], "drafts": [1, 4]},
    "threshold": {"tokens_per_step": [1], "threshold": [0.5, 0.9]},
}
TEMPERATURE = {"l2r": {"temperature": 1.0}, "confidence": {"temperature": 1.0},
               "speculative": {"order": "l2r", "temperature": 1.0}, "threshold": {"temperature": 1.0}}
ROW_COLUMNS = ["model", "toyset", "decoder", "setting", "tokens_per_step", "validity", "validity_low",
               "validity_high", "coverage", "coverage_exact", "tv", "tv_floor", "rows_per_token"]
HEAD_COLUMNS = ["toyset", "answer_tokens", "trained l2r K=1", "trained spec tok/step", "trained spec valid",
                "oracle spec tok/step", "oracle spec valid"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--sets", type=split_names, default=SETS, help=f"a subset of {','.join(SETS)}")
    parser.add_argument("--samples", type=int, default=400, help="prompts per (model, set, decoder setting)")
    parser.add_argument("--steps", type=int, default=None,
                        help="pretraining steps of every group's model (default: each group's own, GROUPS)")
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--train-samples", type=int, default=2000, help="training examples per set")
    parser.add_argument("--drafts", type=lambda s: [int(t) for t in split_names(s)],
                        default=GRID["speculative"]["drafts"],
                        help="draft counts of the speculative decoder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/frontier_all", help="the trained models, one folder per group")
    parser.add_argument("--json", default="runs/frontier_all.json", metavar="FILE")
    parser.add_argument("--plot", default="runs/frontier_all.png", metavar="PNG")
    add_no_progress(parser)
    args = parser.parse_args(argv)
    unknown = [name for name in args.sets if name not in SETS]
    if unknown:
        parser.error(f"unknown set(s) {', '.join(unknown)}; this benchmark covers {', '.join(SETS)}")
    if args.samples < 1 or (args.steps is not None and args.steps < 1):
        parser.error("--samples and --steps must be >= 1")
    return args


def trained_model(group: str, sets: list[str], steps: int, size: str, args: argparse.Namespace):
    """The group's tiny model from `--out/GROUP`, pretrained there first if it is not (or not for these sets)."""
    from jointobj.model.denoiser import Denoiser

    directory = Path(args.out) / group
    pretrain_base(directory, ",".join(sets), steps, args.learning_rate, args.train_samples, args.seed, size)
    return Denoiser.from_pretrained(str(directory)).eval()


def headline_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per set: the trained model's l2r K=1 validity and, for model and oracle, the one-draft speculative row."""
    def pick(model: str, toyset: str, decoder: str, label: str) -> dict[str, Any]:
        found = [r for r in rows if (r["model"], r["toyset"], r["decoder"], setting_label(r)) ==
                 (model, toyset, decoder, label)]
        return found[0] if found else {}

    out = []
    for toyset in dict.fromkeys(r["toyset"] for r in rows):
        trained_spec, oracle_spec = (pick(m, toyset, "speculative", "drafts=1") for m in ("trained", "oracle"))
        reference = pick("trained", toyset, "l2r", "K=1")
        out.append({"toyset": toyset, "answer_tokens": (reference or oracle_spec).get("gen_length"),
                    "trained l2r K=1": reference.get("validity"),
                    "trained spec tok/step": trained_spec.get("tokens_per_step"),
                    "trained spec valid": trained_spec.get("validity"),
                    "oracle spec tok/step": oracle_spec.get("tokens_per_step"),
                    "oracle spec valid": oracle_spec.get("validity")})
    return out


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    import torch

    from jointobj.evaluation.sweep import evaluate
    from jointobj.toysets.oracle import OracleDenoiser

    args = parse_args(argv)
    torch.set_num_threads(1)
    grid = {**GRID, "speculative": {**GRID["speculative"], "drafts": args.drafts}}
    points = sweep_points(*PLAIN, decoder_options=TEMPERATURE, grid=grid)
    rows: list[dict[str, Any]] = []
    for group, (members, group_steps, size) in GROUPS.items():
        sets = [name for name in members if name in args.sets]
        if not sets:
            continue
        models = {"trained": trained_model(group, members, args.steps or group_steps, size, args),
                  "oracle": OracleDenoiser(*sets)}
        for label, denoiser in models.items():
            for row in evaluate(denoiser, sets, points=points, samples=args.samples, seed=args.seed):
                rows.append({"model": label, "group": group, "setting": setting_label(row), **row})
            write_measurements(args.json, rows, config=vars(args))  # a killed run keeps what it has
    print(format_table(rows, ROW_COLUMNS))
    print("\nper set: the trained model's own one-token-per-step validity; speculative (l2r, 1 draft) for both")
    print(format_table(headline_rows(rows), HEAD_COLUMNS))
    status = target_status([r for r in rows if r["model"] == "trained"])
    if status:
        print(f"\n{TARGET.describe()}; trained models")
        print(format_table(status, TARGET_COLUMNS))
    write_measurements(args.json, rows, config=vars(args), target=status)
    plot_frontier(rows, args.plot)
    print(f"\nwrote {args.json} and {args.plot}")
    return rows


if __name__ == "__main__":
    main()
