"""`jointobj report`: (re)write the report of a finished recipe run: base, fine-tuned and oracle side by side.

    jointobj report runs/logsum                                   # as the recipe would have written it
    jointobj report runs/mine --samples 200 --decoders l2r --tokens-per-step 1,all

The run directory's recipe.json (written once the model is saved) names the base model, the toy
sets, the report options and the seed, so this works for the embedded default, for
--model_name_or_path runs and for runs on your own sets (`mysets:dates`: run it where the recipe
found mysets.py). It writes report.json and report.png into the run directory and marks the run
finished (a run whose report failed is not). The sets are combined on one vocabulary as in training.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jointobj.cli.progress import add_no_progress
from jointobj.training.recipe import write_report
from jointobj.training.run_dir import failed_step, finished_step, read_run_record
from jointobj.utils.errors import UserError
from jointobj.utils.registry import split_names

DEFAULT_SAMPLES = 400  # the recipe's --report_samples default


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="jointobj report", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the --output_dir of a recipe run")
    parser.add_argument("--samples", type=int, default=None, help="samples per cell (default: the run's, else 400)")
    parser.add_argument("--decoders", type=split_names, default=None, help="comma-separated (default: the run's)")
    parser.add_argument("--tokens-per-step", type=split_names, default=None, help="comma-separated K or 'all'")
    parser.add_argument("--toyset", type=split_names, default=None,
                        help="toy sets to report on (default: the run's; needed when it trained on a local file)")
    add_no_progress(parser)
    args = parser.parse_args(argv)
    if args.samples is not None and args.samples < 1:
        raise UserError(f"--samples must be >= 1, got {args.samples}")
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    run = Path(args.run_dir)
    if not run.is_dir():
        raise UserError(f"run directory {run} does not exist; pass the --output_dir of a recipe run")
    record = read_run_record(run)
    failed, finished = failed_step(run), finished_step(run)
    step = finished if finished is not None else failed["global_step"] if failed else None
    if step is None:
        raise UserError(f"the run in {run} has not finished training; resume it with --resume_from_checkpoint latest")
    if args.toyset is None and Path(record["dataset"]).exists():
        raise UserError(f"the run in {run} trained on {record['dataset']}, not on toy sets; name the toy sets to "
                        "report on with --toyset NAMES")
    record = {**record, "toysets": args.toyset or record["toysets"],
              "report_decoders": args.decoders or record["report_decoders"],
              "report_tokens_per_step": args.tokens_per_step or record["report_tokens_per_step"]}
    samples = args.samples or record["report_samples"] or DEFAULT_SAMPLES
    return write_report(run, record, step, samples=samples)
